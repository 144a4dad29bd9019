"""``ferry top``: a live table of jobs — state, progress, transfer rate, time left — redrawn
in place (rich Live) until Ctrl-C, the way people watch transfers.

Rates are measured here, from the change of each job's ``bytes_transferred`` between two
polls of ``GET /v1/jobs`` (one request per refresh, whatever the number of jobs), smoothed
over the last few samples so a checkpoint every second does not make the figure jump. rich
is imported only when the command runs (``ferry`` starts without it).
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from ..client import Client
from .context import current

if TYPE_CHECKING:
    from rich.console import RenderableType

WINDOW = 5.0  # seconds of samples a rate is measured over
_ORDER = {
    "TRANSFERRING": 0,
    "CONNECTING": 1,
    "TRANSIENT_ERROR": 2,
    "QUEUED": 3,
    "ERROR": 4,
    "SUSPENDED": 5,
    "TRANSFERRED": 6,
    "ACKNOWLEDGED": 7,
    "CANCELLED": 8,
}
_PRIORITY = {"foreground": 0, "high": 1, "normal": 2, "low": 3}


class Rates:
    """Bytes per second of each job, from (time, bytes_transferred) samples."""

    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self._samples: dict[str, deque[tuple[float, int]]] = {}

    def add(self, now: float, jobs: Sequence[dict[str, Any]]) -> None:
        seen = set()
        for j in jobs:
            seen.add(j["id"])
            done = int((j.get("progress") or {}).get("bytes_transferred") or 0)
            q = self._samples.setdefault(j["id"], deque())
            if q and done < q[-1][1]:
                q.clear()  # the file started over: the old samples mean nothing now
            q.append((now, done))
            while len(q) > 2 and now - q[0][0] > self.window:
                q.popleft()
        for gone in set(self._samples) - seen:
            del self._samples[gone]

    def rate(self, job_id: str) -> float | None:
        q = self._samples.get(job_id)
        if not q or len(q) < 2 or q[-1][0] <= q[0][0]:
            return None
        return (q[-1][1] - q[0][1]) / (q[-1][0] - q[0][0])


def _sorted(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(
        jobs,
        key=lambda j: (
            _ORDER.get(j.get("state", ""), 9),
            _PRIORITY.get(j.get("priority", ""), 9),
            j.get("display_name", ""),
        ),
    )


def _eta(left: int | None, rate: float | None) -> str:
    if left is None or not rate or rate <= 0:
        return ""
    secs = int(left / rate)
    if secs >= 86400:
        return f"{secs // 86400}d{secs % 86400 // 3600:02d}h"
    if secs >= 3600:
        return f"{secs // 3600}h{secs % 3600 // 60:02d}m"
    return f"{secs // 60}:{secs % 60:02d}"


def snapshot(jobs: list[dict[str, Any]], rates: Rates) -> list[dict[str, Any]]:
    """The rows of the table (also ``ferry --json top``'s document)."""
    rows = []
    for j in _sorted(jobs):
        p = j.get("progress") or {}
        done = int(p.get("bytes_transferred") or 0)
        total = p.get("bytes_total")
        rate = rates.rate(j["id"]) if j.get("state") in ("TRANSFERRING", "CONNECTING") else None
        rows.append(
            {
                "id": j["id"],
                "display_name": j.get("display_name", ""),
                "state": j.get("state", ""),
                "priority": j.get("priority", ""),
                "bytes_transferred": done,
                "bytes_total": total,
                "files_transferred": p.get("files_transferred", 0),
                "files_total": p.get("files_total", 0),
                "rate": None if rate is None else round(max(rate, 0.0), 1),
                "error": (j.get("error") or {}).get("code"),
                "retry_at": j.get("retry_at"),
            }
        )
    return rows


def render(rows: list[dict[str, Any]], title: str) -> RenderableType:
    from rich.filesize import decimal
    from rich.markup import escape
    from rich.table import Table

    from .render import state_text

    total_rate = sum(r["rate"] or 0 for r in rows)
    active = sum(1 for r in rows if r["state"] in ("TRANSFERRING", "CONNECTING", "QUEUED"))
    table = Table(
        title=f"{title} — {len(rows)} jobs, {active} active, {decimal(int(total_rate))}/s",
        title_justify="left",
        caption="Ctrl-C to quit",
        caption_justify="left",
        header_style="bold",
        box=None,
        pad_edge=False,
    )
    table.add_column("ID", no_wrap=True)
    table.add_column("NAME", overflow="ellipsis", max_width=32)
    table.add_column("STATE", no_wrap=True)
    table.add_column("PRIO", no_wrap=True)
    table.add_column("PROGRESS", justify="right", no_wrap=True)
    table.add_column("BYTES", justify="right", no_wrap=True)
    table.add_column("RATE", justify="right", no_wrap=True)
    table.add_column("ETA", justify="right", no_wrap=True)
    table.add_column("FILES", justify="right", no_wrap=True)
    table.add_column("NOTE", overflow="ellipsis")
    for r in rows:
        done, total = r["bytes_transferred"], r["bytes_total"]
        pct = f"{100 * done / total:5.1f}%" if total else ("100.0%" if total == 0 else "")
        left = None if total is None else max(total - done, 0)
        rate = r["rate"]
        note = r["error"] or ""
        if r["state"] == "TRANSIENT_ERROR" and r["retry_at"]:
            note = f"{note} retry {r['retry_at'][11:19]}Z"
        table.add_row(
            r["id"][:8],
            escape(r["display_name"]),
            state_text(r["state"]),
            r["priority"],
            pct,
            f"{decimal(done)}/{decimal(total) if total is not None else '?'}",
            f"{decimal(int(rate))}/s" if rate is not None else "",
            _eta(left, rate),
            f"{r['files_transferred']}/{r['files_total']}",
            escape(note),
        )
    return table


@click.command()
@click.option("--all-users", is_flag=True, help="Every user's jobs (administrators).")
@click.option(
    "--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
    metavar="SEC", help="Seconds between refreshes.",
)  # fmt: skip
@click.option(
    "--iterations", "-n", type=click.IntRange(min=1), default=None, metavar="N",
    help="Stop after N refreshes (default: until Ctrl-C).",
)  # fmt: skip
def top(all_users: bool, interval: float, iterations: int | None) -> None:
    """A live table of jobs with their states, progress, rates and time left, redrawn in
    place until Ctrl-C.  [bitsadmin /monitor]

    With --json, prints one document after two samples (so rates are known): {"jobs":
    [rows]}, each row with its rate in bytes per second (null when not transferring)."""
    c = current()
    client = c.client()
    rates = Rates(max(WINDOW, 2.5 * interval))
    if c.json:
        for k in range(2):
            rates.add(time.monotonic(), _jobs(client, all_users))
            if k == 0:
                time.sleep(interval)
        jobs = _jobs(client, all_users)
        click.echo(json.dumps({"jobs": snapshot(jobs, rates)}, indent=2))
        return
    from rich.live import Live

    from .render import console

    title = f"ferry top — {c.choice.path}"
    out = console()
    count = 0
    try:
        with Live(console=out, auto_refresh=False, screen=False, transient=False) as live:
            while True:
                jobs = _jobs(client, all_users)
                rates.add(time.monotonic(), jobs)
                live.update(render(snapshot(jobs, rates), title), refresh=True)
                count += 1
                if iterations is not None and count >= iterations:
                    break
                time.sleep(interval)
    except KeyboardInterrupt:
        pass
    sys.stdout.flush()


def _jobs(client: Client, all_users: bool) -> list[dict[str, Any]]:
    return [j.data for j in client.jobs(all_users=all_users)]
