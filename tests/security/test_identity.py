"""File operations performed as a token (security/identity.py), with real uids.

As root, every operation must be checked by the kernel exactly as for the token's user:
the worker thread switches its own fsuid/fsgid/groups, the rest of the daemon keeps root.
The uids used here have no passwd entry on purpose: tokens must work without one."""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
from pathlib import Path

import pytest

from ferry.errors import FerryError
from ferry.model.token import Token
from ferry.security.creds import PerThreadCreds
from ferry.security.identity import IdentityIO

ALICE = Token(uid=40001, gid=40001)
BOB = Token(uid=40002, gid=40002)
BOB_IN_TEAM = Token(uid=40002, gid=40002, groups=(40010,))
TEAM_GID = 40010

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="acting as other uids needs root (CI runs as root)"
)


def fs_ids_of_this_thread() -> tuple[int, int]:
    """(fsuid, fsgid) of the calling thread, as the kernel reports them."""
    uid = gid = -1
    for line in Path("/proc/thread-self/status").read_text().splitlines():
        if line.startswith("Uid:"):
            uid = int(line.split()[4])
        elif line.startswith("Gid:"):
            gid = int(line.split()[4])
    return uid, gid


def process_creds() -> tuple[object, ...]:
    return (os.getresuid(), os.getresgid(), sorted(os.getgroups()), fs_ids_of_this_thread())


def owned_dir(parent: Path, name: str, uid: int, gid: int, mode: int) -> Path:
    d = parent / name
    d.mkdir()
    os.chown(d, uid, gid)
    d.chmod(mode)
    return d


async def denied(coro: object) -> FerryError:
    with pytest.raises(FerryError) as info:
        await coro  # type: ignore[misc]
    return info.value


# ---- without root ---------------------------------------------------------------------


async def test_unknown_architecture_is_refused() -> None:
    with pytest.raises(FerryError, match="not supported"):
        PerThreadCreds("sparc64")


@pytest.mark.skipif(os.geteuid() == 0, reason="checks the user-mode rule as a plain user")
async def test_user_mode_serves_only_its_own_uid(io: IdentityIO, tmp_path: Path) -> None:
    other = Token(uid=os.geteuid() + 1, gid=os.getegid())
    err = await denied(io.create_temp(other, str(tmp_path / "f")))
    assert err.code == "E_ACCESSDENIED"
    mine = Token(uid=os.geteuid(), gid=os.getegid())
    fd, _ = await io.create_temp(mine, str(tmp_path / "f"))
    os.close(fd)


@needs_root
def test_user_mode_serves_only_its_own_uid_as_a_real_user(base: Path) -> None:
    """A ferryd running as uid 40001 (a real process under that uid) refuses 40002."""
    work = owned_dir(base, "alice", 40001, 40001, 0o700)

    async def as_alice() -> int:
        io = IdentityIO()
        try:
            assert not io.switches_identity
            try:
                await io.create_temp(BOB, str(work / "x"))
            except FerryError as exc:
                if exc.code != "E_ACCESSDENIED":
                    return 3
            else:
                return 2
            fd, path = await io.create_temp(ALICE, str(work / "x"))
            os.close(fd)
            return 0 if os.stat(path).st_uid == 40001 else 4
        finally:
            await io.shutdown()

    pid = os.fork()
    if pid == 0:  # the child becomes alice for good, then runs a user-mode IdentityIO
        code = 1
        try:
            os.setgroups([])
            os.setresgid(40001, 40001, 40001)
            os.setresuid(40001, 40001, 40001)
            code = asyncio.run(as_alice())
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# ---- as root: the kernel checks access as the token's user ----------------------------


@needs_root
async def test_create_temp_as_the_owner_of_the_directory(io: IdentityIO, base: Path) -> None:
    before = process_creds()
    alice_dir = owned_dir(base, "alice", 40001, 40001, 0o700)
    fd, temp = await io.create_temp(ALICE, str(alice_dir / "file.iso"))
    try:
        os.write(fd, b"data")  # the descriptor works from any thread
    finally:
        os.close(fd)
    st = os.stat(temp)
    assert (st.st_uid, st.st_gid) == (40001, 40001)
    assert st.st_mode & 0o777 == 0o600
    assert Path(temp).parent == alice_dir and Path(temp).name.startswith(".file.iso.")

    err = await denied(io.create_temp(BOB, str(alice_dir / "file.iso")))
    assert err.code == "E_ACCESSDENIED"
    assert process_creds() == before, "the daemon's own credentials never change"


