"""`make demo`: ferry at work, as a user would see it, in about 20 seconds.

Two random files are served on 127.0.0.1 by the harness's aiohttp server
(harness/faultserver.py: Content-Length, ranges, ETag), throttled to a fixed rate (24 MiB/s,
25.2 MB/s, by default) so that each download takes a few seconds. A user-mode ferryd runs on
a private socket and state directory; the ``ferry`` commands find it via ``$FERRY_SOCKET``.

1. ``ferry transfer --name demo URL OUT/first.bin``, on this terminal: its live progress bar.
2. A background job: ``ferry create``, ``ferry add``, ``ferry resume``. Half-way (the demo
   polls the job's ``bytes_transferred``, never a fixed sleep) ferryd is killed with SIGKILL,
   then started again: the job goes on from its last checkpoint. ``ferry wait`` and
   ``ferry complete`` finish it; the bytes the server sent in all are compared with the file's
   size (what was fetched twice is at most what came after the last checkpoint).

Each result must have its source's SHA-256 and nothing (no temporary file) may be left
beside it. ferryd and the server are stopped on every way out, Ctrl-C included. Exit status
0 only if all of that holds. With stdout not a terminal (CI, a pipe) the bar is not drawn
and the rest is the same.
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for harness/

from harness.env import child_env, ferry_cli  # noqa: E402
from harness.faultserver import FaultServer  # noqa: E402
from harness.ferryd import Daemon  # noqa: E402
from harness.files import MIB, make_file, sha256_file  # noqa: E402

JOB = "resumable"  # the background job's display name


class DemoError(Exception):
    """Something the demo checks went wrong; the message says what."""


def say(msg: str) -> None:
    print(f"demo: {msg}", flush=True)


def step(title: str, *lines: str) -> None:
    """A narration block: what happens next and what a user would type."""
    print(f"\n== {title}", flush=True)
    for line in lines:
        print(f"   {line}", flush=True)


def mb(n: float) -> str:
    """Bytes in MB (10**6), the unit of ferry's progress bar."""
    return f"{n / 1e6:.1f} MB"


def log_tail(daemon: Daemon, lines: int = 30) -> str:
    return "\n".join(daemon.log().splitlines()[-lines:])


