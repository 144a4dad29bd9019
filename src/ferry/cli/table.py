"""``ferry list``'s table without rich: rich costs a ``ferry list`` more than everything
else it imports (tens of ms), and scripts and shells call ``ferry list`` often. The layout
is rich's borderless table (``render.py``): columns two spaces apart, a bold header, the
job's state coloured — styles only on a terminal, and never with ``NO_COLOR`` set."""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing's: ``ferry list`` imports this (see ferry/__init__.py)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

_STATE_SGR = {
    "TRANSFERRED": "32",
    "ACKNOWLEDGED": "32",
    "ERROR": "1;31",
    "TRANSIENT_ERROR": "33",
    "CANCELLED": "2",
    "SUSPENDED": "36",
    "TRANSFERRING": "1;34",
    "CONNECTING": "34",
    "QUEUED": "34",
}


def decimal(n: int) -> str:
    """A size in powers of 1000, as rich.filesize.decimal writes it ("64.0 kB")."""
    if n == 1:
        return "1 byte"
    if n < 1000:
        return f"{n:,} bytes"
    suffixes = ("kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")
    k = 0
    while k < len(suffixes) - 1 and n >= 1000 ** (k + 2):
        k += 1
    return f"{n / 1000 ** (k + 1):,.1f} {suffixes[k]}"


def size(n: Any) -> str:
    return decimal(int(n)) if isinstance(n, int) else "?"


def _styled(stream: Any) -> bool:
    return bool(stream.isatty()) and not os.environ.get("NO_COLOR")


def format_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    right: frozenset[int] = frozenset(),
    styles: Sequence[Sequence[str]] | None = None,
    color: bool = False,
) -> str:
    """Columns two spaces apart; the indexes in ``right`` right-justified; ``styles`` an SGR
    code per cell (used when ``color``)."""
    widths = [len(h) for h in header]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    last = len(header) - 1

    def line(cells: Sequence[str], sgr: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            pad = widths[i] - len(cell)
            text = cell if not (color and sgr[i]) else f"\x1b[{sgr[i]}m{cell}\x1b[0m"
            if i in right:
                text = " " * pad + text
            elif i != last:
                text += " " * pad
            out.append(text)
        return "  ".join(out).rstrip()

    lines = [line(header, ["1"] * len(header))]
    for k, row in enumerate(rows):
        lines.append(line(row, styles[k] if styles else [""] * len(row)))
    return "\n".join(lines)


def print_jobs(jobs: Sequence[dict[str, Any]], show_owner: bool) -> None:
    out = sys.stdout
    if not jobs:
        out.write("No jobs.\n")
        return
    header = ["ID", "NAME", "TYPE", "STATE", "PRIORITY", "FILES", "BYTES"]
    if show_owner:
        header.append("OWNER")
    rows: list[list[str]] = []
    styles: list[list[str]] = []
    for j in jobs:
        p = j.get("progress") or {}
        total = p.get("bytes_total")
        state = str(j.get("state", ""))
        row = [
            str(j.get("id", "")),
            str(j.get("display_name", "")),
            str(j.get("type", "")),
            state,
            str(j.get("priority", "")),
            f"{p.get('files_transferred', 0)}/{p.get('files_total', 0)}",
            f"{size(p.get('bytes_transferred', 0))}/{size(total) if total is not None else '?'}",
        ]
        if show_owner:
            owner = j.get("owner") or {}
            row.append(str(owner.get("name") or owner.get("uid", "")))
        rows.append(row)
        style = [""] * len(row)
        style[3] = _STATE_SGR.get(state, "")
        styles.append(style)
    out.write(format_table(header, rows, frozenset({5, 6}), styles, _styled(out)) + "\n")
