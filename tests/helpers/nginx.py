"""nginx as the real-world peer: a private instance on 127.0.0.1 and a free port, with its
configuration, pid file, logs and temporary directories in a temporary directory.

``/f/NAME`` serves ROOT/NAME as nginx serves static files (ETag, Last-Modified, ranges,
If-Range); ``/slow/NAME`` is the same file at ``rate`` bytes per second per connection
(``limit_rate``), so a test can act in the middle of a transfer; ``/slow-lm/NAME`` is that
without an ETag (Last-Modified is then the only validator). Every request is logged
with its Range and If-Range headers, its status and the body bytes sent; ``requests()``
parses that log.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

_CONF = """\
{user}
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
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
    keepalive_timeout 30;
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


class Nginx:
    def __init__(self, root: Path, workdir: Path, rate: int = 32 << 20) -> None:
        self.root = root
        self.dir = workdir
        self.rate = rate
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, attempts: int = 3) -> None:
        (self.dir / "tmp").mkdir(parents=True, exist_ok=True)
        for _ in range(attempts):
            self.port = _free_port()
            conf = self.dir / "nginx.conf"
            conf.write_text(
                _CONF.format(
                    user="user root;" if os.geteuid() == 0 else "",
                    dir=self.dir,
                    port=self.port,
                    root=self.root,
                    rate=self.rate,
                )
            )
            # -e: the error log nginx opens before it reads the configuration (>= 1.19.5).
            args = [NGINX, "-c", str(conf), "-p", str(self.dir), "-g", "daemon off;"]
            args += ["-e", str(self.dir / "error.log")]
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break  # the port was taken meanwhile, or a config error: see the log
                try:
                    socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                    return
                except OSError:
                    time.sleep(0.02)
            self.stop()
        raise RuntimeError(f"nginx did not start:\n{self.error_log()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # fast shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def url(self, name: str, slow: bool = False, route: str | None = None) -> str:
        """The URL of ROOT/NAME at ``route`` (f, slow, slow-lm); ``slow``: route slow."""
        return f"http://127.0.0.1:{self.port}/{route or ('slow' if slow else 'f')}/{name}"

    def requests(self) -> list[Logged]:
        try:
            text = (self.dir / "access.log").read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            uri, rng, if_range, status, sent = line.split("\t")
            out.append(
                Logged(
                    uri,
                    rng or None,
                    if_range or None,
                    int(status),
                    int(sent),
                )
            )
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

    def error_log(self) -> str:
        try:
            return (self.dir / "error.log").read_text()[-4000:]
        except OSError:
            return ""