class Demo:
    def __init__(self, base: Path, size: int, rate: float, timeout: float) -> None:
        self.base = base
        self.size = size
        self.rate = rate
        self.timeout = timeout
        self.www = base / "www"
        self.out = base / "out"
        self.www.mkdir()
        self.out.mkdir()
        (base / "run").mkdir(mode=0o700)
        # Keep the daemon and the client away from the user's own ferry (runtime and state).
        self.xdg = {"XDG_RUNTIME_DIR": str(base / "run"), "XDG_STATE_HOME": str(base / "xdg-state")}
        self.server = FaultServer(root=self.www, rate=rate)
        # In a session of its own, so Ctrl-C reaches only us; we stop it.
        self.daemon = Daemon(base, log_level="info", env=self.xdg, new_session=True)
        self.cli_env = child_env({**self.xdg, "FERRY_SOCKET": self.daemon.socket})

    # ---- helpers ------------------------------------------------------------------------------

    def ferry(self, *args: str, timeout: float = 60.0) -> None:
        """Run ``ferry ARGS`` on this terminal, as typed; DemoError unless it exits 0."""
        print(f"$ ferry {' '.join(args)}", flush=True)
        cmd = [*ferry_cli(), *args]
        try:
            rc = subprocess.run(
                cmd, env=self.cli_env, stdin=subprocess.DEVNULL, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            raise DemoError(f"`ferry {args[0]}` did not finish within {timeout:.0f} s") from None
        if rc != 0:
            raise DemoError(f"`ferry {args[0]}` exited with status {rc}")

    def job(self) -> dict[str, Any]:
        """The background job as ferryd reports it (GET /v1/jobs, by display name)."""
        status, body = self.daemon.call("GET", "/v1/jobs")
        if status != 200:
            raise DemoError(f"GET /v1/jobs answered {status}: {body}")
        for j in body["jobs"]:
            if j.get("display_name") == JOB:
                return j  # type: ignore[no-any-return]
        raise DemoError(f"ferryd has no job named {JOB!r}")

    def part_bytes(self, target: Path) -> int:
        """Bytes in the job's temporary file(s) beside ``target`` (``.NAME.*.ferry-part``)."""
        return sum(p.stat().st_size for p in self.out.glob(f".{target.name}.*"))

    def check_result(self, target: Path, want: str) -> str:
        if not target.is_file():
            raise DemoError(f"{target} does not exist")
        got_size = target.stat().st_size
        if got_size != self.size:
            raise DemoError(f"{target} has {got_size} bytes, the source {self.size}")
        got = sha256_file(target)
        if got != want:
            raise DemoError(f"SHA-256 mismatch for {target.name}: source {want}, result {got}")
        leftovers = sorted(p.name for p in self.out.iterdir() if p.name.startswith("."))
        if leftovers:
            raise DemoError(f"temporary files left beside the results: {leftovers}")
        return got

    # ---- the demo -----------------------------------------------------------------------------

    def run(self) -> None:
        free = shutil.disk_usage(self.base).free
        if free < 5 * self.size:
            raise DemoError(
                f"{self.base} has {free // MIB} MiB free; the demo needs {5 * self.size // MIB} MiB"
            )
        step(
            "Setting up",
            f"two files of {mb(self.size)} of random data, served on 127.0.0.1 at "
            f"{mb(self.rate)}/s (a throttled source),",
            "and a user-mode ferryd on a private socket (the `ferry` commands below find it",
            "through $FERRY_SOCKET; normally `ferry` finds or starts your user daemon itself).",
        )
        want1 = make_file(self.www / "first.bin", self.size)
        want2 = make_file(self.www / "second.bin", self.size)
        try:
            self.server.start()
        except Exception as exc:
            raise DemoError(f"the HTTP server did not start: {exc}") from exc
        try:
            self.daemon.start(timeout=30)
        except RuntimeError as exc:
            raise DemoError(str(exc)) from None
        say(f"serving {self.server.base}/f/; ferryd pid {self.daemon.pid}, state in "
            f"{self.daemon.state_dir}")
        try:
            self.one_step(want1)
            self.crash_and_resume(want2)
        except Exception:  # not on Ctrl-C: the user knows why it stopped
            tail = log_tail(self.daemon)
            if tail:
                print(f"--- last lines of {self.daemon.log_path} ---\n{tail}\n---",
                      file=sys.stderr)
            raise

    def one_step(self, want: str) -> None:
        target = self.out / "first.bin"
        step(
            "1. A download in one command, with a live progress bar",
            "`ferry transfer` creates a job, adds the file, resumes the job, follows it, and",
            "completes it: the file appears under its name only once all of it is there.",
        )
        started = time.monotonic()
        self.ferry("transfer", "--name", "demo", self.server.url("first.bin"), str(target),
                   timeout=self.timeout)
        elapsed = time.monotonic() - started
        got = self.check_result(target, want)
        say(f"OK: {target.name} is {mb(self.size)} in {elapsed:.1f} s, "
            f"SHA-256 {got[:16]}… matches the source")

    def crash_and_resume(self, want: str) -> None:
        target = self.out / "second.bin"
        self.server.reset_counts()
        step(
            "2. A background job, a crash, and a resume",
            "The BITS way: create a job, add files, resume it; ferryd transfers it in the",
            "background while your shell (or your program) does something else.",
        )
        self.ferry("create", JOB)
        self.ferry("add", JOB, self.server.url("second.bin"), str(target))
        self.ferry("resume", JOB)

        half = self.size // 2
        say(f"waiting until ferryd has {mb(half)}, half the file "
            f"(`ferry info {JOB}` shows the same progress)")
        deadline = time.monotonic() + self.timeout
        last_print = 0.0
        while True:
            j = self.job()
            done = j["progress"]["bytes_transferred"]
            if j["state"] in ("ERROR", "TRANSIENT_ERROR", "CANCELLED"):
                raise DemoError(f"the job went {j['state']}: {j.get('error')}")
            if done >= half:
                break
            if j["state"] == "TRANSFERRED":
                raise DemoError("the job finished before the demo could interrupt it")
            now = time.monotonic()
            if now > deadline:
                raise DemoError(f"the job did not reach half-way within {self.timeout:.0f} s")
            if now - last_print >= 1.0:
                print(f"   {j['state']:<12} {mb(done):>10} of {mb(self.size)}", flush=True)
                last_print = now
            time.sleep(0.05)

        pid = self.daemon.pid
        step(
            "3. Crash: ferryd is killed with SIGKILL (like `kill -9`, a power cut, the OOM killer)",
            "It gets no chance to stop cleanly or to save anything more.",
        )
        self.daemon.kill()
        on_disk = self.part_bytes(target)
        say(f"killed ferryd (pid {pid}); the job had {mb(done)} according to ferryd, "
            f"{mb(on_disk)} are in its temporary file on disk")

        step(
            "4. ferryd starts again",
            "It reloads its jobs from its state database; the job was TRANSFERRING, so it is",
            "queued again and goes on from its last checkpoint (a checkpoint is written every",
            "8 MiB or every second, with an fsync).",
        )
        try:
            self.daemon.start(timeout=30)
        except RuntimeError as exc:
            raise DemoError(str(exc)) from None
        j = self.job()
        say(f"ferryd is back (pid {self.daemon.pid}); the job is {j['state']} and resumes from "
            f"{mb(j['progress']['bytes_transferred'])} (its last checkpoint)")

        step(
            "5. Wait for the job, then complete it",
            "`ferry wait` returns when the job is TRANSFERRED; `ferry complete` moves the file",
            "to its name (until then it is a hidden temporary file in the same directory).",
        )
        self.ferry("wait", JOB, "--timeout", f"{self.timeout:.0f}", timeout=self.timeout + 30)
        self.ferry("complete", JOB)
        got = self.check_result(target, want)
        served = self.server.bytes_served().get("second.bin", 0)
        again = served - self.size
        ranges = [f"Range: {r.headers['Range']}" if "Range" in r.headers else "the whole file"
                  for r in self.server.requests_for("second.bin")]
        say(f"OK: {target.name} is complete, SHA-256 {got[:16]}… matches the source")
        print(f"   requests for it: {', '.join(ranges)}", flush=True)
        print(f"   the server sent {mb(served)} ({served} bytes) in all, for a file of "
              f"{mb(self.size)} ({self.size} bytes):", flush=True)
        if again < 0:
            raise DemoError(f"the server sent {served} bytes, fewer than the file's {self.size}")
        print(f"   only {mb(again)} were fetched twice (sent after the last checkpoint before "
              "the crash);\n   the rest was not fetched again.", flush=True)
        if again > self.size // 2:
            raise DemoError(f"{again} bytes were fetched twice: the job did not resume")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--size-mib", type=int, default=144, help="size of each file (default 144)")
    p.add_argument("--rate-mib", type=float, default=24.0,
                   help="the source's rate in MiB/s (default 24)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds for each transfer")
    p.add_argument("--keep", action="store_true", help="keep the demo directory afterwards")
    args = p.parse_args(argv)
    if args.size_mib < 4:
        p.error("--size-mib must be at least 4")
    if args.rate_mib <= 0:
        p.error("--rate-mib must be positive")

    # SIGTERM (e.g. from a CI timeout) unwinds like Ctrl-C, so the cleanup runs.
    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)

    # Short: the daemon's socket path must fit in sun_path (108 bytes).
    base = Path(tempfile.mkdtemp(prefix="ferry-demo-"))
    started = time.monotonic()
    demo = Demo(base, args.size_mib * MIB, args.rate_mib * MIB, args.timeout)
    try:
        demo.run()
        step(
            f"Done in {time.monotonic() - started:.0f} s. Where to go next (README.md):",
            "\"Using the command line\"  create/add/resume/wait/complete, ferry set, --sha256",
            "\"Using the library\"       import ferry: the same from Python, sync or asyncio",
            "\"Running ferryd\"          the user daemon, the system daemon, systemd units",
            "\"Documentation\"           docs/: architecture, operations, security",
        )
        return 0
    except DemoError as exc:
        say(f"FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        say("interrupted; ferryd and the server were stopped")
        return 130
    finally:
        try:
            code = demo.daemon.stop(timeout=15)
            if code not in (0, -signal.SIGTERM):
                say(f"warning: ferryd exited with status {code}")
        except RuntimeError:
            say("ferryd did not stop within 15 s of SIGTERM; it was killed")
        demo.server.stop()
        if args.keep:
            say(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
