"""Human-readable output of the ``ferry`` command (rich tables and key/value views).

Kept apart from ``main`` so ``--json`` runs never import rich: scripts that call ``ferry``
in a loop pay only for what they use.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.filesize import decimal
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..model.types import NotifyFlags
from .context import retry_text

_STATE_STYLE = {
    "TRANSFERRED": "green",
    "ACKNOWLEDGED": "green",
    "ERROR": "bold red",
    "TRANSIENT_ERROR": "yellow",
    "CANCELLED": "dim",
    "SUSPENDED": "cyan",
    "TRANSFERRING": "bold blue",
    "CONNECTING": "blue",
    "QUEUED": "blue",
}


def console(stderr: bool = False) -> Console:
    """Wide when not on a terminal: output piped to a file or grep should not be cut at 80
    columns in the middle of a URL."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else int(os.environ.get("COLUMNS") or 200)
    return Console(file=stream, width=width, highlight=False, soft_wrap=False)


def size(n: Any) -> str:
    return decimal(int(n)) if isinstance(n, int) else "?"


def state_text(state: str) -> Text:
    return Text(state, style=_STATE_STYLE.get(state, ""))


def progress_text(p: dict[str, Any]) -> str:
    done, total = p.get("bytes_transferred", 0), p.get("bytes_total")
    text = f"{size(done)} of {size(total) if total is not None else 'unknown size'}"
    if isinstance(total, int) and total > 0:
        text += f" ({100 * done / total:.0f}%)"
    return text


def owner_text(owner: Any) -> str:
    if not isinstance(owner, dict):
        return "?"
    name = owner.get("name")
    who = f"{name} " if name else ""
    return f"{who}(uid {owner.get('uid')}, {owner.get('sid')})"


def notify_flags_text(value: Any) -> str:
    if not isinstance(value, int):
        return "?"
    names = [f.name for f in NotifyFlags if f & value and f.name]
    return f"0x{value:X}" + (f" ({' | '.join(names)})" if names else "")


def _ranges_text(ranges: Sequence[dict[str, Any]]) -> str:
    return ",".join(f"{r['offset']}:{r['length']}" for r in ranges)


def print_files(files: Sequence[dict[str, Any]]) -> None:
    out = console()
    if not files:
        out.print("The job has no files.")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("#", justify="right")
    table.add_column("REMOTE", overflow="fold")
    table.add_column("LOCAL", overflow="fold")
    table.add_column("BYTES", justify="right", no_wrap=True)
    table.add_column("DONE")
    for i, f in enumerate(files):
        total = f.get("bytes_total")
        table.add_row(
            str(i),
            escape(str(f.get("remote_name", "")))
            + (
                f" [dim](ranges {_ranges_text(f['ranges'])})[/dim]"
                if f.get("ranges")
                else ""
            ),
            escape(str(f.get("local_name", ""))),
            f"{size(f.get('bytes_transferred', 0))}/{size(total) if total is not None else '?'}",
            "yes" if f.get("completed") else "no",
        )
    out.print(table)


def print_job(j: dict[str, Any]) -> None:
    """The ``bitsadmin /info /verbose`` of ferry: everything a user needs to decide what
    to do next (state, progress, the error and where it happened, who owns the job)."""
    rows: list[tuple[str, Text]] = []

    def row(key: str, value: Any) -> None:
        rows.append((key, value if isinstance(value, Text) else Text(str(value))))

    p = j.get("progress") or {}
    t = j.get("times") or {}
    row("ID", j.get("id", ""))
    row("Display name", j.get("display_name", ""))
    if j.get("description"):
        row("Description", j["description"])
    row("Type", j.get("type", ""))
    row("State", state_text(str(j.get("state", ""))))
    row("Priority", j.get("priority", ""))
    row("Owner", owner_text(j.get("owner")))
    row("Progress", progress_text(p))
    row("Files", f"{p.get('files_transferred', 0)} of {p.get('files_total', 0)} transferred")
    row("Created", t.get("created") or "-")
    row("Modified", t.get("modified") or "-")
    row("Transfer completed", t.get("transfer_completed") or "-")
    err = j.get("error")
    if isinstance(err, dict):
        row("Error", Text(f"{err.get('code')} ({err.get('hresult')})", style="bold red"))
        row("Error context", err.get("context", ""))
        row("Error description", err.get("description", ""))
        f = err.get("file")
        if isinstance(f, dict):
            row("Error file", f"{f.get('remote_name')} -> {f.get('local_name')}")
    row("Error count", j.get("error_count", 0))
    retry = retry_text(j)
    if retry:
        row("Retry", retry.replace("next try", "next retry", 1))
    row("Min retry delay", f"{j.get('min_retry_delay')} s")
    row("No-progress timeout", f"{j.get('no_progress_timeout')} s")
    row("Notify flags", notify_flags_text(j.get("notify_flags")))
    if j.get("dynamic_content"):
        row("Dynamic content", "yes (no size needed; never resumed)")
    cmd = j.get("notify_cmdline")
    if cmd:
        import shlex

        row("Notify command line", shlex.join(str(a) for a in cmd))
    helper = j.get("helper_token")
    if isinstance(helper, dict):
        flags = ", ".join(helper.get("flags") or []) or "none"
        row("Helper token", f"{helper.get('sid') or '(none set)'}; flags: {flags}")
    for cred in j.get("credentials") or []:
        who = "implicit (Kerberos ticket of the network identity)" if cred.get("implicit") else (
            f"user {cred.get('user')}"
        )
        row("Credentials", f"{cred.get('target')} {cred.get('scheme')}: {who}")
    for warning in j.get("credential_warnings") or []:
        row("Warning", Text(warning, style="bold yellow"))
    from .network import info_rows

    for net_key, net_text in info_rows(j):
        row(net_key, net_text)
    reply = j.get("reply")
    if isinstance(reply, dict):
        total = reply.get("bytes_total")
        got = reply.get("bytes_transferred", 0)
        row("Reply file", reply.get("file") or "-")
        row("Reply", f"{size(got)} of {size(total) if total is not None else '?'}")
    # SPEC §10: bandwidth and network conditions, and why a queued job waits.
    waiting = j.get("waiting")
    if isinstance(waiting, dict):
        why = f"{waiting.get('description')} [{waiting.get('code')}]"
        if waiting.get("until"):
            why += f"; next try {waiting.get('until')}"
        row("Waiting", Text(why, style="yellow"))
    if "cost_flags" in j:
        row("Cost flags", str(j.get("cost_flags")))
    if j.get("max_rate"):
        row("Max rate", f"{j.get('max_rate')} B/s")
    if "max_download_time" in j:
        limit = j.get("max_download_time") or 0
        used = j.get("download_time") or 0
        row("Max download time", f"{limit} s ({used:.0f} s used)" if limit else "none")
    # Plain aligned lines rather than a rich grid: no trailing padding when piped to a file.
    out = console()
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        out.print(Text.assemble((key.ljust(width), "bold"), "  ", value))
