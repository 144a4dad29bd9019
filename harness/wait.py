"""Waiting with a deadline, never a fixed sleep: poll a condition, or a job's state through
ferryd's API, until it holds; fail with what was last seen."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Caller(Protocol):
    """Anything that makes an API call: ``harness.ferryd.Daemon``, or an attacker's view."""

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]: ...


class StateTimeout(AssertionError):
    """The job did not reach a wanted state in time; ``last`` is the job as last seen."""

    def __init__(self, message: str, last: dict[str, Any]) -> None:
        super().__init__(message)
        self.last = last


def wait_until(
    check: Callable[[], T], what: str = "condition", timeout: float = 30, every: float = 0.02
) -> T:
    """Poll ``check`` until it returns something true, and return that; AssertionError
    naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def wait_state(
    d: Caller, job: str, *states: str | Iterable[str], timeout: float = 30, every: float = 0.05
) -> dict[str, Any]:
    """Poll GET /v1/jobs/JOB until its state is one of ``states`` (names, or sets of
    names: ``wait_state(d, j, "TRANSFERRED", "ERROR")`` and ``wait_state(d, j,
    {"TRANSFERRED", "ERROR"})`` are the same); returns the job. At the deadline raises
    StateTimeout with the job as last seen (and ferryd's log, when ``d`` has one)."""
    wanted: set[str] = set()
    for s in states:
        wanted.update([s] if isinstance(s, str) else s)
    last: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while True:
        status, body = d.call("GET", f"/v1/jobs/{job}")
        assert status == 200, (status, body)
        last = body
        if body["state"] in wanted:
            return body  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            log = getattr(d, "log", None)
            tail = f"\n{log()}" if callable(log) else ""
            raise StateTimeout(
                f"job stayed {last.get('state')} (waited for {sorted(wanted)}): {last}{tail}",
                last,
            )
        time.sleep(every)
