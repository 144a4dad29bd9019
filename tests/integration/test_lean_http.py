"""The lean HTTP/1.1 path (transfer/lean.py, issue #15) end to end through a real ferryd:
plain ``http://`` GETs on ferryd's own kept-alive sockets. Every test checks in ferryd's
debug log that the lean path did the work (its ``lean http:`` lines), so a path that is
silently bypassed fails here, and checks what the job and the disk show: against nginx
(many small files over few connections, resume with Range + If-Range), against the fault
server (drops mid-body, bodies longer or shorter than announced, 200 instead of 206, changed
validators, chunked bodies, redirects, which go through aiohttp) and against a raw HTTP/1.1
server that ends kept-alive connections (``Connection: close``, or closing a connection
when its next request arrives), and that ``FERRY_LEAN_HTTP=0`` turns it off."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import nginx
from harness.aio import ServerThread
from harness.faultserver import Drop, FaultServer
from harness.ferryd import Daemon
from harness.wait import wait_state, wait_until

from tests.helpers.faults import cancel_leftovers, module_daemon, serve
from tests.helpers.jobs import (
    act,
    add,
    assert_error,
    cancel_all,
    create,
    files,
    get,
    only_temp,
    temps,
)

KiB, MiB = 1 << 10, 1 << 20


@pytest.fixture(scope="module")
def d() -> Iterator[Daemon]:
    with module_daemon("fy-lean-", lambda _: "[daemon]\nstall_timeout = 2.0\n") as daemon:
        yield daemon


@pytest.fixture(autouse=True)
def _cancel_leftovers(d: Daemon) -> Iterator[None]:
    yield
    cancel_leftovers(d)


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerThread[FaultServer]]:
    with ServerThread(FaultServer()) as thread:
        yield thread


def log_text(d: Daemon) -> str:
    return d.log_path.read_text(errors="replace")


class LogMark:
    """ferryd's log lines written after this point."""

    def __init__(self, d: Daemon) -> None:
        self.d = d
        self.at = len(log_text(d))

    def lines(self, needle: str) -> list[str]:
        return [ln for ln in log_text(self.d)[self.at :].splitlines() if needle in ln]


def transferred(d: Daemon, job: str) -> dict[str, Any]:
    j = wait_state(d, job, "TRANSFERRED", "ERROR", "TRANSIENT_ERROR", timeout=120)
    assert j["state"] == "TRANSFERRED", j
    return j


def start(d: Daemon, name: str, url: str, local: Path, **props: object) -> str:
    """A new job with one file (``url`` to ``local``), resumed."""
    job = create(d, name, **props)
    add(d, job, url, local)
    act(d, job, "resume")
    return job


def add_files(d: Daemon, job: str, urls: dict[str, Path]) -> None:
    """Add many files to ``job`` in one request: remote URL to local path."""
    status, body = d.call("POST", f"/v1/jobs/{job}/files", {"files": [
        {"remote_name": url, "local_name": str(local)} for url, local in urls.items()
    ]})  # fmt: skip
    assert status == 200, body


def resume_to_the_end(d: Daemon, job: str, local: Path, data: bytes) -> None:
    """Resume ``job``; it transfers, completes with S_OK and ``local`` holds ``data``."""
    act(d, job, "resume")
    transferred(d, job)
    assert act(d, job, "complete")["result"]["code"] == "S_OK"
    assert local.read_bytes() == data


def completes_all(d: Daemon, job: str, dest: Path, blobs: dict[str, bytes]) -> dict[str, Any]:
    """``job`` (resumed, one file a blob, named as in ``blobs`` under ``dest``) transfers and
    completes with every blob in place and no temporary file left; returns the job as it
    was when TRANSFERRED."""
    j = transferred(d, job)
    assert act(d, job, "complete")["result"]["code"] == "S_OK"
    for name, data in blobs.items():
        assert (dest / name).read_bytes() == data, name
    assert temps(dest) == []
    return j


# ---- nginx: many small files, few connections ---------------------------------------------


