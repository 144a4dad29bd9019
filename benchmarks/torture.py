"""``make torture``: crash ferryd over and over mid-transfer, then attack its API.

    python benchmarks/torture.py [--kills N] [--duration S] [--fuzz-cases N] [--seed N]

Phase 1 (kills): jobs of mixed sizes (a few KiB to ~100 MiB) download from nginx and from a
fault-injecting server (paced, dropping some connections), while a killer thread SIGKILLs
ferryd at random moments — mid-transfer, mid-``complete``, and during its own start-up —
and restarts it; then every file, every job's state, the destinations, the bytes fetched
twice and the store's integrity are checked. Phase 2 (hostile API, ``--fuzz-cases``):
10,000 generated cases over every route of the OpenAPI document (our schema-driven
generator, a share by schemathesis) as two unprivileged uids, attacks on a third uid's jobs
and their secrets, raw malformed requests and path/symlink attacks; never a 500, ferryd
never dies, nothing outside the attacker's reach changes. Phase 3 (``--server-requests``):
raw requests to a real ferry-server, invariants checked after every case
(harness/serverfuzz.py). Phase 4 (``--upload-kills``): uploads and upload-replies to
ferry-server while ferryd and ferry-server are SIGKILLed (harness/torture_upload.py).
Phase 5 (``--fleet-kills``): fleet workers on a throwaway PostgreSQL SIGKILLed
mid-transfer (harness/torture_fleet.py). Phase 6 (``--secret-restarts``): marker secrets on
real jobs while ferryd is killed (harness/torture_secrets.py); then every file of the run
is scanned for every marker (harness/secrets.py). harness/torture.py, harness/hostile.py
and those modules say exactly what is checked (the short runs in the tests use them too).

Prints ``torture: N kills, M files verified, 0 lost`` (or the failures); exit status 1 on
any failure. QUICK=1: every phase smaller (a few minutes on a quiet machine).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.env import say  # noqa: E402
from harness.torture import run  # noqa: E402

from benchmarks.common import quick  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    q = quick()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=5 if q else 30,
                   help="SIGKILLs of ferryd mid-download (phase 1; 0 skips it)")
    p.add_argument("--duration", type=float, default=110.0 if q else 600.0,
                   help="upper bound in seconds for the whole run")
    p.add_argument("--fuzz-cases", type=int, default=1000 if q else 10_000,
                   help="generated API cases in all (-1 skips phase 2)")
    p.add_argument("--schemathesis-cases", type=int, default=None,
                   help="how many of them schemathesis makes (default: a twentieth, at "
                        "most 300; 0: none)")
    p.add_argument("--server-requests", type=int, default=300 if q else 10_000,
                   help="raw requests fuzzing a ferry-server (harness/serverfuzz.py; 0 or -1 "
                   "skips)")
    p.add_argument("--upload-kills", type=int, default=6 if q else 30,
                   help="ferryd kills of the upload phase, with a third as many ferry-server "
                   "kills (0 or -1 skips it)")
    p.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    p.add_argument("--fleet-kills", type=int, default=4 if q else 10,
                   help="SIGKILLs of a fleet worker (harness/torture_fleet.py; 0 skips)")
    p.add_argument("--secret-restarts", type=int, default=2 if q else 4,
                   help="ferryd kills while marker secrets are in use "
                        "(harness/torture_secrets.py; -1 skips)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    say(f"torture{' (QUICK)' if q else ''}: seed {args.seed}, {args.kills} kills, "
        f"at most {args.duration:.0f} s")
    t0 = time.monotonic()
    report = run(kills=args.kills, duration=args.duration, fuzz_cases=args.fuzz_cases,
                 seed=args.seed, q=q, keep=args.keep,
                 server_requests=args.server_requests,
                 upload_kills=args.upload_kills,
                 fleet_kills=args.fleet_kills,
                 secret_restarts=args.secret_restarts,
                 schemathesis_cases=args.schemathesis_cases)
    say(f"({time.monotonic() - t0:.0f} s)")
    for f in report.failures:
        say(f"FAILURE: {f}")
    say(report.summary())
    if report.kills < args.kills:
        say(f"only {report.kills} of {args.kills} kills happened within the time bound")
    if args.upload_kills > 0 and report.upload_kills < args.upload_kills:
        say(f"only {report.upload_kills} of {args.upload_kills} ferryd kills of the upload "
            "phase happened within its time bound")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
