"""`make demo`: one real transfer through a real ferryd, exactly as a user would do it.

It makes a random file (200 MiB by default), serves it on 127.0.0.1 with a small aiohttp
static server (Content-Length, ranges, ETag), starts a user-mode ferryd on a private socket
and state directory (the embedded SQLite store), runs

    ferry --socket SOCK transfer --name demo http://127.0.0.1:PORT/big.bin OUT/big.bin

with its output on this terminal (the live progress bar), and then checks what a user would
care about: the command succeeded, the file has the source's SHA-256, and nothing else
(no temporary file) was left beside it. ferryd and the server are stopped on every way
out, Ctrl-C included. Exit status 0 only if all of that holds.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType

from aiohttp import web

from ferry.client.sockets import UnixHTTPConnection

MIB = 1024 * 1024
CHUNK = 4 * MIB


class DemoError(Exception):
    """Something the demo checks went wrong; the message says what."""


def say(msg: str) -> None:
    print(f"demo: {msg}", flush=True)


# --- the source file ----------------------------------------------------------------------


def make_random_file(path: Path, size: int) -> str:
    """Write `size` random bytes and return their SHA-256 (hex)."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(CHUNK, left))
            f.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


# --- the HTTP server ----------------------------------------------------------------------


class StaticServer:
    """aiohttp serving one directory on 127.0.0.1 (an ephemeral port), on its own thread."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="demo-http", daemon=True)
        self._thread.start()
        if not self._ready.wait(15):
            raise DemoError("the HTTP server did not start")
        if self._error is not None:
            raise DemoError(f"the HTTP server did not start: {self._error}")

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        app = web.Application()
        app.router.add_static("/", self.root)
        runner = web.AppRunner(app, access_log=None)
        try:
            loop.run_until_complete(runner.setup())
            # Bind the socket ourselves so the chosen port is known without private fields.
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
            loop.run_until_complete(web.SockSite(runner, sock).start())
        except BaseException as exc:  # reported to start(), which raises it
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


# --- ferryd -------------------------------------------------------------------------------


def daemon_answers(sock_path: Path) -> bool:
    conn = UnixHTTPConnection(str(sock_path), timeout=2.0)
    try:
        conn.request("GET", "/v1/status")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


class Daemon:
    """A user-mode ferryd in its own process group (so Ctrl-C reaches only us; we stop it)."""

    def __init__(self, base: Path, env: dict[str, str]) -> None:
        self.socket = base / "ferryd.sock"
        self.state_dir = base / "state"
        self.log_path = base / "ferryd.log"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "ferry.daemon.main", "--user",
                    "--socket", str(self.socket), "--state-dir", str(self.state_dir),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self.env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DemoError(f"ferryd exited with status {self.proc.returncode} at start-up")
            if self.socket.exists() and daemon_answers(self.socket):
                return
            time.sleep(0.1)
        raise DemoError(f"ferryd did not answer on {self.socket} within {timeout:.0f} s")

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            say("ferryd did not stop within 15 s of SIGTERM; killing it")
            proc.kill()
            proc.wait(5)
        if proc.returncode not in (0, -signal.SIGTERM):
            say(f"warning: ferryd exited with status {proc.returncode}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


def ferry_command() -> list[str]:
    """The `ferry` console script of the interpreter running us (the venv's), as a user
    would type it; the module if the script is not installed."""
    script = Path(sys.executable).parent / "ferry"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "ferry.cli.main"]


# --- the demo -----------------------------------------------------------------------------


def run(base: Path, size: int, timeout: float) -> None:
    www = base / "www"
    out = base / "out"
    www.mkdir()
    out.mkdir()
    source = www / "big.bin"
    target = out / "big.bin"

    free = shutil.disk_usage(base).free
    if free < 3 * size:
        raise DemoError(f"{base} has {free // MIB} MiB free; the demo needs {3 * size // MIB} MiB")

    say(f"writing {size // MIB} MiB of random data to {source}")
    want = make_random_file(source, size)

    # Keep the daemon and the client away from the user's own ferry (runtime and state).
    env = dict(os.environ)
    env["XDG_RUNTIME_DIR"] = str(base / "run")
    env["XDG_STATE_HOME"] = str(base / "xdg-state")
    env.pop("FERRY_SOCKET", None)
    (base / "run").mkdir(mode=0o700)

    server = StaticServer(www)
    daemon = Daemon(base, env)
    try:
        server.start()
        say(f"serving {server.url('big.bin')}")
        daemon.start()
        say(f"ferryd (user mode) is serving {daemon.socket}, state in {daemon.state_dir}")

        cmd = [
            *ferry_command(), "--socket", str(daemon.socket),
            "transfer", "--name", "demo", server.url("big.bin"), str(target),
        ]
        say("$ " + " ".join(cmd))
        started = time.monotonic()
        try:
            rc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            raise DemoError(f"the transfer did not finish within {timeout:.0f} s") from None
        elapsed = time.monotonic() - started
        if rc != 0:
            raise DemoError(f"`ferry transfer` exited with status {rc}")

        if not target.is_file():
            raise DemoError(f"{target} does not exist after the transfer")
        got_size = target.stat().st_size
        if got_size != size:
            raise DemoError(f"{target} has {got_size} bytes, the source {size}")
        got = sha256_of(target)
        if got != want:
            raise DemoError(f"SHA-256 mismatch: source {want}, result {got}")
        leftovers = sorted(p.name for p in out.iterdir() if p.name != target.name)
        if leftovers:
            raise DemoError(f"files left beside the result: {leftovers}")
    except Exception:  # not on Ctrl-C: the user knows why it stopped
        tail = daemon.log_tail()
        if tail:
            print(f"--- last lines of {daemon.log_path} ---\n{tail}\n---", file=sys.stderr)
        raise
    finally:
        daemon.stop()
        server.stop()

    rate = size / elapsed if elapsed > 0 else float("inf")
    say("OK")
    print(f"  transferred  {size / 1e6:.1f} MB ({size // MIB} MiB, {size} bytes)")
    print(f"  time         {elapsed:.2f} s (the whole `ferry transfer` command)")
    print(f"  throughput   {rate / 1e6:.1f} MB/s ({rate / MIB:.1f} MiB/s)")
    print(f"  sha256       {got}  (matches the source)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--size-mib", type=int, default=200, help="size of the file (default 200)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds for the transfer")
    p.add_argument("--keep", action="store_true", help="keep the demo directory afterwards")
    args = p.parse_args(argv)
    if args.size_mib < 1:
        p.error("--size-mib must be at least 1")

    # SIGTERM (e.g. from a CI timeout) unwinds like Ctrl-C, so the cleanup runs.
    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)

    # Short: the daemon's socket path must fit in sun_path (108 bytes).
    base = Path(tempfile.mkdtemp(prefix="ferry-demo-"))
    try:
        run(base, args.size_mib * MIB, args.timeout)
        return 0
    except DemoError as exc:
        say(f"FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        say("interrupted; ferryd and the server were stopped")
        return 130
    finally:
        if args.keep:
            say(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
