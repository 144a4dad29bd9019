"""What the benchmarks and the torture run share: finding the tools, nginx on loopback with
a private configuration, a user-mode (or system-mode) ferryd on a private socket and state
directory, raw API calls over the Unix socket, and reading a process's CPU time and memory
from /proc.

Nothing here is timed itself; the callers decide what a measurement covers.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferry.client.sockets import UnixHTTPConnection

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
try:  # an installed ferry (the venv) wins; a bare checkout works too
    import ferry  # noqa: F401
except ImportError:  # pragma: no cover - depends on how the script is started
    sys.path.insert(0, str(SRC))

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def quick() -> bool:
    """QUICK=1 in the environment (``make bench QUICK=1``) asks for the short version."""
    return os.environ.get("QUICK", "") not in ("", "0")


def say(msg: str) -> None:
    print(msg, flush=True)


def short_tmpdir(prefix: str) -> Path:
    """A temporary directory with a short path (Unix socket paths are limited to 107 bytes),
    searchable by every user (a system-mode test connects as another uid)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(path, 0o755)
    return path


# ---- tools -------------------------------------------------------------------------------

APT_PACKAGES = {"nginx": "nginx-light", "curl": "curl", "aria2c": "aria2"}
_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def which(name: str) -> str | None:
    found = shutil.which(name)
    if found is None:
        for d in _SBIN:
            candidate = Path(d) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return found


def ensure_tools(names: Sequence[str], install: bool = True) -> dict[str, str | None]:
    """Paths of the named tools. Missing ones are installed with apt-get when we are root
    (the Debian packages of APT_PACKAGES); otherwise their entry is None and the caller
    skips what needs them, saying so."""
    found = {n: which(n) for n in names}
    missing = [n for n, p in found.items() if p is None]
    if missing and install and os.geteuid() == 0 and shutil.which("apt-get"):
        pkgs = sorted({APT_PACKAGES[n] for n in missing if n in APT_PACKAGES})
        if pkgs:
            say(f"installing {' '.join(pkgs)} (apt-get, as root)")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
            subprocess.run(["apt-get", "install", "-y", "-qq", *pkgs], env=env, check=False)
            found = {n: which(n) for n in names}
    return found


def ferry_cli() -> list[str]:
    """The ``ferry`` command of this interpreter's environment (the console script beside
    it when installed, else the same entry point through ``-c``)."""
    script = Path(sys.executable).with_name("ferry")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from ferry.cli.main import main; main()"]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for ferryd and the CLI: this checkout's src first on the path, so a
    bare checkout and a venv behave the same."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(SRC), env.get("PYTHONPATH", "")) if p
    )
    env.pop("QUICK", None)
    if extra:
        env.update(extra)
    return env


# ---- files ---------------------------------------------------------------------------------


def make_file(path: Path, size: int) -> str:
    """``size`` random bytes at ``path``; returns their SHA-256 (hex)."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(4 * MIB, left))
            f.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MIB):
            digest.update(block)
    return digest.hexdigest()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


# ---- processes -------------------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    """user + system CPU time of a live process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    # rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def proc_status_kib(pid: int, key: str) -> int:
    """A ``VmRSS``/``VmHWM``/... line of /proc/PID/status, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


@dataclass
class Timed:
    """One finished child process: wall time and its own resource usage."""

    wall: float
    user: float
    sys: float
    maxrss_kib: int
    returncode: int

    @property
    def cpu(self) -> float:
        return self.user + self.sys


def run_timed(
    cmd: Sequence[str],
    *,
    stdout: Any = subprocess.DEVNULL,
    stderr: Any = subprocess.DEVNULL,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
) -> Timed:
    """Run ``cmd`` to its end; wall time from just before exec to its exit, CPU and peak RSS
    from wait4's rusage (the child's own, not its children's)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(cmd), stdout=stdout, stderr=stderr, env=env, cwd=cwd)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Timed(wall, ru.ru_utime, ru.ru_stime, ru.ru_maxrss, proc.returncode)


# ---- the API over the Unix socket ---------------------------------------------------------


def api_call(
    sock_path: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, Any]:
    """One request on a fresh connection, independent of the client library."""
    conn = UnixHTTPConnection(sock_path, timeout)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = {"Content-Type": "application/json"} if data is not None else {}
        hdrs.update(headers or {})
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        payload = resp.read()
        try:
            return resp.status, json.loads(payload) if payload else None
        except ValueError:
            return resp.status, payload
    finally:
        conn.close()


def status_ok(sock_path: str, timeout: float = 2.0) -> bool:
    try:
        return api_call(sock_path, "GET", "/v1/status", timeout=timeout)[0] == 200
    except (OSError, http.client.HTTPException):
        return False


# ---- ferryd ---------------------------------------------------------------------------------


