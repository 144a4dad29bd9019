"""ferry-server killed in the middle of a commit (Close-Session), found while building the
upload torture run's checks (harness/torture_upload.py aims kills there too): the upload
is staged under a hidden ``.ferry-upload-*`` name beside its destination, then linked (or
renamed) to the destination. A SIGKILL between the two left the staged file in the
server's visible tree for good — the Close the client repeats after the restart staged the
upload again under a new random name. Now the staging name is the session's own, so the
repeated Close (or a Cancel, or the session's expiry) finds the leftover and removes it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from harness.upserver import FerryServer, bits, create, fragment

# ferry-server whose os.link SIGKILLs the process when it links the staged upload to its
# destination (a crash between staging and publishing); with an argument "rename", its
# os.rename does it instead (the --allow-overwrite path).
_CRASHING = """
import os, signal, sys
from ferry.server.main import main
which = sys.argv.pop(1)
real_link, real_rename = os.link, os.rename
def staged(src):
    return os.path.basename(str(src)).startswith(".ferry-upload-")
def link(src, dst, *a, **kw):
    if which == "link" and staged(src):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_link(src, dst, *a, **kw)
def rename(src, dst, *a, **kw):
    if which == "rename" and staged(src):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_rename(src, dst, *a, **kw)
os.link, os.rename = link, rename
main(prog_name="ferry-server")
"""


class CrashingServer(FerryServer):
    def __init__(self, *args: object, which: str, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.which = which

    def command(self) -> list[str]:
        return [sys.executable, "-c", _CRASHING, self.which, *super().command()[3:]]


def _staged(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".ferry-upload-"))


@pytest.mark.parametrize(
    ("which", "args", "other_fs"),
    [
        ("link", [], False),
        ("rename", ["--allow-overwrite"], False),
        ("link", [], True),  # across file systems: the staged file is a copy
    ],
)
def test_kill_between_staging_and_publishing_leaves_nothing(
    base: Path, which: str, args: list[str], other_fs: bool
) -> None:
    root = base / "root"
    state = base / "state"
    if other_fs:
        shm = Path("/dev/shm")
        if not shm.is_dir() or shm.stat().st_dev == root.stat().st_dev:
            pytest.skip("no second file system (/dev/shm) to keep the sessions on")
        state = shm / f"fys-commit-{os.getpid()}-{base.name}"
    data = os.urandom(300_000)
    crashing = CrashingServer(root, args, state_dir=state, which=which).start()
    try:
        sid = create(crashing.port, "/up.bin")
        a = fragment(crashing.port, "/up.bin", sid, data, 0, len(data))
        assert a.status == 200, a.headers
        with pytest.raises(ConnectionError):
            bits(crashing.port, "/up.bin", "Close-Session", sid)  # SIGKILLed mid-commit
        crashing.proc.wait(30)  # type: ignore[union-attr]
        crashing.kill()
        assert not (root / "up.bin").exists()
        assert len(_staged(root)) == 1  # the crash left the staged upload behind
        # The same server, restarted as it is (same port, root, state): the client's Close
        # again publishes the upload once, and the staged leftover is gone.
        server = FerryServer(root, args, state_dir=state)
        server.port = crashing.port
        server.start()
        try:
            a = bits(server.port, "/up.bin", "Close-Session", sid)
            assert a.status == 200, a.headers
            assert (root / "up.bin").read_bytes() == data
            assert _staged(root) == []
            assert bits(server.port, "/up.bin", "Close-Session", sid).status == 200
        finally:
            server.stop()
    finally:
        crashing.kill()
        if other_fs:
            import shutil

            shutil.rmtree(state, ignore_errors=True)


def test_cancel_after_a_kill_mid_commit_removes_the_staged_upload(base: Path) -> None:
    root = base / "root"
    data = os.urandom(100_000)
    crashing = CrashingServer(root, state_dir=base / "state", which="link").start()
    try:
        sid = create(crashing.port, "/gone.bin")
        assert fragment(crashing.port, "/gone.bin", sid, data, 0, len(data)).status == 200
        with pytest.raises(ConnectionError):
            bits(crashing.port, "/gone.bin", "Close-Session", sid)
        crashing.kill()
        assert len(_staged(root)) == 1
        server = FerryServer(root, state_dir=base / "state")
        server.port = crashing.port
        server.start()
        try:
            assert bits(server.port, "/gone.bin", "Cancel-Session", sid).status == 200
            assert _staged(root) == []
            assert not (root / "gone.bin").exists()
        finally:
            server.stop()
    finally:
        crashing.kill()


def test_expiry_removes_a_staged_leftover(base: Path) -> None:
    """A session whose client never came back after the crash: its expiry removes what the
    crash left staged beside its destination."""
    import time

    from ferry.server import ServerConfig
    from ferry.server.app import STATE_KEY, _stage_name, build, sweep
    from ferry.server.sessions import Session, new_session_id

    root = base / "root"
    app = build(ServerConfig(root=root, state_dir=base / "state", session_timeout=60))
    state = app[STATE_KEY]
    sid = new_session_id()
    state.store.create(Session(id=sid, path=["idle.bin"], created=time.time()))
    (root / _stage_name(sid)).write_bytes(b"staged before a crash")
    (root / "other.bin").write_bytes(b"not ours")
    assert sweep(state) == 0  # not expired yet: nothing touched
    assert len(_staged(root)) == 1
    os.utime(state.store.dir(sid) / "meta.json", (1, 1))  # idle since 1970
    assert sweep(state) == 1
    assert _staged(root) == []
    assert (root / "other.bin").read_bytes() == b"not ours"
