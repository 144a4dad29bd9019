"""``make soak``: 10,000 jobs over 30 minutes through drops and restarts; ferryd's and
ferry-server's memory and descriptors must stay flat and ferryd's asyncio tasks come back.

    python benchmarks/soak.py [--jobs N] [--duration S] [--seed N] [--sample-every S]

Downloads (nginx, and the fault server dropping connections) and uploads and upload-replies
to a real ferry-server, mostly small files and some of a few MiB; ferryd restarted five
times (SIGTERM and SIGKILL) and ferry-server three times in the first half of the run.
harness/soak.py says exactly what runs and what is checked.

Writes the samples (every 2 s: RSS, open descriptors, ferryd's ``ferry_tasks``, jobs and
bytes done) to benchmarks/results/soak.csv and the summary to benchmarks/results/soak.json,
and plots them to benchmarks/soak.png (QUICK: the same names with ``-quick``, the PNG in
benchmarks/results/). Prints ``soak: N of M jobs ..., 0 lost`` (or the failures); exit
status 1 on any failure. QUICK=1: 600 jobs in 2 minutes.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.env import ROOT, say, short_tmpdir  # noqa: E402
from harness.soak import FIELDS, SoakResult, cleanup, run_soak  # noqa: E402

from benchmarks.common import machine_description, quick  # noqa: E402

MIB = 1 << 20


def rates(samples: list[dict[str, Any]], window: float) -> list[tuple[float, float, float]]:
    """(t, jobs/s, MiB/s) at each sample, over the ``window`` seconds before it."""
    out: list[tuple[float, float, float]] = []
    j = 0
    for i, s in enumerate(samples):
        while samples[j]["t"] < s["t"] - window:
            j += 1
        dt = s["t"] - samples[j]["t"]
        if i == j or dt <= 0:
            out.append((s["t"], 0.0, 0.0))
            continue
        jobs = (s["jobs_done"] - samples[j]["jobs_done"]) / dt
        mib = (s["bytes_done"] - samples[j]["bytes_done"]) / dt / MIB
        out.append((s["t"], jobs, mib))
    return out


def plot(result: SoakResult, path: Path, title: str, window: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result.samples
    t = [r["t"] / 60 for r in rows]

    def series(key: str, scale: float = 1.0) -> list[float]:
        return [r[key] / scale if r[key] is not None else float("nan") for r in rows]

    fig, axes = plt.subplots(4, 1, figsize=(11, 12), sharex=True)
    ax = axes[0]
    ax.plot(t, series("ferryd_rss_kib", 1024), label="ferryd", lw=1)
    ax.plot(t, series("server_rss_kib", 1024), label="ferry-server", lw=1)
    ax.set_ylabel("RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower right")
    ax.set_title(title)
    ax = axes[1]
    ax.plot(t, series("ferryd_fds"), label="ferryd", lw=1)
    ax.plot(t, series("server_fds"), label="ferry-server", lw=1)
    ax.set_ylabel("open descriptors")
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower right")
    ax = axes[2]
    ax.plot(t, series("ferryd_tasks"), label="ferryd asyncio tasks", lw=1, color="C2")
    ax.plot(t, series("inflight"), label="jobs in flight (driver)", lw=1, color="C7")
    ax.set_ylabel("count")
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower right")
    ax = axes[3]
    rt = rates(rows, window)
    ax.plot([x[0] / 60 for x in rt], [x[1] for x in rt], label="jobs/s", lw=1, color="C3")
    ax.set_ylabel(f"jobs completed/s ({window:.0f} s mean)")
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.plot([x[0] / 60 for x in rt], [x[2] for x in rt], label="MiB/s", lw=1, color="C4")
    ax2.set_ylabel("MiB/s verified")
    ax2.set_ylim(bottom=0)
    ax.legend(loc="lower left")
    ax2.legend(loc="lower right")
    ax.set_xlabel("minutes")
    for at, what in result.events:
        color = "C0" if what.startswith("ferryd") else "C1"
        style = "--" if what.endswith("TERM") else ":"
        for a in axes:
            a.axvline(at / 60, color=color, ls=style, lw=0.8, alpha=0.7)
    for g in result.judged():
        span = g.end - g.start
        for a in axes[:2]:
            a.axvspan((g.start + 0.2 * span) / 60, (g.start + 0.4 * span) / 60,
                      color="0.9", zorder=0)  # fmt: skip
            a.axvspan((g.end - 0.2 * span) / 60, g.end / 60, color="0.9", zorder=0)
    fig.text(0.01, 0.005, "vertical lines: restarts (blue ferryd, orange ferry-server; "
             "dashed SIGTERM, dotted SIGKILL); grey: the windows compared for growth",
             fontsize=8)  # fmt: skip
    fig.tight_layout(rect=(0, 0.015, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    q = quick()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=600 if q else 10_000)
    p.add_argument("--duration", type=float, default=120.0 if q else 1800.0,
                   help="seconds over which the jobs are created")  # fmt: skip
    p.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    p.add_argument("--sample-every", type=float, default=1.0 if q else 2.0)
    p.add_argument("--inflight", type=int, default=24, help="unfinished jobs at most")
    p.add_argument("--drop-probability", type=float, default=0.1,
                   help="share of the fault server's responses cut mid-body")  # fmt: skip
    p.add_argument("--max-growth", type=float, default=0.10)
    p.add_argument("--restarts", choices=("full", "light", "none"), default="full",
                   help="full: ferryd 5 times, ferry-server 3 times in the first half; "
                   "light: once each")  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    tag = "soak-quick" if q else "soak"
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    png = out / f"{tag}.png" if q else ROOT / "benchmarks" / "soak.png"
    say(f"soak{' (QUICK)' if q else ''}: seed {args.seed}")
    work = short_tmpdir("fsoak-")
    result = run_soak(
        work, jobs=args.jobs, duration=args.duration, seed=args.seed, q=q,
        sample_every=args.sample_every, inflight=args.inflight,
        drop_probability=args.drop_probability, restarts=args.restarts,
        max_growth=args.max_growth,
    )  # fmt: skip
    if args.keep or result.failures:
        say(f"work directory kept: {work}")
    else:
        cleanup(work)
    with open(out / f"{tag}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(FIELDS), extrasaction="ignore")
        w.writeheader()
        for row in result.samples:
            w.writerow(row)
    window = 10.0 if q else 30.0
    rt = rates(result.samples, window)
    summary = {
        "machine": machine_description(),
        "seed": args.seed,
        "jobs_planned": result.jobs_planned,
        "jobs_created": result.jobs_created,
        "jobs_done": result.jobs_done,
        "by_kind": result.by_kind,
        "files_verified": result.files_verified,
        "replies_verified": result.replies_verified,
        "lost": result.lost,
        "bytes_done": result.bytes_done,
        "duration_s": result.duration,
        "jobs_per_s": result.jobs_done / result.duration if result.duration else 0,
        "mib_per_s": result.bytes_done / MIB / result.duration if result.duration else 0,
        "peak_jobs_per_s": max((x[1] for x in rt), default=0),
        "transient_resumes": result.transient_resumes,
        "restarts": result.events,
        "tasks_idle_start": result.tasks_idle_start,
        "tasks_idle_end": result.tasks_idle_end,
        "growth": [
            {**g.__dict__, "growth": g.growth, "judged": g in result.judged()}
            for g in result.growth
        ],
        "failures": result.failures,
        "notes": result.notes[:200],
    }
    (out / f"{tag}.json").write_text(json.dumps(summary, indent=2))
    if result.samples:
        plot(result, png, f"ferry soak: {result.jobs_done} jobs, {result.duration / 60:.1f} "
             f"min, seed {args.seed}", window)  # fmt: skip
        say(f"plot: {png}")
    say(f"samples: {out / f'{tag}.csv'}, summary: {out / f'{tag}.json'}")
    say(f"throughput: {summary['jobs_per_s']:.2f} jobs/s, {summary['mib_per_s']:.2f} MiB/s "
        f"verified (mean); {result.transient_resumes} resumes after transient errors")  # fmt: skip
    for g in result.growth:
        unit = "MiB" if g.resource == "rss_kib" else "fds"
        scale = 1024 if g.resource == "rss_kib" else 1
        mark = " (judged)" if g in result.judged() else ""
        say(f"  {g.process} life {g.life} ({g.start:.0f}-{g.end:.0f} s) {g.resource}: "
            f"{g.first / scale:.1f} -> {g.last / scale:.1f} {unit}, "
            f"{g.growth * 100:+.1f} %{mark}")  # fmt: skip
    for f in result.failures:
        say(f"FAILURE: {f}")
    say(result.summary())
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