class Ferryd:
    """ferryd in a subprocess with its own socket, state directory and log."""

    def __init__(
        self,
        base: Path,
        *,
        system: bool = False,
        config: str | None = None,
        log_level: str = "info",
    ) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.system = system
        self.socket = str(base / "ferryd.sock")
        self.state_dir = base / "state"
        self.log_path = base / "ferryd.log"
        self.log_level = log_level
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = base / "ferryd.toml"
            self.config_path.write_text(config)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def db_path(self) -> Path:
        return self.state_dir / "ferry.db"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "ferryd is not running"
        return self.proc.pid

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "ferry.daemon.main",
            "--system" if self.system else "--user",
            "--socket",
            self.socket,
            "--state-dir",
            str(self.state_dir),
            "--log-level",
            self.log_level,
        ]
        if self.config_path is not None:
            cmd += ["--config", str(self.config_path)]
        return cmd

    def spawn(self) -> float:
        """Exec ferryd without waiting; returns the monotonic time of the exec."""
        with open(self.log_path, "ab") as log:
            t0 = time.monotonic()
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=log, env=child_env(), cwd=str(ROOT)
            )
        self.starts += 1
        return t0

    def wait_ready(self, t0: float, timeout: float = 60.0, poll: float = 0.002) -> float:
        """Poll GET /v1/status until it answers 200; returns seconds since ``t0``."""
        assert self.proc is not None
        deadline = t0 + timeout
        while True:
            if status_ok(self.socket, timeout=5.0):
                return time.monotonic() - t0
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"ferryd exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"ferryd did not answer within {timeout} s:\n{self.log_tail()}")
            time.sleep(poll)

    def start(self, timeout: float = 60.0) -> float:
        """Start and wait until it serves; returns the restart-to-serving time (s)."""
        return self.wait_ready(self.spawn(), timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; the exit status (0 is a clean shutdown)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.proc = None
                raise RuntimeError("ferryd did not stop on SIGTERM") from None
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL, the crash case."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def rss_kib(self) -> int:
        return proc_status_kib(self.pid, "VmRSS")

    def hwm_kib(self) -> int:
        return proc_status_kib(self.pid, "VmHWM")

    def log_tail(self, size: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def client(self) -> Any:
        import ferry

        return ferry.Client(socket=self.socket)


# ---- nginx ----------------------------------------------------------------------------------


NGINX_CONF = """\
{user}worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    types {{ application/octet-stream bin; }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    log_format bytes '$uri $status $body_bytes_sent';
    {access_log}
    client_body_temp_path {work}/tmp/body;
    proxy_temp_path {work}/tmp/proxy;
    fastcgi_temp_path {work}/tmp/fastcgi;
    uwsgi_temp_path {work}/tmp/uwsgi;
    scgi_temp_path {work}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ {limit} }}
    }}
}}
"""


class Nginx:
    """nginx on 127.0.0.1 serving ``root``, with its own configuration in ``work``, in the
    foreground (``daemon off``) so it is our child and dies with a signal we send."""

    def __init__(
        self,
        binary: str,
        root: Path,
        work: Path,
        *,
        limit_rate: str | None = None,
        count_bytes: bool = False,
    ) -> None:
        self.binary = binary
        self.root = root
        self.work = work
        self.limit_rate = limit_rate
        self.count_bytes = count_bytes
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def access_log(self) -> Path:
        return self.work / "access.log"

    def start(self) -> Nginx:
        (self.work / "tmp").mkdir(parents=True, exist_ok=True)
        for attempt in range(5):
            self.port = free_port()
            conf = self.work / "nginx.conf"
            conf.write_text(
                NGINX_CONF.format(
                    user="user root root;\n" if os.geteuid() == 0 else "",
                    work=self.work,
                    port=self.port,
                    root=self.root,
                    access_log=(
                        f"access_log {self.access_log} bytes;"
                        if self.count_bytes
                        else "access_log off;"
                    ),
                    limit=f"limit_rate {self.limit_rate};" if self.limit_rate else "",
                )
            )
            err = open(self.work / "nginx.stderr", "ab")  # noqa: SIM115 - owned by Popen
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "-p",
                    str(self.work),
                    "-c",
                    str(conf),
                    "-e",
                    str(self.work / "error.log"),
                    "-g",
                    "daemon off;",
                ],
                stdout=err,
                stderr=err,
            )
            err.close()
            try:
                wait_port(self.port, 10.0)
                return self
            except RuntimeError:
                if self.proc.poll() is None:
                    raise
                if attempt == 4:
                    raise RuntimeError(
                        "nginx did not start: "
                        + (self.work / "nginx.stderr").read_text(errors="replace")[-2000:]
                    ) from None
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def bytes_served(self) -> dict[str, int]:
        """Body bytes of 200/206 answers sent per URI path (from the access log, which
        nginx writes when a request ends; count_bytes=True)."""
        totals: dict[str, int] = {}
        try:
            lines = self.access_log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return totals
        for line in lines:
            parts = line.rsplit(" ", 2)
            # File bytes only: the body of a 416 or an error page is not the file's.
            if len(parts) == 3 and parts[1] in ("200", "206") and parts[2].isdigit():
                totals[parts[0]] = totals.get(parts[0], 0) + int(parts[2])
        return totals


def median(values: Iterable[float]) -> float:
    vals = sorted(values)
    if not vals:
        return float("nan")
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def machine_description() -> dict[str, str]:
    """nproc, memory, CPU model, kernel, Python: printed with every table."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = subprocess.run(
            ["free", "-h"], capture_output=True, text=True, check=False
        ).stdout.rstrip()
    except OSError:
        mem = "unknown"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": cpu,
        "memory": mem,
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
    }
