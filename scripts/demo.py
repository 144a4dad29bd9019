"""`make demo`: one real transfer through a real ferryd, exactly as a user would do it.

It makes a random file (200 MiB by default), serves it on 127.0.0.1 with the harness's
aiohttp server (harness/faultserver.py with no fault configured: Content-Length, ranges,
ETag), starts a user-mode ferryd on a private socket and state directory (the embedded
SQLite store), runs

    ferry --socket SOCK transfer --name demo http://127.0.0.1:PORT/f/big.bin OUT/big.bin

with its output on this terminal (the live progress bar), and then checks what a user would
care about: the command succeeded, the file has the source's SHA-256, and nothing else
(no temporary file) was left beside it. ferryd and the server are stopped on every way
out, Ctrl-C included. Exit status 0 only if all of that holds.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for harness/

from harness.env import child_env, ferry_cli  # noqa: E402
from harness.faultserver import FaultServer  # noqa: E402
from harness.ferryd import Daemon  # noqa: E402
from harness.files import MIB, make_file, sha256_file  # noqa: E402


class DemoError(Exception):
    """Something the demo checks went wrong; the message says what."""


def say(msg: str) -> None:
    print(f"demo: {msg}", flush=True)


def log_tail(daemon: Daemon, lines: int = 30) -> str:
    return "\n".join(daemon.log().splitlines()[-lines:])


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
    want = make_file(source, size)

    # Keep the daemon and the client away from the user's own ferry (runtime and state).
    xdg = {"XDG_RUNTIME_DIR": str(base / "run"), "XDG_STATE_HOME": str(base / "xdg-state")}
    env = child_env(xdg)
    (base / "run").mkdir(mode=0o700)

    server = FaultServer(root=www)  # no faults configured: a plain static server
    # In a session of its own, so Ctrl-C reaches only us; we stop it.
    daemon = Daemon(base, log_level="info", env=xdg, new_session=True)
    try:
        try:
            server.start()
        except Exception as exc:
            raise DemoError(f"the HTTP server did not start: {exc}") from exc
        say(f"serving {server.url('big.bin')}")
        try:
            daemon.start(timeout=30)
        except RuntimeError as exc:
            raise DemoError(str(exc)) from None
        say(f"ferryd (user mode) is serving {daemon.socket}, state in {daemon.state_dir}")

        cmd = [
            *ferry_cli(), "--socket", daemon.socket,
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
        got = sha256_file(target)
        if got != want:
            raise DemoError(f"SHA-256 mismatch: source {want}, result {got}")
        leftovers = sorted(p.name for p in out.iterdir() if p.name != target.name)
        if leftovers:
            raise DemoError(f"files left beside the result: {leftovers}")
    except Exception:  # not on Ctrl-C: the user knows why it stopped
        tail = log_tail(daemon)
        if tail:
            print(f"--- last lines of {daemon.log_path} ---\n{tail}\n---", file=sys.stderr)
        raise
    finally:
        try:
            code = daemon.stop(timeout=15)
            if code not in (0, -signal.SIGTERM):
                say(f"warning: ferryd exited with status {code}")
        except RuntimeError:
            say("ferryd did not stop within 15 s of SIGTERM; it was killed")
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
