"""ferry ↔ ferry-server (SPEC §9): upload and upload-reply jobs through a real ferryd to a
real ferry-server process, byte-identical at the destination; kill -9 of ferryd and a
restart of the server mid-upload, session expiry, cancel, complete, a farm host, and an
upload-reply job whose reply comes from a real back-end application."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from harness.aio import AppServer
from harness.env import short_tmpdir
from harness.ferryd import Daemon
from harness.upserver import FerryServer
from harness.wait import wait_state, wait_until

from ferry import Client, FerryError

CONFIG = "[daemon]\nupload_fragment_size = {frag}\nupload_retries = 8\n"

BIG = pytest.param(
    300_000_000,
    marks=pytest.mark.skipif(
        not os.environ.get("FERRY_BIG_UPLOADS"),
        reason="300 MB uploads run with FERRY_BIG_UPLOADS=1 (and in benchmarks/upload_bench.py)",
    ),
)


def _daemon(base: Path, frag: int = 1 << 20) -> Daemon:
    d = Daemon(base / "ferryd", config=CONFIG.format(frag=frag))
    d.start()
    return d


@pytest.fixture
def base() -> Iterator[Path]:
    path = short_tmpdir("fyu-")
    (path / "root").mkdir()
    (path / "src").mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server(base: Path) -> Iterator[FerryServer]:
    s = FerryServer(base / "root", state_dir=base / "state").start()
    yield s
    s.stop()


@pytest.fixture
def ferryd(base: Path) -> Iterator[Daemon]:
    d = _daemon(base)
    yield d
    assert d.stop() == 0, d.log()


def _src(base: Path, name: str, size: int) -> Path:
    path = base / "src" / name
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 4 << 20)
            f.write(os.urandom(n))
            left -= n
    return path


def _same(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    ha, hb = hashlib.sha256(), hashlib.sha256()
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for chunk in iter(lambda: fa.read(1 << 20), b""):
            ha.update(chunk)
        for chunk in iter(lambda: fb.read(1 << 20), b""):
            hb.update(chunk)
    return ha.digest() == hb.digest()


def _start_upload(c: Client, name: str, url: str, src: Path, kind: str = "upload") -> Any:
    """An upload (or upload-reply) job of one file, resumed; returns the job."""
    job = c.create_job(name, type=kind)
    job.add_file(url, str(src))
    job.resume()
    return job


def _wait_acked(ferryd: Daemon, jid: str, below: int | None = None) -> None:
    """Until the server has acknowledged part of the upload (and, with ``below``, less
    than that many bytes)."""

    def acked() -> bool:
        done = ferryd.call("GET", f"/v1/jobs/{jid}")[1]["progress"]["bytes_transferred"]
        return done > 0 and (below is None or done < below)

    wait_until(acked, "part of the upload acknowledged", every=0.005)


def _transferred_after_outage(ferryd: Daemon, job: Any, timeout: float) -> None:
    """Wait for TRANSFERRED after the server went away; a server down longer than the
    retries leaves the job in TRANSIENT_ERROR, which one resume recovers."""
    body = wait_state(ferryd, job.id, "TRANSFERRED", "ERROR", "TRANSIENT_ERROR", timeout=timeout)
    if body["state"] == "TRANSIENT_ERROR":
        job.resume()
        body = wait_state(ferryd, job.id, "TRANSFERRED", "ERROR", timeout=timeout)
    assert body["state"] == "TRANSFERRED", (body["error"], ferryd.log())


@pytest.mark.parametrize("size", [0, 1, 5 * 1024, 7_000_000, 64 << 20, BIG])
def test_upload_sizes_byte_identical(
    ferryd: Daemon, server: FerryServer, base: Path, size: int
) -> None:
    src = _src(base, f"f{size}", size)
    with Client(ferryd.socket) as c:
        job = _start_upload(c, f"up{size}", server.url(f"/f{size}"), src)
        body = wait_state(ferryd, job.id, "TRANSFERRED", "ERROR", timeout=300)
        assert body["state"] == "TRANSFERRED", (body["error"], ferryd.log())
        assert body["progress"]["bytes_transferred"] == size
        assert not (base / "root" / f"f{size}").exists()  # nothing visible before Close
        assert job.complete() == "S_OK"
    assert _same(src, base / "root" / f"f{size}")


def test_kill_9_of_ferryd_mid_upload(base: Path, server: FerryServer) -> None:
    ferryd = _daemon(base, frag=256 << 10)
    try:
        src = _src(base, "k", 48 << 20)
        with Client(ferryd.socket) as c:
            jid = _start_upload(c, "k", server.url("/k"), src).id
        _wait_acked(ferryd, jid, below=24 << 20)
        os.kill(ferryd.pid, signal.SIGKILL)
        assert ferryd.proc is not None
        ferryd.proc.wait()
        ferryd.start()
        body = wait_state(ferryd, jid, "TRANSFERRED", "ERROR", timeout=300)
        assert body["state"] == "TRANSFERRED", (body["error"], ferryd.log())
        with Client(ferryd.socket) as c:
            assert c.get_job(jid).complete() == "S_OK"
        assert _same(src, base / "root" / "k")
        # One session: the restarted ferryd resumed it rather than starting over.
        assert server.log().count("created for /k") == 1, server.log()
    finally:
        ferryd.stop()


def test_server_restart_mid_upload(base: Path, server: FerryServer) -> None:
    ferryd = _daemon(base, frag=256 << 10)
    try:
        src = _src(base, "r", 48 << 20)
        with Client(ferryd.socket) as c:
            job = _start_upload(c, "r", server.url("/r"), src)
            _wait_acked(ferryd, job.id)
            server.kill()  # kill -9 of the server, then the same port and state directory
            server.start()
            _transferred_after_outage(ferryd, job, timeout=300)
            assert job.complete() == "S_OK"
        assert _same(src, base / "root" / "r")
    finally:
        ferryd.stop()


def test_expired_session_starts_over(base: Path) -> None:
    server = FerryServer(base / "root", ["--session-timeout", "1"], state_dir=base / "st").start()
    ferryd = _daemon(base, frag=64 << 10)
    try:
        src = _src(base, "e", 3 << 20)
        with Client(ferryd.socket) as c:
            job = _start_upload(c, "e", server.url("/e"), src)
            _wait_acked(ferryd, job.id)
            job.suspend()
            time.sleep(2.5)  # the session expires on the server
            job.resume()
            body = wait_state(ferryd, job.id, "TRANSFERRED", "ERROR", timeout=120)
            assert body["state"] == "TRANSFERRED", (body["error"], ferryd.log())
            assert job.complete() == "S_OK"
        assert _same(src, base / "root" / "e")
    finally:
        ferryd.stop()
        server.stop()


def test_cancel_leaves_nothing(ferryd: Daemon, server: FerryServer, base: Path) -> None:
    src = _src(base, "c", 100_000)
    with Client(ferryd.socket) as c:
        job = _start_upload(c, "c", server.url("/c"), src)
        wait_state(ferryd, job.id, "TRANSFERRED")
        job.cancel()
    assert not (base / "root" / "c").exists()
    assert not any((base / "state").rglob("*.part*")), list((base / "state").rglob("*"))


def test_complete_twice_and_existing_destination(
    ferryd: Daemon, server: FerryServer, base: Path
) -> None:
    src = _src(base, "x", 1000)
    (base / "root" / "exists").write_bytes(b"old")
    with Client(ferryd.socket) as c:
        job = _start_upload(c, "x", server.url("/exists"), src)
        body = wait_state(ferryd, job.id, "ERROR", "TRANSFERRED")
        # ferry-server refuses to overwrite by default: 403 E_ACCESSDENIED, final.
        assert body["state"] == "ERROR", body
        assert body["error"]["context"] == "REMOTE_FILE"
        assert body["error"]["code"] == "E_ACCESSDENIED"
        with pytest.raises(FerryError) as exc:
            job.complete()
        assert exc.value.code == "BG_E_INVALID_STATE"
    assert (base / "root" / "exists").read_bytes() == b"old"


class Backend(AppServer):
    """A server application: the reply to an upload is its SHA-256 and size."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_post("/app", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        data = await request.read()
        return web.Response(body=f"{hashlib.sha256(data).hexdigest()} {len(data)}\n".encode())


