"""cProfile of ferryd while it fetches COUNT x 64 KiB from nginx into tmpfs, ROUNDS times
(library: create, add, resume, wait, complete), and ferryd's CPU seconds from /proc (issue
#15). Set ferryd's environment with ``VAR=VALUE`` arguments (e.g. ``FERRY_LEAN_HTTP=0``).

    .venv/bin/python -m benchmarks.profile_small [COUNT] [ROUNDS] [--out FILE] [VAR=VALUE ...]
"""

from __future__ import annotations

import pstats
import shutil
import sys
import time
from pathlib import Path

from harness.env import short_tmpdir
from harness.ferryd import Daemon
from harness.files import KIB, make_file
from harness.nginx import Nginx


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    out = "/tmp/ferryd-small.prof"
    if "--out" in args:
        k = args.index("--out")
        out = args[k + 1]
        del args[k : k + 2]
    env = dict(a.split("=", 1) for a in args if "=" in a)
    nums = [a for a in args if "=" not in a]
    count = int(nums[0]) if nums else 1000
    rounds = int(nums[1]) if len(nums) > 1 else 2
    work = short_tmpdir("fy-ps-")
    www = work / "www"
    (www / "small").mkdir(parents=True)
    for i in range(count):
        make_file(www / "small" / f"f{i:04d}.bin", 64 * KIB)
    nginx = Nginx(www, work / "nginx").start()
    d = Daemon(work / "d", log_level="warning", env=env)
    real = d.command

    def profiled() -> list[str]:
        cmd = real()
        return [cmd[0], "-m", "cProfile", "-o", out, *cmd[1:]]

    d.command = profiled  # type: ignore[method-assign]
    import ferry

    dest = Path("/dev/shm") / work.name
    try:
        d.start(timeout=300)
        walls, cpus = [], []
        for r in range(rounds):
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir()
            pairs = [(nginx.url(f"small/f{i:04d}.bin"), str(dest / f"f{i:04d}.bin"))
                     for i in range(count)]  # fmt: skip
            c0 = d.cpu_seconds()
            t0 = time.perf_counter()
            with ferry.Client(d.socket) as c:
                job = c.create_job(f"p{r}")
                job.add_files(pairs)
                job.resume()
                state = job.wait(timeout=600)
                assert state is ferry.JobState.TRANSFERRED, (state, job.error)
                job.complete()
            walls.append(time.perf_counter() - t0)
            cpus.append(d.cpu_seconds() - c0)
            print(f"round {r}: wall {walls[-1]:.3f} s, ferryd CPU {cpus[-1]:.3f} s", flush=True)
    finally:
        d.stop()
        nginx.stop()
        shutil.rmtree(dest, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    stats = pstats.Stats(out)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
