"""``ferry transfer``'s live progress bar, drawn without rich (issue #15): rich's import
(~70 ms on a quiet machine) and its refresh thread redrawing four times a second cost a
512 MiB transfer more than a third of curl's whole time on a busy machine. The bar is
redrawn only when an event arrives (ferryd sends progress at most every
``min_notification_interval_ms``, 500 ms by default), so the CLI wakes once per event and
never otherwise.

The look is rich's ``Progress`` with the columns ``ferry transfer`` used (docs: README,
"Using the command line")::

    big.iso ━━━━━━━━━━━━━━━━━━━━╺━━━━━━━━━━━━━━━━━━━ 268.4/536.9 MB 91.2 MB/s 0:00:03 0/1 files

the display name in bold; the bar 40 cells of ``━`` (``╸`` / ``╺`` for half cells), the done
part pink, all of it green once complete, the rest dark grey; bytes done and total in
powers of 1000 (green); the speed over the last 30 s (red); the time left (cyan); the files
done; a note (a transient error's code, which try comes next and when, in yellow; "queued" or
"connecting", dim). An unknown size shows a dark grey bar and no time left. Colours only on
a terminal and never with ``NO_COLOR`` set or ``TERM=dumb``; the line is cut to the
terminal's width; the cursor is hidden while the bar is live.
"""

from __future__ import annotations

import os
import time
from collections import deque

from .table import decimal

TYPE_CHECKING = False  # not typing's: see ferry/__init__.py
if TYPE_CHECKING:
    from typing import TextIO

BAR_WIDTH = 40
# At most this often a redraw for progress alone (a job of 1,000 small files sends 1,000
# file-transferred events in a second or two); a new note is drawn at once, and so is the
# last state when the bar closes.
MIN_REDRAW = 0.1
SPEED_PERIOD = 30.0  # seconds of samples the speed is measured over (rich's default)

BOLD, PINK, GREEN_BAR, GREY, GREEN, RED, CYAN, YELLOW, DIM = (
    "1", "38;5;197", "38;5;106", "38;5;237", "32", "31", "36", "33", "2",
)  # fmt: skip


def download_text(completed: int, total: int | None) -> str:
    """rich's DownloadColumn: "12.3/512.0 MB" — one unit, picked from the total."""
    base = total if total is not None else completed
    suffixes = ("bytes", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")
    unit, suffix = 1, suffixes[0]
    for i, s in enumerate(suffixes):
        unit, suffix = 1000**i, s
        if base < unit * 1000:
            break
    precision = 0 if unit == 1 else 1
    done = f"{completed / unit:,.{precision}f}"
    whole = f"{total / unit:,.{precision}f}" if total is not None else "?"
    return f"{done}/{whole} {suffix}"


def remaining_text(seconds: float | None) -> str:
    """rich's TimeRemainingColumn: H:MM:SS, or -:--:-- when unknown."""
    if seconds is None:
        return "-:--:--"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}"


def bar_cells(completed: int, total: int | None, width: int) -> list[tuple[str, str]]:
    """The bar as (text, SGR) pieces, as rich's ProgressBar draws it."""
    if total is None:
        return [("━" * width, GREY)]
    done = min(total, max(0, completed))
    halves = int(width * 2 * done / total) if total else width * 2
    full, half = divmod(halves, 2)
    style = GREEN_BAR if done >= total else PINK
    out: list[tuple[str, str]] = []
    if full:
        out.append(("━" * full, style))
    if half:
        out.append(("╸", style))
    rest = width - full - half
    if rest and not half and full:
        out.append(("╺", GREY))
        rest -= 1
    if rest:
        out.append(("━" * rest, GREY))
    return out


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


class Bar:
    """One live progress line on ``stream`` (a terminal)."""

    def __init__(self, stream: TextIO, description: str) -> None:
        self.stream = stream
        self.description = _printable(description)
        self.color = not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
        self._samples: deque[tuple[float, int]] = deque()
        self._live = False
        self._drawn_at = -MIN_REDRAW
        self._stale = False
        self.completed = 0
        self.total: int | None = None
        self.files = ""
        self.note = ("", "")

    def _width(self) -> int:
        try:
            cols = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            cols = 0
        return cols or int(os.environ.get("COLUMNS") or 80)

    def speed(self) -> float | None:
        s = self._samples
        if len(s) < 2 or s[-1][0] == s[0][0]:
            return None
        return (s[-1][1] - s[0][1]) / (s[-1][0] - s[0][0])

    def update(
        self, completed: int, total: int | None, files: str, note: str = "", note_sgr: str = ""
    ) -> None:
        now = time.monotonic()
        if completed < self.completed:  # started over (a file refetched): a fresh estimate
            self._samples.clear()
        new_note = (_printable(note), note_sgr)
        urgent = new_note != self.note or not self._live
        self.completed, self.total, self.files, self.note = completed, total, files, new_note
        self._samples.append((now, completed))
        while len(self._samples) > 2 and now - self._samples[0][0] > SPEED_PERIOD:
            self._samples.popleft()
        if urgent or now - self._drawn_at >= MIN_REDRAW:
            self.draw()
        else:
            self._stale = True

    def pieces(self, bar_width: int = BAR_WIDTH) -> list[tuple[str, str]]:
        total = self.total
        speed = self.speed()
        finished = total is not None and self.completed >= total
        if finished:
            left: float | None = 0.0
        elif total is not None and speed:
            left = float(-(-(total - self.completed) // speed))
        else:
            left = None
        out: list[tuple[str, str]] = [(self.description, BOLD), (" ", "")]
        out += bar_cells(self.completed, total, bar_width)
        out += [(" ", ""), (download_text(self.completed, total), GREEN), (" ", "")]
        out.append((f"{decimal(int(speed))}/s" if speed is not None else "?", RED))
        if total is not None:
            out += [(" ", ""), (remaining_text(left), CYAN)]
        out += [(" ", ""), (self.files, "")]
        if self.note[0]:
            out += [(" ", ""), self.note]
        return out

    def line(self, width: int) -> str:
        """The line, cut to ``width - 1`` visible cells (a full last column would wrap on
        some terminals); the bar gives up cells first, down to 10."""
        pieces = self.pieces()
        visible = sum(len(t) for t, _ in pieces)
        if visible >= width:
            pieces = self.pieces(max(10, BAR_WIDTH - (visible - width + 1)))
        room = width - 1
        out = []
        for text, sgr in pieces:
            if room <= 0:
                break
            text = text[:room]
            room -= len(text)
            out.append(f"\x1b[{sgr}m{text}\x1b[0m" if sgr and self.color else text)
        return "".join(out)

    def draw(self) -> None:
        head = "" if self._live else "\x1b[?25l"  # hide the cursor while live
        self._live = True
        self._stale = False
        self._drawn_at = time.monotonic()
        self.stream.write(f"{head}\r{self.line(self._width())}\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        """Leave the last state on screen, end its line, show the cursor again."""
        if self._live:
            if self._stale:
                self.draw()
            self.stream.write("\n\x1b[?25h")
            self.stream.flush()
            self._live = False
