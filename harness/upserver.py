"""A real ``ferry-server`` in a subprocess (start, stop, ``kill -9``, restart on the same
state directory, its CPU time), and a raw BITS client: one HTTP/1.1 request written by hand
on a socket, so tests see exactly what the server answers (no BITS client in between).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from harness.env import child_env
from harness.process import stop_process

PROTOCOL = "{7df0354d-249b-430f-820d-3d2a9bef4931}"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class FerryServer:
    """``ferry-server --bind 127.0.0.1:PORT --root ROOT ...``: the first start picks a free
    port, restarts reuse it (so a client's URLs stay valid)."""

    def __init__(
        self, root: Path, args: Sequence[str] = (), *, state_dir: Path | None = None
    ) -> None:
        self.root = root
        self.args = list(args)
        self.state_dir = state_dir
        self.port = 0
        self.scheme = "http"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = root.parent / f"ferry-server-{id(self)}.log"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "ferry.server.main", "--bind", f"127.0.0.1:{self.port}"]
        cmd += ["--root", str(self.root), "-v"]
        if self.state_dir is not None:
            cmd += ["--state-dir", str(self.state_dir)]
        return cmd + self.args

    def start(self, timeout: float = 60) -> Self:
        out = open(self._log, "ab")  # noqa: SIM115 - the child keeps it
        with out:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=out,
                env=child_env(),
            )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = re.match(rb"listening on (https?)://[^:]+:(\d+)/", line)
            if m:
                self.scheme = m.group(1).decode()
                self.port = int(m.group(2))
                return self
        self.kill()
        raise RuntimeError(f"ferry-server did not start ({line!r}):\n{self.log()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self._close()
        return code

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()
            self._close()

    def _close(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def cpu_seconds(self) -> float:
        """User + system CPU time of the running server."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def log(self, size: int = 8000) -> str:
        try:
            return self._log.read_text(errors="replace")[-size:]
        except FileNotFoundError:
            return ""

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case (a repeated header: the last one)
    body: bytes
    raw_head: str

    def h(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def raw_request(
    port: int,
    method: str,
    path: str,
    headers: Mapping[str, str] | Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    host: str = "127.0.0.1",
    content_length: bool = True,
    tls: ssl.SSLContext | None = None,
    timeout: float = 60,
    sock: socket.socket | None = None,
) -> Answer:
    """Send one request exactly as given (``Content-Length`` added unless present or
    ``content_length`` is false) and read the answer (``Content-Length`` bodies only)."""
    items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    names = {k.lower() for k, _ in items}
    if content_length and "content-length" not in names:
        items.append(("Content-Length", str(len(body))))
    if "host" not in names:
        items.insert(0, ("Host", f"{host}:{port}"))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in items)
    own = sock is None
    s = sock or socket.create_connection((host, port), timeout)
    if tls is not None and own:
        s = tls.wrap_socket(s, server_hostname=host)
    try:
        s.sendall(head.encode("latin-1") + b"\r\n" + body)
        return read_answer(s, method)
    finally:
        if own:
            s.close()


def read_answer(s: socket.socket, method: str = "BITS_POST", *, final: bool = False) -> Answer:
    """The next answer on ``s``; with ``final``, interim 1xx answers (100 Continue) are
    read past and the final one returned."""
    rest = b""
    while True:
        while b"\r\n\r\n" not in rest:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed before an answer: {rest[:200]!r}")
            rest += chunk
        head, rest = rest.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs: dict[str, str] = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        if not (final and 100 <= status < 200):
            break
    length = 0 if method == "HEAD" else int(hdrs.get("content-length", "0"))
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    return Answer(status, hdrs, rest[:length], head.decode("latin-1"))


def bits(
    port: int,
    path: str,
    packet: str,
    session: str | None = None,
    body: bytes = b"",
    extra: Mapping[str, str] | None = None,
    **kw: object,
) -> Answer:
    """One BITS_POST packet."""
    h = {"BITS-Packet-Type": packet}
    if session is not None:
        h["BITS-Session-Id"] = session
    if packet.lower() == "create-session":
        h["BITS-Supported-Protocols"] = PROTOCOL
    h.update(extra or {})
    return raw_request(port, "BITS_POST", path, h, body, **kw)  # type: ignore[arg-type]


def create(port: int, path: str, **kw: object) -> str:
    a = bits(port, path, "Create-Session", **kw)  # type: ignore[arg-type]
    assert a.status == 200, (a.status, a.headers)
    sid = a.h("BITS-Session-Id")
    assert sid
    return sid


def fragment(
    port: int, path: str, session: str, data: bytes, start: int, total: int, **kw: object
) -> Answer:
    rng = f"bytes {start}-{start + len(data) - 1}/{total}" if data else f"bytes */{total}"
    return bits(
        port,
        path,
        "Fragment",
        session,
        data,
        extra={"Content-Range": rng},
        **kw,  # type: ignore[arg-type]
    )


def upload(port: int, path: str, data: bytes, chunk: int = 1 << 20) -> str:
    """A whole upload (create, fragments, close); returns the session id."""
    sid = create(port, path)
    off = 0
    while off < len(data) or off == 0:
        a = fragment(port, path, sid, data[off : off + chunk], off, len(data))
        assert a.status == 200, (a.status, a.headers)
        off = int(a.h("BITS-Received-Content-Range") or 0)
        if not data:
            break
    a = bits(port, path, "Close-Session", sid)
    assert a.status == 200, (a.status, a.headers)
    return sid


# -- nginx in front (the configuration docs/uploads.md documents) ----------------------------

NGINX_FRONT = """\
{user}
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    upstream ferry_server {{
        server 127.0.0.1:{upstream};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        client_max_body_size 0;
        location / {{
            proxy_pass http://ferry_server;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
        }}
    }}
}}
"""


class NginxFront:
    """nginx terminating TLS on a free loopback port and proxying everything (BITS_POST
    included) to a ferry-server on ``upstream``."""

    def __init__(self, workdir: Path, upstream: int, cert: Path, key: Path) -> None:
        self.dir = workdir
        self.upstream = upstream
        self.cert = cert
        self.key = key
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, attempts: int = 5) -> Self:
        from harness.nginx import NGINX, launch

        started = launch(
            NGINX,
            self.dir,
            lambda port: NGINX_FRONT.format(
                user="user root;" if os.geteuid() == 0 else "",
                dir=self.dir,
                port=port,
                upstream=self.upstream,
                cert=self.cert,
                key=self.key,
            ),
            attempts,
        )
        if started is not None:
            self.proc, self.port = started
            return self
        raise RuntimeError(f"nginx did not start:\n{self.error_log()}")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def error_log(self) -> str:
        text = ""
        for name in ("nginx.stderr", "error.log"):
            with contextlib.suppress(OSError):
                text += (self.dir / name).read_text(errors="replace")[-4000:]
        return text
