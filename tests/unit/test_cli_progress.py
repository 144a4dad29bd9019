"""``ferry transfer``'s progress bar without rich (cli/progress.py, issue #15) draws what
rich's ``Progress`` drew with the same columns: the bar's cells, the download column, the
time left; and the line fits the terminal."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console
from rich.progress import DownloadColumn, Progress
from rich.progress_bar import ProgressBar

from ferry.cli.progress import BAR_WIDTH, Bar, bar_cells, download_text, remaining_text

SIZES = [(0, 100), (1, 100), (33, 100), (50, 100), (99, 100), (100, 100),
         (268_435_456, 536_870_912), (0, 0), (5, None), (12_345_678, None)]  # fmt: skip


def _rich_bar(completed: int, total: int | None) -> str:
    console = Console(file=io.StringIO(), width=200, color_system="256", force_terminal=True)
    with console.capture() as cap:
        console.print(ProgressBar(total=total, completed=completed, width=BAR_WIDTH,
                                  animation_time=0.0), end="")  # fmt: skip
    return cap.get()


@pytest.mark.parametrize(("completed", "total"), SIZES)
def test_bar_cells_are_richs(completed: int, total: int | None) -> None:
    ours = "".join(t for t, _ in bar_cells(completed, total, BAR_WIDTH))
    assert len(ours) == BAR_WIDTH
    theirs = _rich_bar(completed, total)
    plain = "".join(c for c in theirs if c in "━╸╺")
    if total is not None:  # rich animates an unknown size; we draw it still
        assert ours == plain


@pytest.mark.parametrize(("completed", "total"), [*SIZES, (999, 1000), (1_000_000, 2_500_000_000)])
def test_download_column_is_richs(completed: int, total: int | None) -> None:
    progress = Progress(DownloadColumn(), console=Console(file=io.StringIO()))
    task_id = progress.add_task("x", total=total, completed=completed)
    task = next(t for t in progress.tasks if t.id == task_id)
    assert download_text(completed, total) == DownloadColumn().render(task).plain


def test_remaining_text() -> None:
    assert remaining_text(None) == "-:--:--"
    assert remaining_text(0) == "0:00:00"
    assert remaining_text(3) == "0:00:03"
    assert remaining_text(3725) == "1:02:05"


def test_line_fits_the_terminal_and_colours_only_when_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = io.StringIO()
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    bar = Bar(out, "big.iso\x1b[31m")  # a control character in a name is not sent raw
    bar.update(268_435_456, 536_870_912, "0/1 files", "connecting", "2")
    bar.update(536_870_912, 536_870_912, "1/1 files")
    bar.close()
    text = out.getvalue()
    assert text.startswith("\x1b[?25l\r") and text.endswith("\n\x1b[?25h")
    assert "big.iso?[31m" in text and "\x1b[1mbig.iso" in text
    last = text.split("\r")[-1]
    assert "536.9/536.9 MB" in last and "0:00:00" in last and "1/1 files" in last
    for width in (200, 80, 50, 20):
        line = bar.line(width)
        visible = re.sub(r"\x1b\[[0-9;]*m", "", line)
        assert len(visible) <= width - 1
    monkeypatch.setenv("NO_COLOR", "1")
    plain = Bar(io.StringIO(), "x")
    plain.update(1, 2, "0/1 files")
    assert "\x1b[" not in plain.line(120)
    assert plain.line(120).startswith("x ━━━━━━━━━━━━━━━━━━━━╺━")


def test_a_burst_of_events_is_drawn_a_few_times_and_the_last_state_always() -> None:
    out = io.StringIO()
    bar = Bar(out, "many")
    for i in range(1, 1001):
        bar.update(i * 65536, 1000 * 65536, f"{i}/1000 files")
    draws_before_close = out.getvalue().count("\r")
    bar.close()
    assert draws_before_close < 50  # at most one every MIN_REDRAW, plus the first
    assert out.getvalue().split("\r")[-1].count("1000/1000 files") == 1
    # a new note is never held back
    out2 = io.StringIO()
    bar2 = Bar(out2, "x")
    bar2.update(1, 10, "0/1 files")
    bar2.update(1, 10, "0/1 files", "queued", "2")
    assert "queued" in out2.getvalue()
