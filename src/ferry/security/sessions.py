"""Logon-session tracking (SPEC §4.5): which audit sessions are alive, whose they are.

A session is alive while some process carries its audit session id (/proc/PID/sessionid),
or while systemd-logind lists it (logind names sessions by their audit id when the kernel
has auditing). It belongs to the uid in its processes' /proc/PID/loginuid. An admin (or a
PAM close-session hook) can declare a session or a user logged off at once; audit session
ids are never reused, so a declared-dead session stays dead.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..model.token import NO_SESSION, Token


@dataclass(frozen=True, slots=True)
class Change:
    ended_sessions: frozenset[int] = frozenset()
    logged_off: frozenset[int] = frozenset()  # uids with no session left
    logged_on: frozenset[int] = frozenset()  # uids that gained their first session

    def __bool__(self) -> bool:
        return bool(self.ended_sessions or self.logged_off or self.logged_on)


def _read_int(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def scan_procfs(proc: str = "/proc") -> dict[int, int]:
    """Audit session id -> login uid, for every process that has both."""
    found: dict[int, int] = {}
    try:
        entries = os.listdir(proc)
    except OSError:
        return found
    for name in entries:
        if not name.isdigit():
            continue
        sid = _read_int(f"{proc}/{name}/sessionid")
        if sid is None or sid == NO_SESSION or sid in found:
            continue
        uid = _read_int(f"{proc}/{name}/loginuid")
        if uid is None or uid == NO_SESSION:
            continue
        found[sid] = uid
    return found


def scan_logind(sessions_dir: str = "/run/systemd/sessions") -> dict[int, int]:
    """Sessions systemd-logind knows, by their audit id (its session name) -> UID."""
    found: dict[int, int] = {}
    base = Path(sessions_dir)
    try:
        files = list(base.iterdir())
    except OSError:
        return found
    for f in files:
        if not f.name.isdigit():
            continue
        try:
            fields = dict(line.split("=", 1) for line in f.read_text().splitlines() if "=" in line)
        except OSError:
            continue
        if fields.get("STATE") == "closing" or "UID" not in fields:
            continue
        try:
            found[int(f.name)] = int(fields["UID"])
        except ValueError:
            continue
    return found


@dataclass
class SessionTracker:
    proc: str = "/proc"
    logind_dir: str = "/run/systemd/sessions"
    alive: dict[int, int] = field(default_factory=dict)  # session -> uid
    declared_dead: set[int] = field(default_factory=set)
    # Sessions learnt from a caller's token rather than a scan: when (monotonic) each was seen.
    noted: dict[int, float] = field(default_factory=dict)

    def scan(self) -> dict[int, int]:
        """Blocking (reads procfs): call from a worker thread."""
        found = scan_procfs(self.proc)
        found.update(scan_logind(self.logind_dir))
        for sid in self.declared_dead:
            found.pop(sid, None)
        return found

    def note(self, token: Token) -> Change:
        """A caller's connection carries ``token``: its session is alive now, whether or not a
        scan has seen it yet. Without this, a session that starts and ends between two polls
        (a helper that sets its token and logs off at once) would never be seen to end, and
        the logoff rules would never apply to it."""
        sid = token.session
        if sid is None or sid in self.alive or sid in self.declared_dead:
            return Change()
        first = not self.user_logged_on(token.uid)
        self.alive[sid] = token.uid
        self.noted[sid] = time.monotonic()
        return Change(logged_on=frozenset({token.uid}) if first else frozenset())

    def update(self, found: dict[int, int], scan_started: float | None = None) -> Change:
        """Apply a scan's result. ``scan_started`` (monotonic) is when the scan began: a
        session noted from a token after that may be missing from the scan only because it
        began after the scan had looked, so it is kept, not ended."""
        for sid in self.declared_dead:
            found.pop(sid, None)
        if scan_started is not None:
            for sid, seen in self.noted.items():
                if seen >= scan_started and sid not in found and sid in self.alive:
                    found[sid] = self.alive[sid]
        self.noted = {
            sid: seen
            for sid, seen in self.noted.items()
            if scan_started is not None and seen >= scan_started and sid in found
        }
        before_users = set(self.alive.values())
        ended = frozenset(set(self.alive) - set(found))
        self.alive = found
        after_users = set(found.values())
        return Change(
            ended, frozenset(before_users - after_users), frozenset(after_users - before_users)
        )

    def declare_session_ended(self, session: int) -> Change:
        self.declared_dead.add(session)
        change = self.update(dict(self.alive))
        # The declaration holds even for a session the last poll had not seen yet.
        return Change(change.ended_sessions | {session}, change.logged_off, change.logged_on)

    def declare_user_logged_off(self, uid: int) -> Change:
        self.declared_dead.update(s for s, u in self.alive.items() if u == uid)
        change = self.update(dict(self.alive))
        # Report the logoff even when the tracker had not seen a session of the user yet.
        return Change(change.ended_sessions, change.logged_off | {uid}, change.logged_on)

    def session_alive(self, session: int | None) -> bool:
        return session is None or session in self.alive

    def user_logged_on(self, uid: int) -> bool:
        return uid in self.alive.values()

    def token_logged_on(self, token: Token) -> bool:
        """Service identities are always logged on; a user is while any session of theirs,
        or the very session the token came from, is alive."""
        if token.is_service:
            return True
        return self.session_alive(token.session) or self.user_logged_on(token.uid)
