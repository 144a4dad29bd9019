"""Job creations over the socket, each durable before its answer (issue #15): one
sequential client, and 8 concurrent clients (8 processes, one kept-alive connection each),
against a user-mode ferryd whose store is on disk (real fsyncs). Rounds alternate; the
median of each is printed.

    .venv/bin/python -m benchmarks.create_bench [N] [ROUNDS] [--profile FILE]

``--profile FILE`` runs ferryd under cProfile (its stats written to FILE when it stops).
"""

from __future__ import annotations

import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

from harness.ferryd import Daemon

from benchmarks.common import median


def _sequential(sock: str, n: int, tag: str) -> float:
    import ferry

    with ferry.Client(sock) as c:
        c.create_job(f"{tag}-warm")
        t0 = time.perf_counter()
        for i in range(n):
            c.create_job(f"{tag}-{i}")
        return n / (time.perf_counter() - t0)


def _worker(sock: str, n: int, tag: str, barrier: multiprocessing.synchronize.Barrier) -> None:
    import ferry

    with ferry.Client(sock) as c:
        c.create_job(f"{tag}-warm")
        barrier.wait()
        for i in range(n):
            c.create_job(f"{tag}-{i}")


def _concurrent(sock: str, n: int, clients: int, tag: str) -> float:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(clients + 1)
    procs = [
        ctx.Process(target=_worker, args=(sock, n // clients, f"{tag}-{k}", barrier))
        for k in range(clients)
    ]
    for p in procs:
        p.start()
    barrier.wait()
    t0 = time.perf_counter()
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - t0
    assert all(p.exitcode == 0 for p in procs)
    return (n // clients) * clients / elapsed


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0


def run(argv: list[str] | None = None) -> dict[str, float]:
    """``main``'s work: the medians (creations/s; ferryd's CPU µs per creation)."""
    args = list(sys.argv[1:] if argv is None else argv)
    profile = None
    if "--profile" in args:
        k = args.index("--profile")
        profile = args[k + 1]
        del args[k : k + 2]
    n = int(args[0]) if args else 2000
    rounds = int(args[1]) if len(args) > 1 else 3
    with tempfile.TemporaryDirectory(prefix="ferry-createbench-", dir="/var/tmp") as tmp:
        d = Daemon(Path(tmp) / "d", log_level="warning")
        if profile is not None:
            real = d.command

            def profiled() -> list[str]:
                cmd = real()
                return [cmd[0], "-m", "cProfile", "-o", profile, *cmd[1:]]

            d.command = profiled  # type: ignore[method-assign]
        d.start()
        try:
            seq: list[float] = []
            conc: list[float] = []
            cpu_seq: list[float] = []
            cpu_conc: list[float] = []
            for r in range(rounds):
                c0 = d.cpu_seconds()
                seq.append(_sequential(d.socket, n, f"s{r}"))
                c1 = d.cpu_seconds()
                conc.append(_concurrent(d.socket, n, 8, f"c{r}"))
                c2 = d.cpu_seconds()
                cpu_seq.append(1e6 * (c1 - c0) / (n + 1))
                cpu_conc.append(1e6 * (c2 - c1) / (n + 8))
                print(f"  round {r}: sequential {seq[-1]:,.0f}/s ({cpu_seq[-1]:.0f} µs ferryd CPU "
                      f"each), 8 clients {conc[-1]:,.0f}/s ({cpu_conc[-1]:.0f} µs each)")
            print(f"job creations/s (median of {rounds}, {n} a run): sequential "
                  f"{median(seq):,.0f}, 8 concurrent clients {median(conc):,.0f}; ferryd CPU "
                  f"per creation {median(cpu_seq):.0f} / {median(cpu_conc):.0f} µs")  # fmt: skip
        finally:
            d.stop()
    return {
        "sequential": median(seq),
        "concurrent": median(conc),
        "cpu_us_sequential": median(cpu_seq),
        "cpu_us_concurrent": median(cpu_conc),
    }


if __name__ == "__main__":
    raise SystemExit(main())
