"""The torture run's report: what was checked, what failed, and of which kind."""

from __future__ import annotations

import statistics
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
    # The upload phase (torture_upload.py): SIGKILLs of ferryd and of ferry-server while
    # uploads ran, uploads found byte-identical at the server (or its back end), replies
    # found byte-identical to the back end's answer.
    upload_kills: int = 0
    server_kills: int = 0
    uploads_verified: int = 0
    replies_verified: int = 0
    # Fleet worker kills (harness/torture_fleet.py): SIGKILLs of a fleet worker, the files
    # its jobs verified, and the seconds from each kill until another worker held every
    # lease the victim held.
    fleet_kills: int = 0
    fleet_files_verified: int = 0
    fleet_takeovers: list[float] = field(default_factory=list)
    # The secrets scan (harness/secrets.py): markers looked for, files and bytes scanned,
    # ferryd kills/restarts of the secrets phase while its secrets were in use.
    secrets_markers: int = 0
    secrets_files: int = 0
    secrets_bytes: int = 0
    secrets_restarts: int = 0
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
        if self.upload_kills or self.server_kills or self.uploads_verified:
            line += (
                f"; uploads: {self.upload_kills} ferryd kills, {self.server_kills} "
                f"ferry-server kills, {self.uploads_verified} uploads and "
                f"{self.replies_verified} replies verified"
            )
        if self.fleet_kills:
            line += (
                f"; {self.fleet_kills} fleet worker kills, {self.fleet_files_verified} "
                f"fleet files verified"
            )
            if self.fleet_takeovers:
                line += (
                    f", takeover median {statistics.median(self.fleet_takeovers):.1f} s, "
                    f"max {max(self.fleet_takeovers):.1f} s"
                )
        if self.secrets_files or self.secrets_bytes:
            line += (
                f"; {self.secrets_markers} secret markers scanned for in "
                f"{self.secrets_files} files + answers ({self.secrets_bytes / 2**20:.0f} MiB), "
                f"{self.kinds.count('secret-leak')} leaks"
            )
        if self.fuzz_routes or self.identity_attacks or self.secret_scans:
            line += (
                f"; API fuzzing: {len(self.fuzz_routes)} routes, {self.identity_attacks} "
                f"other-user attacks, {self.secret_scans} answers scanned for secrets"
            )
        if self.failures:
            line += f"; {len(self.failures)} FAILURES"
        return line