@pytest.mark.skipif(not nginx.available(), reason=f"nginx not found ({nginx.NGINX})")
def test_small_files_from_nginx_share_kept_alive_connections(
    d: Daemon, tmp_path: Path, dest: Path
) -> None:
    www = tmp_path / "www"
    www.mkdir()
    blobs = {f"s{i:03d}.bin": os.urandom(64 * KiB + i) for i in range(120)}
    blobs["big.bin"] = os.urandom(5 * MiB)  # a large one among them (no overlap beside it)
    for name, data in blobs.items():
        (www / name).write_bytes(data)
    web = nginx.Nginx(www, tmp_path / "nginx").start()
    try:
        mark = LogMark(d)
        job = create(d, "many")
        add_files(d, job, {web.url(n): dest / n for n in blobs})
        act(d, job, "resume")
        j = completes_all(d, job, dest, blobs)
        assert j["progress"]["bytes_transferred"] == sum(len(b) for b in blobs.values())
        assert j["progress"]["files_transferred"] == len(blobs)
        connected = mark.lines("lean http: connected to")
        assert 1 <= len(connected) <= 16, "kept-alive connections carry many files"
        assert len(mark.lines("lean http: GET")) == len(blobs)
        assert mark.lines("goes through aiohttp") == []
        reqs = web.requests()
        assert len(reqs) == len(blobs) and {r.status for r in reqs} == {200}
        assert all(r.range is None for r in reqs)
    finally:
        web.stop()