@needs_root
async def test_root_owned_directory_is_closed_to_users(io: IdentityIO, base: Path) -> None:
    """CAP_DAC_OVERRIDE drops with the fsuid: root's 0700 directory stays closed."""
    private = owned_dir(base, "root-only", 0, 0, 0o700)
    err = await denied(io.create_temp(ALICE, str(private / "f")))
    assert err.code == "E_ACCESSDENIED"
    assert list(private.iterdir()) == []
    # Root itself (a root-owned job) still works there, without switching.
    fd, temp = await io.create_temp(Token(uid=0, gid=0), str(private / "f"))
    os.close(fd)
    assert os.stat(temp).st_uid == 0


@needs_root
async def test_supplementary_groups_grant_access(io: IdentityIO, base: Path) -> None:
    team = owned_dir(base, "team", 0, TEAM_GID, 0o770)
    err = await denied(io.create_temp(BOB, str(team / "f")))
    assert err.code == "E_ACCESSDENIED"
    fd, temp = await io.create_temp(BOB_IN_TEAM, str(team / "f"))
    os.close(fd)
    assert os.stat(temp).st_uid == 40002


@needs_root
async def test_other_threads_keep_root(io: IdentityIO, base: Path) -> None:
    """While a worker acts as alice, the loop thread (and the process) are still root."""
    inside = threading.Event()
    release = threading.Event()
    seen: list[tuple[int, int]] = []

    def hold() -> None:
        seen.append(fs_ids_of_this_thread())
        inside.set()
        release.wait(10)

    # _call is the one gate every operation goes through; a probe shows the thread's state.
    task = asyncio.ensure_future(io._call(ALICE, hold))
    assert await asyncio.to_thread(inside.wait, 10)
    try:
        assert fs_ids_of_this_thread() == (0, os.getegid())
        assert os.getresuid() == (0, 0, 0)
        other: list[tuple[int, int]] = []
        t = threading.Thread(target=lambda: other.append(fs_ids_of_this_thread()))
        t.start()
        t.join()
        assert other == [(0, os.getegid())]
    finally:
        release.set()
        await task
    assert seen == [(40001, 40001)]


@needs_root
async def test_many_identities_at_once(io: IdentityIO, base: Path) -> None:
    """Concurrent operations for different users each get their own identity."""
    dirs = {uid: owned_dir(base, f"u{uid}", uid, uid, 0o700) for uid in range(40001, 40009)}
    tokens = [Token(uid=uid, gid=uid) for uid in dirs for _ in range(4)]
    results = await asyncio.gather(*(io.create_temp(t, str(dirs[t.uid] / "f")) for t in tokens))
    for token, (fd, temp) in zip(tokens, results, strict=True):
        os.close(fd)
        assert os.stat(temp).st_uid == token.uid
    # Crossing over is refused for each of them.
    crossed = await asyncio.gather(
        *(
            io.create_temp(Token(uid=uid, gid=uid), str(dirs[40001] / "g"))
            for uid in range(40002, 40009)
        ),
        return_exceptions=True,
    )
    assert all(isinstance(r, FerryError) and r.code == "E_ACCESSDENIED" for r in crossed)
    assert fs_ids_of_this_thread() == (0, os.getegid())


