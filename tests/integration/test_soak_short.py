"""The soak run's mechanics in under a minute (``make soak`` is the 30-minute run): 200 jobs
over 30 s — downloads from nginx and the dropping fault server, uploads and upload-replies
to a real ferry-server — with one SIGKILL of ferryd and one of ferry-server; every file and
reply verified, the samples taken, ferryd's tasks back to idle. No growth threshold here:
30 s says nothing about leaks. And the growth rule itself, on made-up samples."""

from __future__ import annotations

import shutil
from typing import Any

from harness.env import short_tmpdir
from harness.soak import growth, run_soak


def test_short_soak() -> None:
    work = short_tmpdir("fsoakt-")
    result = run_soak(
        work,
        jobs=200,
        duration=30.0,
        seed=7,
        q=True,
        sample_every=1.0,
        restarts="light",
        max_growth=float("inf"),
    )
    assert result.failures == [], result.failures
    shutil.rmtree(work, ignore_errors=True)
    # Restarts cost seconds on a loaded machine: not every planned job is created in 30 s,
    # but every one created is finished and verified.
    assert result.jobs_created >= 50, result.summary()
    assert result.jobs_done == result.jobs_created, result.summary()
    assert result.files_verified == result.jobs_done and result.lost == 0
    assert result.replies_verified == result.by_kind.get("upload-reply", 0) > 0
    assert {"download-nginx", "download-fault", "upload"} <= set(result.by_kind)
    assert [what for _, what in result.events] == ["ferryd KILL", "server KILL"]
    # Samples of both processes, in more than one lifetime each.
    rows = result.samples
    assert len(rows) >= 20
    for proc in ("ferryd", "server"):
        assert {r[f"{proc}_life"] for r in rows} == {0, 1}
        # (None: no process, or one being killed: a zombie has no VmRSS)
        rss = [r[f"{proc}_rss_kib"] for r in rows if r[f"{proc}_rss_kib"] is not None]
        assert len(rss) >= len(rows) // 2 and min(rss) > 1000
        assert any(r[f"{proc}_fds"] for r in rows)
    assert any(r["ferryd_tasks"] for r in rows)
    assert rows[-1]["jobs_done"] <= result.jobs_done
    assert result.tasks_idle_start is not None and result.tasks_idle_end is not None
    assert result.tasks_idle_end <= result.tasks_idle_start


def _rows(values: list[tuple[int, float, int]]) -> list[dict[str, Any]]:
    """Samples (life, rss, fds) one second apart, ferry-server flat."""
    return [
        {"t": float(i), "ferryd_life": life, "ferryd_rss_kib": rss, "ferryd_fds": fds,
         "server_life": 0, "server_rss_kib": 1000, "server_fds": 10}
        for i, (life, rss, fds) in enumerate(values)
    ]  # fmt: skip


def test_growth_rule() -> None:
    # Life 0: a warm-up climb, then flat (noise around 2000). Life 1 (after a restart):
    # leaking 1 % per sample after the warm-up.
    life0 = [(0, 1000.0 + 100 * i, 20) for i in range(10)]
    life0 += [(0, 2000.0 + (5 if i % 2 else -5), 20 + i % 2) for i in range(40)]
    life1 = [(1, 2000.0 * (1.01**i), 20 + i // 10) for i in range(50)]
    g = {(x.process, x.resource, x.life): x for x in growth(_rows(life0 + life1))}
    assert abs(g[("ferryd", "rss_kib", 0)].growth) < 0.01  # the warm-up is not counted
    assert g[("ferryd", "fds", 0)].growth < 0.1
    assert g[("ferryd", "rss_kib", 1)].growth > 0.3  # the leak is
    assert g[("ferryd", "fds", 1)].growth > 0.1
    assert abs(g[("server", "rss_kib", 0)].growth) < 1e-9
    # A lifetime too short for two windows of 3 samples is not judged at all.
    assert not [x for x in growth(_rows([(0, 1.0, 1)] * 5)) if x.process == "ferryd"]
