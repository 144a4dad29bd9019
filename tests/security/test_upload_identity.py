"""Uploads as real uids (SPEC §9, §4.4) against a system-mode ferryd running as root: the
local file is read as the owner (or the LOCAL_FILE helper), never as root, and the reply of
an upload-reply job is created owned by that identity."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.ferryd import Daemon
from harness.wait import wait_state

import ferry
from tests.helpers.jobs import owned_dir
from tests.helpers.oddbits import OddBitsServer

A = 40311
B = 40312

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")


@pytest.fixture
def odd() -> Iterator[OddBitsServer]:
    server = OddBitsServer()
    server.start()
    yield server
    server.stop()


def _owned_file(path: Path, uid: int, mode: int, data: bytes) -> Path:
    path.write_bytes(data)
    os.chown(path, uid, uid)
    os.chmod(path, mode)
    return path


def test_a_file_only_the_owner_can_read_uploads(
    system_ferryd: Daemon, short_tmp: Path, odd: OddBitsServer
) -> None:
    home = owned_dir(short_tmp / "a", A, 0o700)
    data = os.urandom(70_000)
    src = _owned_file(home / "secret.bin", A, 0o600, data)
    with ferry.Client(system_ferryd.socket) as c:
        with ferry.impersonate(A, A):
            job = c.create_job("a-up", type="upload")
        job.add_file(odd.url("a"), str(src))
        job.resume()
        body = wait_state(system_ferryd, job.id, "TRANSFERRED", "ERROR")
        assert body["state"] == "TRANSFERRED", body["error"]
        job.complete()
    assert odd.published["a"] == data


def test_a_file_only_root_can_read_is_refused(
    system_ferryd: Daemon, short_tmp: Path, odd: OddBitsServer
) -> None:
    d = owned_dir(short_tmp / "r", 0, 0o755)
    src = _owned_file(d / "root-only.bin", 0, 0o600, b"root's")
    with ferry.Client(system_ferryd.socket) as c:
        with ferry.impersonate(A, A):
            job = c.create_job("a-root", type="upload")
        with pytest.raises(ferry.FerryError) as exc:
            job.add_file(odd.url("r"), str(src))
        assert exc.value.code == "E_ACCESSDENIED"
        assert job.files() == []
        # Readable when added, root's only when the upload runs: the job fails in LOCAL_FILE.
        os.chmod(src, 0o644)
        job.add_file(odd.url("r"), str(src))
        os.chmod(src, 0o600)
        job.resume()
        body = wait_state(system_ferryd, job.id, "ERROR", "TRANSFERRED")
        assert body["state"] == "ERROR"
        assert body["error"]["code"] == "E_ACCESSDENIED"
        assert body["error"]["context"] == "LOCAL_FILE"
        job.cancel()
    assert odd.count("create-session") == 0 and "r" not in odd.published


def test_reply_is_created_as_the_owner(
    system_ferryd: Daemon, short_tmp: Path, odd: OddBitsServer
) -> None:
    home = owned_dir(short_tmp / "ra", A, 0o700)
    src = _owned_file(home / "up.bin", A, 0o600, os.urandom(1000))
    odd.reply_for["ra"] = b"reply for A"
    with ferry.Client(system_ferryd.socket) as c:
        with ferry.impersonate(A, A):
            job = c.create_job("a-reply", type="upload-reply")
        job.add_file(odd.url("ra"), str(src))
        job.resume()
        body = wait_state(system_ferryd, job.id, "TRANSFERRED", "ERROR")
        assert body["state"] == "TRANSFERRED", body["error"]
        temps = [p for p in home.iterdir() if p.name.startswith(".up.bin.reply.")]
        assert len(temps) == 1 and temps[0].stat().st_uid == A
        assert job.reply_data() == b"reply for A"
        job.complete()
    reply = home / "up.bin.reply"
    assert reply.read_bytes() == b"reply for A"
    assert reply.stat().st_uid == A and reply.stat().st_gid == A


def test_reply_in_a_directory_the_owner_cannot_write_fails(
    system_ferryd: Daemon, short_tmp: Path, odd: OddBitsServer
) -> None:
    """ferryd is root, but the reply is written as the owner: a root-only directory is
    refused (when the reply file is set), never written into as root."""
    home = owned_dir(short_tmp / "rb", A, 0o755)
    src = _owned_file(home / "up.bin", A, 0o644, b"x")
    closed = owned_dir(short_tmp / "closed", 0, 0o755)
    odd.reply_for["rb"] = b"nope"
    with ferry.Client(system_ferryd.socket) as c:
        with ferry.impersonate(A, A):
            job = c.create_job("a-closed", type="upload-reply")
        job.add_file(odd.url("rb"), str(src))
        job.set_reply_file(str(closed / "reply"))
        job.resume()
        body = wait_state(system_ferryd, job.id, "ERROR", "TRANSFERRED")
        assert body["state"] == "ERROR"
        assert body["error"]["code"] == "E_ACCESSDENIED"
        assert body["error"]["context"] == "LOCAL_FILE"
        job.cancel()
    assert list(closed.iterdir()) == []


def test_local_file_helper_reads_and_owns_the_reply(
    system_ferryd: Daemon, short_tmp: Path, odd: OddBitsServer
) -> None:
    """With the LOCAL_FILE helper B, the file only B can read is uploaded and the reply is
    B's, in B's directory."""
    bdir = owned_dir(short_tmp / "b", B, 0o700)
    data = os.urandom(5000)
    src = _owned_file(bdir / "b.bin", B, 0o600, data)
    odd.reply_for["hb"] = b"for B"
    with ferry.Client(system_ferryd.socket) as c:
        with ferry.impersonate(A, A):
            job = c.create_job("a-helper-b", type="upload-reply")
        opts = job.token_options()
        with ferry.impersonate(B, B, [B]):
            opts.set_helper_token()
        opts.set_helper_token_flags(ferry.TokenFlags.LOCAL_FILE)
        job.add_file(odd.url("hb"), str(src))
        job.resume()
        body = wait_state(system_ferryd, job.id, "TRANSFERRED", "ERROR")
        assert body["state"] == "TRANSFERRED", body["error"]
        job.complete()
    assert odd.published["hb"] == data
    reply = bdir / "b.bin.reply"
    assert reply.read_bytes() == b"for B" and reply.stat().st_uid == B
