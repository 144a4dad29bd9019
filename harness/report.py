"""The torture run's report: what was checked, what failed, and of which kind."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.env import say


@dataclass
class Report:
    kills: int = 0
    files_verified: int = 0
    lost: int = 0
    jobs: int = 0
    fuzz_cases: int = 0
    raw_requests: int = 0
    attacks: int = 0
    # ferry-server fuzzing (harness/serverfuzz.py): raw fuzz requests sent, cases run, and
    # the requests its invariant checks made (probes, the good client)
    server_requests: int = 0
    server_cases: int = 0
    server_checks: int = 0
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # The kind of each failure (same order as ``failures``), so a caller can tell a known
    # bug from a new one: "refetch-uninterrupted" (a byte fetched twice with no kill or
    # error to explain it), "temp-left" (a temporary file left in a destination),
    # "complete-after-kill" (complete refused on a job whose previous complete was killed
    # half-way, and the state that follows), "server-fuzz" (an invariant of the ferry-server
    # fuzzing broken: harness/serverfuzz.py), or "other".
    kinds: list[str] = field(default_factory=list)

    def fail(self, msg: str, kind: str = "other") -> None:
        self.failures.append(msg)
        self.kinds.append(kind)
        say(f"  FAIL: {msg}")

    def note(self, msg: str) -> None:
        self.notes.append(msg)
        say(f"  note: {msg}")

    def summary(self) -> str:
        line = (
            f"torture: {self.kills} kills, {self.files_verified} files verified, "
            f"{self.lost} lost"
        )
        if self.fuzz_cases or self.raw_requests or self.attacks:
            line += (
                f"; {self.fuzz_cases} fuzz cases, {self.raw_requests} raw requests, "
                f"{self.attacks} path attacks"
            )
        if self.server_requests:
            line += (
                f"; ferry-server: {self.server_requests} raw requests in "
                f"{self.server_cases} cases, invariants checked after each"
            )
        if self.failures:
            line += f"; {len(self.failures)} FAILURES"
        return line