@pytest.mark.parametrize("size", [0, 1, 5 * 1024, 3_000_000, BIG])
def test_upload_reply_with_a_real_back_end(base: Path, size: int) -> None:
    backend = Backend()
    backend.start()
    server = FerryServer(
        base / "root",
        ["--notify-url", f"http://127.0.0.1:{backend.port}/app", "--notify-type", "by-value"],
        state_dir=base / "st",
    ).start()
    ferryd = _daemon(base, frag=1 << 20)
    try:
        src = _src(base, "rep", size)
        digest = hashlib.sha256(src.read_bytes()).hexdigest()
        with Client(ferryd.socket) as c:
            job = _start_upload(c, "rep", server.url("/rep"), src, kind="upload-reply")
            body = wait_state(ferryd, job.id, "TRANSFERRED", "ERROR", timeout=600)
            assert body["state"] == "TRANSFERRED", (body["error"], ferryd.log(), server.log())
            expected = f"{digest} {size}\n".encode()
            assert job.reply_data() == expected
            assert body["reply"]["bytes_total"] == len(expected)
            assert job.complete() == "S_OK"
        assert (base / "src" / "rep.reply").read_bytes() == expected
        assert backend.calls == 1
    finally:
        ferryd.stop()
        server.stop()
        backend.stop()


def test_farm_host_then_fallback(base: Path) -> None:
    """Two ferry-server processes share a state directory; the first names the second in
    BITS-Host-Id. ferry sends the fragments to the second; when it dies, ferry falls back to
    the first after the fallback timeout, and the upload completes there."""
    pinned = FerryServer(base / "root", ["--host-id", "placeholder"], state_dir=base / "st")
    pinned.start()
    port = pinned.port
    pinned.stop()
    pinned = FerryServer(base / "root", ["--host-id", f"127.0.0.1:{port}"], state_dir=base / "st")
    pinned.port = port
    pinned.start()
    origin = FerryServer(
        base / "root",
        ["--host-id", f"127.0.0.1:{port}", "--host-id-fallback-timeout", "2"],
        state_dir=base / "st",
    ).start()
    ferryd = _daemon(base, frag=256 << 10)
    try:
        src = _src(base, "farm", 24 << 20)
        with Client(ferryd.socket) as c:
            job = _start_upload(c, "farm", origin.url("/farm"), src)
            _wait_acked(ferryd, job.id)
            pinned.kill()
            _transferred_after_outage(ferryd, job, timeout=120)
            assert job.complete() == "S_OK"
        assert _same(src, base / "root" / "farm")
        # ferryd went to the pinned host, and back to the origin once it was gone.
        assert f"host 127.0.0.1:{port} failed" in ferryd.log(100_000), ferryd.log()
    finally:
        ferryd.stop()
        origin.stop()
        pinned.stop()
