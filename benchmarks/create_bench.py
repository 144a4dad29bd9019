"""Job creations over the socket, each durable before its answer (issue #15): one
sequential client, and 8 concurrent clients (8 processes, one kept-alive connection each),
against a user-mode ferryd whose store is on disk (real fsyncs). Rounds alternate; the
median of each is printed.

    .venv/bin/python -m benchmarks.create_bench [N] [ROUNDS] [--profile FILE]

``--profile FILE`` runs ferryd under cProfile (its stats written to FILE when it stops).
``FERRYD_AB=VAR=VALUE`` adds a second ferryd ("B") with that variable set, measured in
the same rounds, alternating (``FERRYD_AB=PYTHONPATH=/old/checkout/src``: before/after).
Each phase also reports the mean number of writes per store commit (ferryd's
``ferry_store_writes_total`` over ``ferry_store_commit_seconds_count``): the group commit.
"""

from __future__ import annotations

import multiprocessing
import os
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


def _commits(sock: str) -> tuple[float, float]:
    """(store commits, writes committed) so far, from ferryd's metrics: their differences
    over a phase give the mean group size (writes sharing one commit and its fsync)."""
    import ferry

    with ferry.Client(sock) as c:
        text = c.metrics()
    commits = writes = 0.0
    for line in text.splitlines():
        if line.startswith("ferry_store_commit_seconds_count"):
            commits = float(line.split()[-1])
        elif line.startswith("ferry_store_writes_total"):
            writes = float(line.split()[-1])
    return commits, writes


def _group(a: tuple[float, float], b: tuple[float, float]) -> float:
    commits = b[0] - a[0]
    return (b[1] - a[1]) / commits if commits else 0.0


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
        daemons = {"A": Daemon(Path(tmp) / "d", log_level="warning")}
        # FERRYD_AB="VAR=VALUE": a second ferryd ("B") with that variable in its environment,
        # measured in the same rounds, alternating with A (e.g. PYTHONPATH=OLD_CHECKOUT/src).
        if os.environ.get("FERRYD_AB"):
            var, _, value = os.environ["FERRYD_AB"].partition("=")
            daemons["B"] = Daemon(Path(tmp) / "d-ab", log_level="warning", env={var: value})
        if profile is not None:
            d = daemons["A"]
            real = d.command

            def profiled() -> list[str]:
                cmd = real()
                return [cmd[0], "-m", "cProfile", "-o", profile, *cmd[1:]]

            d.command = profiled  # type: ignore[method-assign]
        for d in daemons.values():
            d.start()
        try:
            seq: dict[str, list[float]] = {k: [] for k in daemons}
            conc: dict[str, list[float]] = {k: [] for k in daemons}
            cpu_seq: dict[str, list[float]] = {k: [] for k in daemons}
            cpu_conc: dict[str, list[float]] = {k: [] for k in daemons}
            groups: dict[str, list[float]] = {k: [] for k in daemons}
            for r in range(rounds):
                # Alternating: A then B in even rounds, B then A in odd ones, each phase.
                order = list(daemons) if r % 2 == 0 else list(reversed(daemons))
                for k in order:
                    d = daemons[k]
                    c0 = d.cpu_seconds()
                    seq[k].append(_sequential(d.socket, n, f"s{r}"))
                    c1 = d.cpu_seconds()
                    cpu_seq[k].append(1e6 * (c1 - c0) / (n + 1))
                for k in order:
                    d = daemons[k]
                    g0 = _commits(d.socket)
                    c1 = d.cpu_seconds()
                    conc[k].append(_concurrent(d.socket, n, 8, f"c{r}"))
                    c2 = d.cpu_seconds()
                    groups[k].append(_group(g0, _commits(d.socket)))
                    cpu_conc[k].append(1e6 * (c2 - c1) / (n + 8))
                for k in daemons:
                    print(f"  round {r} {k}: sequential {seq[k][-1]:,.0f}/s ({cpu_seq[k][-1]:.0f} "
                          f"µs ferryd CPU each), 8 clients {conc[k][-1]:,.0f}/s "
                          f"({cpu_conc[k][-1]:.0f} µs each; {groups[k][-1]:.1f} writes a "
                          f"commit)")  # fmt: skip
            for k in daemons:
                print(f"{k}: job creations/s (median of {rounds}, {n} a run): sequential "
                      f"{median(seq[k]):,.0f}, 8 concurrent clients {median(conc[k]):,.0f}; "
                      f"ferryd CPU per creation {median(cpu_seq[k]):.0f} / "
                      f"{median(cpu_conc[k]):.0f} µs; 8 clients: {median(groups[k]):.1f} "
                      f"writes per commit (0: not reported)")  # fmt: skip
            if "B" in daemons:
                ratio = [a / b for a, b in zip(seq["A"], seq["B"], strict=True)]
                ratio_c = [a / b for a, b in zip(conc["A"], conc["B"], strict=True)]
                print(f"A/B rate, rounds' median: sequential {median(ratio):.2f}x, "
                      f"8 clients {median(ratio_c):.2f}x")  # fmt: skip
        finally:
            for d in daemons.values():
                d.stop()
    return {
        "sequential": median(seq["A"]),
        "concurrent": median(conc["A"]),
        "cpu_us_sequential": median(cpu_seq["A"]),
        "cpu_us_concurrent": median(cpu_conc["A"]),
    }


if __name__ == "__main__":
    raise SystemExit(main())
