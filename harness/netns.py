"""Two network namespaces joined by a veth pair, for the bandwidth and offline tests and the
bandwidth benchmark (root only): ``client`` (ferryd, curl) and ``server`` (nginx), each end
with an address of a private /30 that exists only on that pair, optionally shaped with
``tc tbf`` on the server's egress (the download direction). Names are unique per instance
and everything is deleted on ``close`` (a context manager), even after a failure.

This kernel has the tbf, htb and pfifo qdiscs but neither netem nor fq, and no dummy links:
everything here is veth + tbf.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from harness import nginx as nginx_mod

IP = shutil.which("ip") or "/usr/sbin/ip"
TC = shutil.which("tc") or "/usr/sbin/tc"


def missing() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    if not os.access(IP, os.X_OK) or not os.access(TC, os.X_OK):
        return "iproute2 (ip, tc) is not installed"
    if not nginx_mod.available():
        return "nginx is not installed"
    return None


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {proc.stderr.strip()}")
    return proc


class NetnsPair:
    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.client = f"fybwc-{tag}"
        self.server = f"fybws-{tag}"
        self.client_dev = f"fyc{tag}"
        self.server_dev = f"fys{tag}"
        # A random /30 of 10.200.0.0/16 (only on this pair, inside these namespaces).
        n = secrets.randbelow(1 << 14) * 4
        base = f"10.200.{n >> 8}.{n & 0xFF}"
        prefix = base.rsplit(".", 1)[0]
        last = n & 0xFF
        self.client_addr = f"{prefix}.{last + 1}"
        self.server_addr = f"{prefix}.{last + 2}"
        self._made: list[str] = []

    def __enter__(self) -> Self:
        try:
            for ns in (self.client, self.server):
                _run(IP, "netns", "add", ns)
                self._made.append(ns)
                _run(IP, "-n", ns, "link", "set", "lo", "up")
            _run(IP, "-n", self.client, "link", "add", self.client_dev, "type", "veth",
                 "peer", "name", self.server_dev, "netns", self.server)  # fmt: skip
            _run(IP, "-n", self.client, "addr", "add", f"{self.client_addr}/30",
                 "dev", self.client_dev)  # fmt: skip
            _run(IP, "-n", self.server, "addr", "add", f"{self.server_addr}/30",
                 "dev", self.server_dev)  # fmt: skip
            self.link_up()
            _run(IP, "-n", self.server, "link", "set", self.server_dev, "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for ns in reversed(self._made):
            _run(IP, "netns", "del", ns, check=False)
        self._made.clear()

    # ---- running things inside -------------------------------------------------------

    def prefix(self, ns: str) -> list[str]:
        return [IP, "netns", "exec", ns]

    def link_down(self) -> None:
        _run(IP, "-n", self.client, "link", "set", self.client_dev, "down")

    def link_up(self) -> None:
        _run(IP, "-n", self.client, "link", "set", self.client_dev, "up")

    def shape(self, rate: str = "40mbit", burst: str = "64kb", latency: str = "400ms") -> None:
        """tbf on the server's egress: what the client downloads goes through it; a deep
        queue (``latency``) so a saturated link shows queueing delay."""
        _run(TC, "-n", self.server, "qdisc", "replace", "dev", self.server_dev, "root", "tbf",
             "rate", rate, "burst", burst, "latency", latency)  # fmt: skip

    def can_connect(self, port: int) -> bool:
        probe = (
            "import socket,sys\n"
            f"s=socket.socket(); s.settimeout(0.5)\n"
            f"sys.exit(s.connect_ex(({self.server_addr!r},{port})))\n"
        )
        proc = subprocess.run(
            [*self.prefix(self.client), "/usr/bin/python3", "-c", probe],
            capture_output=True, timeout=30,
        )  # fmt: skip
        return proc.returncode == 0


class NetnsNginx(nginx_mod.Nginx):
    """The harness's nginx, run in the server namespace, listening on its veth address."""

    def __init__(self, pair: NetnsPair, root: Path, workdir: Path, **kw: object) -> None:
        super().__init__(root, workdir, **kw)  # type: ignore[arg-type]
        self.pair = pair

    def start(self, attempts: int = 5) -> Self:
        (self.dir / "tmp").mkdir(parents=True, exist_ok=True)
        self.port = 8000 + secrets.randbelow(20000)  # the namespace is ours alone
        conf = self.dir / "nginx.conf"
        text = nginx_mod._CONF.format(
            user="user root;", dir=self.dir, port=self.port, root=self.root, rate=self.rate
        ).replace("listen 127.0.0.1:", f"listen {self.pair.server_addr}:")
        conf.write_text(text)
        args: Sequence[str] = [
            *self.pair.prefix(self.pair.server), self.binary, "-c", str(conf), "-p",
            str(self.dir), "-g", "daemon off;", "-e", str(self.dir / "error.log"),
        ]  # fmt: skip
        with open(self.dir / "nginx.stderr", "ab") as err:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self.pair.can_connect(self.port):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"nginx did not start in {self.pair.server}:\n{self.error_log()}")

    def url(self, name: str, slow: bool = False, route: str | None = None) -> str:
        where = route or ("slow" if slow else "f")
        return f"http://{self.pair.server_addr}:{self.port}/{where}/{name}"

