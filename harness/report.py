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
    # Phase 2's API fuzzing (harness/hostile.py): generated cases per route ("METHOD
    # /path"), cases aimed at another user's jobs or handles, and answers (plus the log and
    # the store at the end) scanned for the bystanders' secrets.
    fuzz_routes: dict[str, int] = field(default_factory=dict)
    identity_attacks: int = 0
    secret_scans: int = 0
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # The kind of each failure (same order as ``failures``), so a caller can tell a known
    # bug from a new one: "refetch-uninterrupted" (a byte fetched twice with no kill or
    # error to explain it), "temp-left" (a temporary file left in a destination),
    # "complete-after-kill" (complete refused on a job whose previous complete was killed
    # half-way, and the state that follows), or "other".
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
        if self.fuzz_routes or self.identity_attacks or self.secret_scans:
            line += (
                f"; API fuzzing: {len(self.fuzz_routes)} routes, {self.identity_attacks} "
                f"other-user attacks, {self.secret_scans} answers scanned for secrets"
            )
        if self.failures:
            line += f"; {len(self.failures)} FAILURES"
        return line