@needs_root
async def test_planted_symlink_is_not_followed(
    io: IdentityIO, base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice_dir = owned_dir(base, "alice", 40001, 40001, 0o777)
    victim = base / "victim"
    victim.write_bytes(b"precious")
    os.chown(victim, 40001, 40001)
    # Make the "random" part predictable so an attacker's symlink sits at the temp path.
    monkeypatch.setattr(secrets, "token_hex", lambda n: "c0ffee")
    trap = alice_dir / ".f.c0ffee.ferry-part"
    trap.symlink_to(victim)
    err = await denied(io.create_temp(ALICE, str(alice_dir / "f")))
    assert err.code == "ERROR_FILE_EXISTS"
    assert victim.read_bytes() == b"precious"
    # Reopening a temporary file never follows a symlink either.
    err = await denied(io.open_temp(ALICE, str(trap)))
    assert err.code == "E_ACCESSDENIED"
    assert victim.read_bytes() == b"precious"


@needs_root
async def test_open_temp_checks_owner_and_links(io: IdentityIO, base: Path) -> None:
    shared = owned_dir(base, "shared", 0, 0, 0o777)
    mine = shared / ".mine.ferry-part"
    fd, _ = await io.create_temp(ALICE, str(shared / "mine"))
    os.close(fd)
    temp = next(shared.glob(".mine.*.ferry-part"))
    temp.rename(mine)
    fd = await io.open_temp(ALICE, str(mine))
    os.close(fd)

    # A file someone else owns, even if writable by alice.
    bobs = shared / ".bob.ferry-part"
    bobs.write_bytes(b"")
    os.chown(bobs, 40002, 40002)
    bobs.chmod(0o666)
    err = await denied(io.open_temp(ALICE, str(bobs)))
    assert err.code == "E_ACCESSDENIED"

    # A hard link to alice's file from elsewhere: writing through it would change that file.
    linked = shared / ".linked.ferry-part"
    os.link(mine, linked)
    err = await denied(io.open_temp(ALICE, str(linked)))
    assert err.code == "E_ACCESSDENIED"

    missing = await denied(io.open_temp(ALICE, str(shared / ".gone.ferry-part")))
    assert missing.code == "ERROR_FILE_NOT_FOUND"


@needs_root
async def test_publish_many_renames_atomically(io: IdentityIO, base: Path) -> None:
    alice_dir = owned_dir(base, "alice", 40001, 40001, 0o700)
    final = alice_dir / "result.bin"
    final.write_bytes(b"old")
    os.chown(final, 40001, 40001)
    old_inode = final.stat().st_ino
    fd, temp = await io.create_temp(ALICE, str(final))
    os.write(fd, b"new content")
    await io.fsync(fd)
    await io.close(fd)
    assert await io.publish_many(ALICE, [(temp, str(final))]) == (1, None)
    assert final.read_bytes() == b"new content"
    st = final.stat()
    assert st.st_ino != old_inode, "replaced by rename, not rewritten in place"
    assert (st.st_uid, st.st_gid) == (40001, 40001)
    assert st.st_mode & 0o777 == 0o644
    assert not Path(temp).exists()

    other = owned_dir(base, "other", 40001, 40001, 0o700)
    err = await denied(io.publish_many(ALICE, [(str(other / ".x"), str(final))]))
    assert err.code == "E_INVALIDARG", "only same-directory renames"

    # bob cannot publish into alice's directory.
    fd, temp = await io.create_temp(ALICE, str(final))
    os.close(fd)
    done, refused = await io.publish_many(BOB, [(temp, str(final))])
    assert done == 0 and refused is not None and refused.code == "E_ACCESSDENIED"
    assert final.read_bytes() == b"new content"


@needs_root
async def test_publish_many_stops_at_the_first_failure(io: IdentityIO, base: Path) -> None:
    alice_dir = owned_dir(base, "alice", 40001, 40001, 0o700)
    names = [str(alice_dir / f"f{i}.bin") for i in range(4)]
    temps = []
    for i, name in enumerate(names):
        fd, temp = await io.create_temp(ALICE, name)
        os.write(fd, b"x" * i)
        await io.close(fd)
        temps.append(temp)
    # The third one is not a regular file any more: a planted symlink to another file.
    victim = alice_dir / "victim"
    victim.write_bytes(b"keep")
    victim.chmod(0o600)
    os.unlink(temps[2])
    os.symlink(victim, temps[2])
    done, error = await io.publish_many(ALICE, list(zip(temps, names, strict=True)))
    assert done == 2 and error is not None
    assert error.code == "E_ACCESSDENIED"  # O_NOFOLLOW: the link is refused, not followed
    assert [Path(n).exists() for n in names] == [True, True, False, False]
    assert Path(names[1]).read_bytes() == b"x" and Path(names[1]).stat().st_mode & 0o777 == 0o644
    assert Path(temps[3]).exists() and victim.read_bytes() == b"keep"
    assert victim.stat().st_mode & 0o777 == 0o600, "the chmod never went through the link"
    # bob gets nothing renamed in alice's directory, and says why.
    done, error = await io.publish_many(BOB, [(temps[3], names[3])])
    assert done == 0 and error is not None and error.code == "E_ACCESSDENIED"
    assert Path(temps[3]).exists()


@needs_root
async def test_publish_many_into_a_directory_the_token_cannot_read(
    io: IdentityIO, base: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A drop box (write and search, no read): the token cannot open it to sync it. The
    renames are done and count as published; the weaker durability is logged, not hidden."""
    drop = owned_dir(base, "drop", 40001, 40001, 0o333)
    fd, temp = await io.create_temp(ALICE, str(drop / "a"))
    os.write(fd, b"data")
    await io.close(fd)
    assert await io.publish_many(ALICE, [(temp, str(drop / "a"))]) == (1, None)
    assert (drop / "a").read_bytes() == b"data"
    assert any(
        "uid 40001 may not open" in r.getMessage() and str(drop) in r.getMessage()
        for r in caplog.records
    )


@needs_root
async def test_unlink_as_the_token(io: IdentityIO, base: Path) -> None:
    alice_dir = owned_dir(base, "alice", 40001, 40001, 0o755)
    fd, temp = await io.create_temp(ALICE, str(alice_dir / "a"))
    os.close(fd)
    err = await denied(io.unlink(BOB, temp))
    assert err.code == "E_ACCESSDENIED"
    assert await io.unlink(ALICE, temp) is True
    assert await io.unlink(ALICE, temp) is False


@needs_root
async def test_open_read_as_the_token(io: IdentityIO, base: Path) -> None:
    secret = base / "secret"
    secret.write_bytes(b"for alice only")
    os.chown(secret, 40001, 40001)
    secret.chmod(0o600)
    fd = await io.open_read(ALICE, str(secret))
    try:
        assert os.read(fd, 100) == b"for alice only"
    finally:
        os.close(fd)
    err = await denied(io.open_read(BOB, str(secret)))
    assert err.code == "E_ACCESSDENIED"
    err = await denied(io.open_read(BOB, str(base / "missing")))
    assert err.code == "ERROR_FILE_NOT_FOUND"
    err = await denied(io.open_read(BOB, str(base)))
    assert err.code == "E_INVALIDARG"


@needs_root
async def test_check_directory(io: IdentityIO, base: Path) -> None:
    alice_dir = owned_dir(base, "alice", 40001, 40001, 0o700)
    await io.check_directory(ALICE, str(alice_dir / "f"))
    err = await denied(io.check_directory(BOB, str(alice_dir / "f")))
    assert err.code == "E_ACCESSDENIED"
    err = await denied(io.check_directory(ALICE, str(base / "nope" / "f")))
    assert err.code == "ERROR_PATH_NOT_FOUND" and str(base / "nope") in err.message
    (base / "file").write_bytes(b"")
    err = await denied(io.check_directory(ALICE, str(base / "file" / "f")))
    assert err.code == "ERROR_PATH_NOT_FOUND"


@needs_root
async def test_check_destinations(io: IdentityIO, base: Path) -> None:
    """Directories searched as the token (once each), and a local name that is a directory
    refused, seen as the token: BOB cannot even look into alice's private directory."""
    alice_dir = owned_dir(base, "alice", 40001, 40001, 0o700)
    (alice_dir / "sub").mkdir()
    names = [str(alice_dir / "a"), str(alice_dir / "b"), str(base / "c")]
    await io.check_destinations(ALICE, names)
    err = await denied(io.check_destinations(BOB, names))
    assert err.code == "E_ACCESSDENIED"
    err = await denied(io.check_destinations(ALICE, [str(alice_dir / "a"), str(alice_dir / "sub")]))
    assert err.code == "E_INVALIDARG" and str(alice_dir / "sub") in err.message
    err = await denied(io.check_destinations(ALICE, [str(base / "nope" / "f")]))
    assert err.code == "ERROR_PATH_NOT_FOUND"
    # A symbolic link to a directory is not a directory here: complete's rename replaces the
    # link itself, never writes through it.
    (alice_dir / "link").symlink_to(alice_dir / "sub")
    await io.check_destinations(ALICE, [str(alice_dir / "link")])


@needs_root
async def test_invalid_ids_are_refused(io: IdentityIO, base: Path) -> None:
    for token in (Token(uid=0xFFFFFFFF, gid=1), Token(uid=40001, gid=-1)):
        err = await denied(io.create_temp(token, str(base / "f")))
        assert err.code == "E_ACCESSDENIED"
    assert list(base.iterdir()) == []
    assert not io.broken
