"""The pure rules of SPEC §4.2-4.5: access, token-options callers, handles, sessions."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ferry.errors import FerryError
from ferry.model.job import Job, Limits
from ferry.model.token import Token
from ferry.model.types import TokenFlags
from ferry.security import policy
from ferry.security.handles import HandleTable, Interface
from ferry.security.sessions import Change, SessionTracker, scan_logind, scan_procfs

OWNER = Token(1000, 1000, (1000,), session=7)
OTHER = Token(1001, 1001, (1001,), session=8)
ROOT = Token(0, 0, (0,), admin=True)
ADMIN_GROUP_USER = Token(1002, 1002, (1002, 27), admin=True)
HELPER = Token(2000, 2000, (2000,), session=9)
ROOT_HELPER = Token(0, 0, (0,), session=10, admin=True)


def job() -> Job:
    return Job.new(OWNER, "j", 0.0, Limits())


def denied(fn: object, *args: object) -> None:
    with pytest.raises(FerryError) as exc:
        fn(*args)  # type: ignore[operator]
    assert exc.value.code == "E_ACCESSDENIED"
    assert exc.value.hresult == 0x80070005


def test_sid_and_service_identity() -> None:
    assert OWNER.sid == "S-1-22-1-1000"
    assert ROOT.is_service and not OWNER.is_service


def test_access_owner_and_admins_only() -> None:
    j = job()
    for caller in (OWNER, ROOT, ADMIN_GROUP_USER, Token(1000, 5, session=None)):
        policy.check_access(caller, j)
    denied(policy.check_access, OTHER, j)
    assert policy.may_list_all(ROOT) and not policy.may_list_all(OWNER)


@pytest.mark.parametrize(
    ("opener", "helper", "allowed"),
    [
        (OWNER, HELPER, True),
        (OWNER, OWNER, True),
        (OWNER, ROOT_HELPER, False),  # a non-admin cannot install an admin helper token
        (OTHER, HELPER, False),  # not the owner, not an admin
        (ROOT, ROOT_HELPER, True),
        (ADMIN_GROUP_USER, ROOT_HELPER, True),
    ],
)
def test_set_helper_token_rule(opener: Token, helper: Token, allowed: bool) -> None:
    j = job()
    if allowed:
        policy.check_set_helper_token(opener, j, helper)
    else:
        denied(policy.check_set_helper_token, opener, j, helper)


def test_set_flags_rule_looks_at_the_current_helper() -> None:
    j = job()
    policy.check_set_helper_flags(OWNER, j)
    j.helper_token = HELPER
    policy.check_set_helper_flags(OWNER, j)
    j.helper_token = ROOT_HELPER
    denied(policy.check_set_helper_flags, OWNER, j)
    policy.check_set_helper_flags(ROOT, j)
    denied(policy.check_set_helper_flags, OTHER, j)
    policy.check_clear_helper_token(OWNER, j)
    denied(policy.check_read_token_options, OTHER, j)


def test_which_token_acts() -> None:
    j = job()
    assert policy.local_file_token(j) is OWNER and policy.network_token(j) is OWNER
    j.helper_flags = TokenFlags.NETWORK
    with pytest.raises(FerryError) as exc:
        policy.network_token(j)
    assert exc.value.code == "BG_E_TOKEN_REQUIRED"
    assert policy.local_file_token(j) is OWNER
    j.helper_token = HELPER
    assert policy.network_token(j) is HELPER and policy.local_file_token(j) is OWNER
    j.helper_flags = TokenFlags.all()
    assert policy.local_file_token(j) is HELPER


def test_helper_flags_validation() -> None:
    j = job()
    for bad in (4, 8, -1, True):
        with pytest.raises(FerryError) as exc:
            j.set_helper_flags(bad, 1.0)  # type: ignore[arg-type]
        assert exc.value.code == "E_INVALIDARG"
    assert j.helper_flags == 0
    j.set_helper_flags(3, 1.0)
    assert j.helper_flags.names() == ["LOCAL_FILE", "NETWORK"]


def test_handles_lifetime() -> None:
    now = [100.0]
    table = HandleTable(clock=lambda: now[0])
    alive = [True]
    h = table.open("job", Interface.TOKEN_OPTIONS, OWNER, None, lambda: alive[0])
    assert len(h.id) >= 32 and table.get(h.id).opener is OWNER
    with pytest.raises(FerryError):
        table.get(h.id, Interface.JOB)
    alive[0] = False
    denied(table.get, h.id)
    t = table.open("job", Interface.JOB, OWNER, 10, lambda: False)
    assert table.get(t.id) is t  # a TTL handle outlives its connection
    now[0] += 10
    denied(table.get, t.id)
    r = table.open("job", Interface.JOB, OWNER, 60, lambda: True)
    table.release(r.id)
    denied(table.get, r.id)
    denied(table.get, "forged")
    for bad_ttl in (0, -5, 3601):
        with pytest.raises(FerryError) as exc:
            table.open("job", Interface.JOB, OWNER, bad_ttl, lambda: True)
        assert exc.value.code == "E_INVALIDARG"
    assert (
        len({table.open("j", Interface.JOB, OWNER, 5, lambda: True).id for _ in range(100)}) == 100
    )


def _proc(root: Path, pid: int, session: int, loginuid: int) -> None:
    d = root / str(pid)
    d.mkdir()
    (d / "sessionid").write_text(str(session))
    (d / "loginuid").write_text(str(loginuid))


def test_session_tracker_transitions(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    _proc(proc, 10, 5, 1000)
    _proc(proc, 11, 5, 1000)
    _proc(proc, 12, 6, 1000)
    _proc(proc, 13, 4294967295, 4294967295)
    (proc / "self").mkdir()
    assert scan_procfs(str(proc)) == {5: 1000, 6: 1000}
    tracker = SessionTracker(proc=str(proc), logind_dir=str(tmp_path / "none"))
    change = tracker.update(tracker.scan())
    assert change.logged_on == {1000}
    owner = Token(1000, 1000, session=5)
    assert tracker.token_logged_on(owner)
    # Session 5 ends, 6 lives on: the session ended, the user is still logged on.
    for pid in (10, 11):
        for f in (proc / str(pid)).iterdir():
            f.unlink()
        (proc / str(pid)).rmdir()
    change = tracker.update(tracker.scan())
    assert change.ended_sessions == {5} and change.logged_off == frozenset()
    assert tracker.token_logged_on(owner)
    # Declared logoff of the user ends session 6 for good.
    change = tracker.declare_user_logged_off(1000)
    assert change.ended_sessions == {6} and change.logged_off == {1000}
    assert not tracker.token_logged_on(owner)
    assert tracker.update(tracker.scan()).logged_on == frozenset()  # stays dead
    assert tracker.token_logged_on(Token(1000, 1000, session=None))  # service identity


def test_a_session_seen_only_through_a_token_still_ends(tmp_path: Path) -> None:
    """A helper connects from session 7 and logs off before any scan saw it: the session was
    noted from its token, so the next scan that misses it reports it ended."""
    proc = tmp_path / "proc"
    proc.mkdir()
    tracker = SessionTracker(proc=str(proc), logind_dir=str(tmp_path / "none"))
    assert tracker.update(tracker.scan()) == Change()
    helper = Token(1001, 1001, session=7)
    assert tracker.note(helper).logged_on == {1001}
    assert tracker.token_logged_on(helper)
    assert tracker.note(helper) == Change()  # noted once
    change = tracker.update(tracker.scan(), scan_started=time.monotonic())
    assert change.ended_sessions == {7} and change.logged_off == {1001}
    assert not tracker.token_logged_on(helper)


def test_a_session_noted_during_a_scan_is_not_ended_by_it(tmp_path: Path) -> None:
    """The scan looked at /proc before session 8 began; its token arrived while the scan ran.
    That scan must not end it; the next one, which sees it, keeps it; one that misses it
    after that ends it."""
    proc = tmp_path / "proc"
    proc.mkdir()
    tracker = SessionTracker(proc=str(proc), logind_dir=str(tmp_path / "none"))
    started = time.monotonic()
    found = tracker.scan()  # session 8 does not exist yet
    tracker.note(Token(1002, 1002, session=8))
    assert tracker.update(found, started).ended_sessions == frozenset()
    assert tracker.session_alive(8)
    _proc(proc, 20, 8, 1002)
    assert tracker.update(tracker.scan(), time.monotonic()) == Change()
    (proc / "20" / "sessionid").unlink()
    (proc / "20" / "loginuid").unlink()
    (proc / "20").rmdir()
    assert tracker.update(tracker.scan(), time.monotonic()).ended_sessions == {8}


def test_a_declared_dead_session_is_not_revived_by_its_token(tmp_path: Path) -> None:
    tracker = SessionTracker(proc=str(tmp_path / "none"), logind_dir=str(tmp_path / "none"))
    token = Token(1003, 1003, session=9)
    tracker.note(token)
    assert tracker.declare_session_ended(9).ended_sessions == {9}
    assert tracker.note(token) == Change()
    assert not tracker.session_alive(9)


def test_logind_sessions(tmp_path: Path) -> None:
    (tmp_path / "12").write_text("UID=1000\nUSER=alice\nSTATE=active\n")
    (tmp_path / "13").write_text("UID=1001\nSTATE=closing\n")
    (tmp_path / "c1").write_text("UID=1002\n")
    assert scan_logind(str(tmp_path)) == {12: 1000}