@pytest.mark.skipif(not nginx.available(), reason=f"nginx not found ({nginx.NGINX})")
def test_nginx_resume_sends_range_and_if_range(d: Daemon, tmp_path: Path, dest: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    data = os.urandom(48 * MiB)
    (www / "r.bin").write_bytes(data)
    web = nginx.Nginx(www, tmp_path / "nginx", rate=16 * MiB).start()
    try:
        mark = LogMark(d)
        job = create(d, "resume")
        add(d, job, web.url("r.bin", slow=True), dest / "r.bin")
        act(d, job, "resume")
        wait_state(d, job, "TRANSFERRING", timeout=60)
        wait_until(lambda: get(d, job)["progress"]["bytes_transferred"] >= 8 * MiB, "8 MiB")
        done = act(d, job, "suspend")["job"]["progress"]["bytes_transferred"]
        assert 0 < done < len(data)
        act(d, job, "resume")
        transferred(d, job)
        first, second = web.wait_requests(0, 2)
        assert first.range is None
        assert (second.range, second.status) == (f"bytes={done}-", 206)
        assert second.if_range and second.body_bytes == len(data) - done
        act(d, job, "complete")
        assert (dest / "r.bin").read_bytes() == data
        assert mark.lines(f"lean http: GET {web.url('r.bin', slow=True)} from byte {done}")
    finally:
        web.stop()


# ---- the fault server ---------------------------------------------------------------------


def test_drop_mid_body_then_resume_with_range(
    d: Daemon, srv: ServerThread[FaultServer], dest: Path
) -> None:
    data = serve(srv, "ldrop", 2 * MiB, Drop(700_000))
    url, local = srv.server.url("/f/ldrop"), dest / "ldrop.bin"
    mark = LogMark(d)
    job = start(d, "drop", url, local)
    j = wait_state(d, job, "TRANSIENT_ERROR", "ERROR", "TRANSFERRED")
    assert_error(
        j, "TRANSIENT_ERROR BG_E_CONNECTION_CLOSED 0x8020002E GENERAL_TRANSPORT", url, local
    )
    (f,) = files(d, job)
    kept = f["bytes_transferred"]
    assert 0 < kept <= 700_000
    assert only_temp(dest).read_bytes() == data[:kept]
    resume_to_the_end(d, job, local, data)
    second = srv.server.requests_for("ldrop")[-1]
    assert second.range == f"bytes={kept}-"
    assert second.headers.get("If-Range") == srv.server.files["ldrop"].etag
    assert len(mark.lines(f"lean http: GET {url} from byte")) == 2


def test_200_instead_of_206_starts_over(
    d: Daemon, srv: ServerThread[FaultServer], dest: Path
) -> None:
    data = serve(srv, "noranges", 1 * MiB, Drop(400_000), ranges=False)
    url, local = srv.server.url("/f/noranges"), dest / "nr.bin"
    mark = LogMark(d)
    job = start(d, "noranges", url, local)
    wait_state(d, job, "TRANSIENT_ERROR", "ERROR", "TRANSFERRED")
    assert files(d, job)[0]["bytes_transferred"] > 0
    resume_to_the_end(d, job, local, data)
    assert srv.server.requests_for("noranges")[-1].range is not None  # asked; got a 200
    assert len(mark.lines(f"lean http: GET {url} from byte")) == 2


def test_changed_validator_is_remote_file_changed(
    d: Daemon, srv: ServerThread[FaultServer], dest: Path
) -> None:
    serve(srv, "changing", 1 * MiB, Drop(300_000))
    url, local = srv.server.url("/f/changing"), dest / "ch.bin"
    job = start(d, "changing", url, local)
    wait_state(d, job, "TRANSIENT_ERROR", "ERROR", "TRANSFERRED")
    new = serve(srv, "changing", 1 * MiB)  # same size, other bytes, another ETag
    mark = LogMark(d)
    act(d, job, "resume")
    j = wait_state(d, job, "ERROR", "TRANSFERRED")
    assert_error(j, "ERROR BG_E_REMOTE_FILE_CHANGED 0x80200073 REMOTE_FILE", url, local)
    assert only_temp(dest).stat().st_size == 0
    resume_to_the_end(d, job, local, new)
    assert len(mark.lines(f"lean http: GET {url} from byte")) == 2


def test_body_longer_than_announced_is_invalid(
    d: Daemon, srv: ServerThread[FaultServer], dest: Path
) -> None:
    data = serve(srv, "llong", 20_000)
    url, local = srv.server.url("/longer/llong?extra=64"), dest / "long.bin"
    mark = LogMark(d)
    job = start(d, "long", url, local)
    j = wait_state(d, job, "ERROR", "TRANSIENT_ERROR", "TRANSFERRED")
    assert_error(j, "ERROR BG_E_INVALID_SERVER_RESPONSE 0x8020001B REMOTE_FILE", url, local)
    (f,) = files(d, job)
    assert f["completed"] is False and f["bytes_transferred"] < len(data)
    assert mark.lines(f"lean http: GET {url} from byte 0")


def test_body_shorter_than_announced_is_never_a_file(
    d: Daemon, srv: ServerThread[FaultServer], dest: Path
) -> None:
    data = serve(srv, "lshort", 300_000)
    url, local = srv.server.url("/drop/lshort?after=100000"), dest / "short.bin"
    mark = LogMark(d)
    job = start(d, "short", url, local)
    j = wait_state(d, job, "TRANSIENT_ERROR", "ERROR", "TRANSFERRED")
    assert_error(j, "TRANSIENT_ERROR BG_E_CONNECTION_CLOSED 0x8020002E GENERAL_TRANSPORT")
    (f,) = files(d, job)
    assert f["completed"] is False and f["bytes_transferred"] <= 100_000
    assert only_temp(dest).read_bytes() == data[: f["bytes_transferred"]]
    assert mark.lines(f"lean http: GET {url} from byte 0")


def test_chunked_body_missing_size_then_dynamic_content(
    d: Daemon, srv: ServerThread[FaultServer], dest: Path
) -> None:
    data = serve(srv, "lchunked", 700_000)
    url, local = srv.server.url("/nolength/lchunked"), dest / "chunked.bin"
    mark = LogMark(d)
    job = start(d, "chunked", url, local)
    j = wait_state(d, job, "ERROR", "TRANSFERRED")
    assert_error(j, "ERROR BG_E_MISSING_FILE_SIZE 0x80200011 REMOTE_FILE", url, local)
    status, _ = d.call("PATCH", f"/v1/jobs/{job}", {"dynamic_content": True})
    assert status == 200
    resume_to_the_end(d, job, local, data)
    assert len(mark.lines(f"lean http: GET {url} from byte 0")) == 2


def test_redirect_goes_through_aiohttp(
    d: Daemon, srv: ServerThread[FaultServer], dest: Path
) -> None:
    data = serve(srv, "lredir", 200_000)
    url, local = srv.server.url("/redirect/2/lredir"), dest / "redir.bin"
    mark = LogMark(d)
    job = start(d, "redirect", url, local)
    transferred(d, job)
    assert files(d, job)[0]["final_url"] == srv.server.url("/f/lredir")
    act(d, job, "complete")
    assert local.read_bytes() == data
    assert mark.lines("redirects; aiohttp follows it")


def test_status_errors_keep_their_codes(
    d: Daemon, srv: ServerThread[FaultServer], dest: Path
) -> None:
    for path, expected in [
        ("/status/404", "ERROR BG_E_HTTP_ERROR_404 0x80190194 REMOTE_FILE"),
        ("/status/503?retry_after=120", "TRANSIENT_ERROR BG_E_HTTP_ERROR_503 0x801901F7 "
                                        "REMOTE_FILE"),
    ]:  # fmt: skip
        url = srv.server.url(path)
        mark = LogMark(d)
        job = start(d, "status", url, dest / "x.bin")
        j = wait_state(d, job, "ERROR", "TRANSIENT_ERROR", "TRANSFERRED")
        assert_error(j, expected, url, dest / "x.bin")
        assert mark.lines(f"lean http: GET {url} from byte 0")
        cancel_all(d, [job])


# ---- a raw HTTP/1.1 server that ends kept-alive connections -------------------------------


class RawServer:
    """Serves ``/NAME`` with Content-Length over HTTP/1.1. ``close_header``: every answer
    says ``Connection: close`` and the connection is closed after it; ``die_on``: a
    connection is closed, unanswered, when its ``die_on``-th request arrives (a server whose
    keep-alive timeout fired just as the client reused the connection)."""

    def __init__(
        self,
        files: dict[str, bytes],
        *,
        close_header: bool = False,
        die_on: int | None = None,
        chunked: bool = False,
        status_line: str = "HTTP/1.1 200 OK",
    ) -> None:
        self.files = files
        self.chunked = chunked  # a 100 Continue first, then chunks with extensions, trailers
        self.status_line = status_line
        self.close_header = close_header
        self.die_on = die_on
        self.connections = 0
        self.answered = 0
        self.killed = 0
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf, count = b"", 0
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    more = conn.recv(65536)
                    if not more:
                        return
                    buf += more
                head, _, buf = buf.partition(b"\r\n\r\n")
                count += 1
                if self.die_on is not None and count >= self.die_on:
                    with self.lock:
                        self.killed += 1
                    return
                name = head.split(b" ")[1].decode().lstrip("/")
                data = self.files[name]
                lines = [self.status_line, f'ETag: "{name}-{len(data)}"']
                if self.chunked:
                    lines.append("Transfer-Encoding: chunked")
                    body = b"".join(
                        b"%x;ext=1\r\n%s\r\n" % (len(data[i : i + 7000]), data[i : i + 7000])
                        for i in range(0, len(data), 7000)
                    ) + b"0\r\nX-Trailer: yes\r\n\r\n"
                    conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                else:
                    lines.append(f"Content-Length: {len(data)}")
                    body = data
                if self.close_header:
                    lines.append("Connection: close")
                conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
                with self.lock:
                    self.answered += 1
                if self.close_header:
                    return


def _raw_job(d: Daemon, server: RawServer, dest: Path, **props: object) -> str:
    job = create(d, "raw", **props)
    add_files(d, job, {server.url(n): dest / n for n in server.files})
    act(d, job, "resume")
    return job


def test_connection_that_dies_when_reused_is_retried_on_a_fresh_one(
    d: Daemon, dest: Path
) -> None:
    blobs = {f"k{i:02d}": os.urandom(32 * KiB + i) for i in range(24)}
    server = RawServer(blobs, die_on=2)
    try:
        mark = LogMark(d)
        job = _raw_job(d, server, dest)
        j = completes_all(d, job, dest, blobs)
        assert j["error_count"] == 0, j
        assert server.killed >= 1, "some kept-alive connection was reused and died"
        assert len(mark.lines("was gone (")) == server.killed
        assert server.answered == len(blobs)
    finally:
        server.close()


def test_connection_close_is_honoured(d: Daemon, dest: Path) -> None:
    blobs = {f"c{i:02d}": os.urandom(16 * KiB + i) for i in range(16)}
    server = RawServer(blobs, close_header=True)
    try:
        mark = LogMark(d)
        job = _raw_job(d, server, dest)
        j = completes_all(d, job, dest, blobs)
        assert j["error_count"] == 0, j
        assert server.connections == len(blobs), "no connection reused after a close"
        assert len(mark.lines("lean http: connected to")) == len(blobs)
        assert mark.lines("was gone (") == []
    finally:
        server.close()


def test_interim_answer_and_chunks_with_extensions_and_trailers(d: Daemon, dest: Path) -> None:
    blobs = {f"t{i:02d}": os.urandom(50_000 + i) for i in range(6)}
    server = RawServer(blobs, chunked=True)
    try:
        mark = LogMark(d)
        job = _raw_job(d, server, dest, dynamic_content=True)
        completes_all(d, job, dest, blobs)
        assert len(mark.lines("lean http: GET")) == len(blobs)
        assert server.connections < len(blobs), "a chunked answer leaves the connection usable"
    finally:
        server.close()


def test_malformed_status_line_is_invalid(d: Daemon, dest: Path) -> None:
    server = RawServer({"bad": b"x" * 100}, status_line="HTTP/1.1 OK 200")
    try:
        url = server.url("bad")
        job = start(d, "bad", url, dest / "bad")
        j = wait_state(d, job, "ERROR", "TRANSIENT_ERROR", "TRANSFERRED")
        assert_error(j, "ERROR BG_E_INVALID_SERVER_RESPONSE 0x8020001B REMOTE_FILE", url,
                     dest / "bad")  # fmt: skip
    finally:
        server.close()


# ---- the switch ---------------------------------------------------------------------------


def test_switched_off_everything_goes_through_aiohttp(
    srv: ServerThread[FaultServer], tmp_path: Path, dest: Path
) -> None:
    data = serve(srv, "loff", 300_000)
    off = Daemon(tmp_path / "off", env={"FERRY_LEAN_HTTP": "0"}, log_level="debug")
    off.start()
    try:
        job = start(off, "off", srv.server.url("/f/loff"), dest / "off.bin")
        completes_all(off, job, dest, {"off.bin": data})
        assert "lean http:" not in log_text(off)
    finally:
        assert off.stop() == 0


# ---- tmpfs: checkpoints and the last fsync on the loop thread ------------------------------


@pytest.fixture
def shm_dest() -> Iterator[Path]:
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm (tmpfs) on this machine")
    path = Path(tempfile.mkdtemp(prefix="fy-lean-", dir="/dev/shm"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_sync_is_free_only_on_memory_file_systems(shm_dest: Path, tmp_path: Path) -> None:
    from ferry.transfer.sink import sync_is_free

    fd = os.open(shm_dest / "x", os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        assert sync_is_free(fd)
    finally:
        os.close(fd)
    fd = os.open("/proc/self/mountinfo", os.O_RDONLY)  # proc: not a memory file system
    try:
        assert not sync_is_free(fd)
    finally:
        os.close(fd)


def test_tmpfs_destination_drop_resume_and_many_files(
    d: Daemon, srv: ServerThread[FaultServer], shm_dest: Path
) -> None:
    data = serve(srv, "lshm", 3 * MiB, Drop(1_500_000))
    url, local = srv.server.url("/f/lshm"), shm_dest / "shm.bin"
    job = start(d, "shm", url, local)
    j = wait_state(d, job, "TRANSIENT_ERROR", "ERROR", "TRANSFERRED")
    assert_error(
        j, "TRANSIENT_ERROR BG_E_CONNECTION_CLOSED 0x8020002E GENERAL_TRANSPORT", url, local
    )
    kept = files(d, job)[0]["bytes_transferred"]
    assert 0 < kept <= 1_500_000, "what arrived was synced and reported"
    assert only_temp(shm_dest).read_bytes() == data[:kept]
    resume_to_the_end(d, job, local, data)

    blobs = {f"m{i:02d}": serve(srv, f"lshm{i}", 40 * KiB + i) for i in range(40)}
    job = create(d, "shm-many")
    add_files(d, job, {srv.server.url(f"/f/lshm{i}"): shm_dest / n for i, n in enumerate(blobs)})
    act(d, job, "resume")
    completes_all(d, job, shm_dest, blobs)
