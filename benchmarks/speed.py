"""The issue #15 ("Speed") benchmarks in one run, each side by side with its peer:

1. CLI start: ``ferry --version``, ``ferry list``, ``ferry --json list`` beside
   ``python -c pass`` and ``curl --version`` (cli_bench: wall medians, callgrind
   instruction counts);
2. job creations over the socket, durable before each answer: one sequential client and
   8 concurrent ones (create_bench);
3. N x 64 KiB with ``ferry transfer`` (CLI) and the library vs ``aria2c -j5`` and curl,
   on tmpfs and on disk (transfer_bench small);
4. one big file with ``ferry transfer`` (``--json`` and with the live progress bar on a
   pseudo-terminal) vs curl and curl+fsync, on tmpfs and on disk (transfer_bench big);
5. restart to serving with 100,000 stored jobs, and RSS then (restart_bench).

    .venv/bin/python -m benchmarks.speed          (QUICK=1: smaller and fewer rounds)
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import cli_bench, create_bench, restart_bench, transfer_bench  # noqa: E402
from benchmarks.common import machine_description, quick  # noqa: E402


def main() -> int:
    q = quick()
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # the parts print as they go
    for key, value in machine_description().items():
        print(f"{key}: {value}")
    print("== 1. CLI start", flush=True)
    cli_bench.main(["5" if q else "15"])
    print("== 2. job creations", flush=True)
    create_bench.main(["500" if q else "2000", "1" if q else "3"])
    print("== 3. small files", flush=True)
    transfer_bench.main(["small", "200" if q else "1000", "1" if q else "5"])
    print("== 4. one big file", flush=True)
    transfer_bench.main(["big", "128" if q else "512", "1" if q else "5"])
    if not q:
        transfer_bench.main(["big", "2048", "3"])
    print("== 5. restart", flush=True)
    restart_bench.main(["10000" if q else "100000", "1" if q else "3"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
