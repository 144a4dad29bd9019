"""nginx as the real-world peer: Debian's nginx on 127.0.0.1 and a free port, in the
foreground (our child: it dies with the signal we send), with its configuration, pid file,
logs and temporary directories in a directory of its own.

Routes, all serving the files under ``root`` as nginx serves static files (ETag,
Last-Modified, ranges, If-Range):

* ``/f/NAME`` — at full speed;
* ``/slow/NAME`` — at ``rate`` bytes per second per connection (``limit_rate``), so a test
  can act in the middle of a transfer and the torture run can kill ferryd mid-file;
* ``/slow-lm/NAME`` — that without an ETag (Last-Modified is then the only validator).

Every request is logged with its Range and If-Range headers, its status and the body bytes
sent: ``requests()`` parses that log, ``bytes_served()`` sums it per file.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from harness.env import which
from harness.process import stop_process, wait_for_port

NGINX = which("nginx") or "/usr/sbin/nginx"

_CONF = """\
{user}
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format ferry escape=none '$request_uri\\t$http_range\\t$http_if_range'
                                 '\\t$status\\t$body_bytes_sent';
    access_log {dir}/access.log ferry;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    server {{
        listen 127.0.0.1:{port};
        location /f/ {{ alias {root}/; }}
        location /slow/ {{ alias {root}/; limit_rate {rate}; }}
        location /slow-lm/ {{ alias {root}/; limit_rate {rate}; etag off; }}
    }}
}}
"""


@dataclass(frozen=True)
class Logged:
    """One request, from the access log (written when the request ends)."""

    uri: str
    range: str | None
    if_range: str | None
    status: int
    body_bytes: int


def available() -> bool:
    return os.access(NGINX, os.X_OK)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])



def launch(
    binary: str, workdir: Path, render: Callable[[int], str], attempts: int = 5
) -> tuple[subprocess.Popen[bytes], int] | None:
    """Run nginx in the foreground from ``workdir`` with the configuration ``render(port)``
    on a free port (another, if that one was taken meanwhile: a config error shows in
    ``workdir``'s error.log / nginx.stderr); (process, port) once it accepts, else None."""
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    for _ in range(attempts):
        port = _free_port()
        conf = workdir / "nginx.conf"
        conf.write_text(render(port))
        # -e: the error log nginx opens before it reads the configuration (>= 1.19.5).
        args = [binary, "-c", str(conf), "-p", str(workdir), "-g", "daemon off;"]
        args += ["-e", str(workdir / "error.log")]
        with open(workdir / "nginx.stderr", "ab") as err:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        if wait_for_port(proc, port):
            return proc, port
        stop_process(proc)
    return None

class Nginx:
    def __init__(
        self, root: Path, workdir: Path, *, rate: int = 32 << 20, binary: str | None = None
    ) -> None:
        self.root = root
        self.dir = workdir
        self.rate = rate
        self.binary = binary or NGINX
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def access_log(self) -> Path:
        return self.dir / "access.log"

    def start(self, attempts: int = 5) -> Self:
        """Start on a free port (another, if that one was taken meanwhile) and wait until it
        accepts connections."""
        started = launch(
            self.binary,
            self.dir,
            lambda port: _CONF.format(
                user="user root;" if os.geteuid() == 0 else "",
                dir=self.dir,
                port=port,
                root=self.root,
                rate=self.rate,
            ),
            attempts,
        )
        if started is not None:
            self.proc, self.port = started
            return self
        raise RuntimeError(f"nginx did not start:\n{self.error_log()}")

    def stop(self) -> None:
        stop_process(self.proc)  # SIGTERM: nginx's fast shutdown
        self.proc = None

    def url(self, name: str, slow: bool = False, route: str | None = None) -> str:
        """The URL of ROOT/NAME at ``route`` (f, slow, slow-lm); ``slow``: route slow."""
        return f"http://127.0.0.1:{self.port}/{route or ('slow' if slow else 'f')}/{name}"

    def requests(self) -> list[Logged]:
        try:
            text = self.access_log.read_text(errors="replace")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            uri, rng, if_range, status, sent = line.split("\t")
            out.append(Logged(uri, rng or None, if_range or None, int(status), int(sent)))
        return out

    def wait_requests(self, since: int, count: int, timeout: float = 10) -> list[Logged]:
        """The requests logged after the first ``since``, once there are ``count`` of them
        (nginx logs a request when it ends, which may be just after the client is done)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.requests()[since:]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    def bytes_served(self) -> dict[str, int]:
        """Body bytes of 200/206 answers per file NAME (relative to ROOT), whatever the
        route. File bytes only: the body of a 416 or of an error page is not the file's."""
        totals: dict[str, int] = {}
        for r in self.requests():
            if r.status in (200, 206):
                name = r.uri.split("?", 1)[0].split("/", 2)[-1]
                totals[name] = totals.get(name, 0) + r.body_bytes
        return totals

    def error_log(self) -> str:
        text = ""
        for name in ("nginx.stderr", "error.log"):
            with contextlib.suppress(OSError):
                text += (self.dir / name).read_text(errors="replace")[-4000:]
        return text
