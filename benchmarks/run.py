"""``make bench``: ferry against curl and aria2 on loopback, side by side, in one run.

    python benchmarks/run.py [--rounds N] [--only big,small,control,drops] [--no-micro]

QUICK=1 in the environment shrinks every figure (``make bench QUICK=1``, < 2 minutes).
Comparisons (README.md in this directory says what each one means and the targets):

1. big     one file (1 GiB; QUICK 128 MiB) from nginx: ``ferry transfer`` vs ``curl`` vs
           ``aria2c -x1 -s1`` — wall time, CPU time, ferryd's peak RSS;
2. small   1,000 files of 64 KiB (QUICK 200) in one job vs ``aria2c -j5`` vs
           ``curl --parallel --parallel-max 5`` — wall time;
3. control job creations per second, ``ferry --json list`` at 10,000 jobs, ferryd's RSS
           idle and with 100,000 stored jobs, restart-to-serving time;
4. drops   a 64 MiB download through 20 forced connection drops: bytes fetched / size.

Tools alternate from round to round, outputs are deleted (and dirty pages synced) between
runs. The table of medians is printed; every raw figure goes to
benchmarks/results/latest.json. Then the micro-suite (micro.py) runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.env import (  # noqa: E402
    ROOT,
    child_env,
    ensure_tools,
    ferry_cli,
    say,
    short_tmpdir,
)
from harness.faultserver import FaultServer  # noqa: E402
from harness.ferryd import Daemon  # noqa: E402
from harness.files import KIB, MIB, make_file, sha256_file  # noqa: E402
from harness.nginx import Nginx  # noqa: E402

from benchmarks.common import (  # noqa: E402
    Timed,
    machine_description,
    median,
    quick,
    run_timed,
)

RESULTS = ROOT / "benchmarks" / "results"
MB = 1_000_000  # memory targets are in MB (10^6 bytes)

# Targets from the issues; ratios are ferry / peer.
TARGETS = {
    "big_vs_curl": 1.1,
    "small_vs_aria2c": 1.0,
    "creations_per_s": 2000.0,
    "list_s": 1.0,
    "idle_rss_mb": 60.0,
    "store_rss_mb": 300.0,
    "restart_s": 2.0,
    "fetch_ratio": 1.05,
}


class Bench:
    def __init__(self, work: Path, rounds: int, tools: dict[str, str | None]) -> None:
        self.work = work
        self.rounds = rounds
        self.tools = tools
        self.q = quick()
        self.www = work / "www"
        self.www.mkdir()
        self.nginx: Nginx | None = None
        self.raw: dict[str, Any] = {}
        self.skipped: list[str] = []

    # ---- helpers --------------------------------------------------------------------------------

    def peers(self, names: list[str]) -> list[str]:
        return [n for n in names if self.tools.get(n)]

    def start_nginx(self) -> Nginx | None:
        if self.nginx is None and self.tools.get("nginx"):
            binary = self.tools["nginx"]
            assert binary is not None
            self.nginx = Nginx(self.www, self.work / "nginx", binary=binary).start()
        return self.nginx

    def daemon(self, name: str) -> Daemon:
        return Daemon(self.work / name, log_level="warning")

    @staticmethod
    def rotate(items: list[str], r: int) -> list[str]:
        k = r % len(items)
        return items[k:] + items[:k]

    @staticmethod
    def fresh_dir(path: Path) -> Path:
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        os.sync()  # the previous run's dirty pages are not the next run's problem
        return path

    # ---- 1. one big file ------------------------------------------------------------------------

    def big(self) -> None:
        nginx = self.start_nginx()
        if nginx is None:
            self.skipped.append("big: nginx is not installed (and could not be installed)")
            return
        size = (128 if self.q else 1024) * MIB
        say(f"== 1. one {size // MIB} MiB file from nginx")
        sha = make_file(self.www / "big.bin", size)
        url = nginx.url("big.bin")
        # curl+fsync: curl, then an fsync of its output. Not a target, a reference: ferry
        # makes its data durable (it fsyncs every checkpoint), curl and aria2c do not.
        tools = ["ferry", *self.peers(["curl", "aria2c"])]
        if "curl" in tools:
            tools.append("curl+fsync")
        runs: dict[str, list[dict[str, Any]]] = {t: [] for t in tools}
        out_dir = self.work / "out-big"
        # Round 0 is a warm-up, not recorded: the first gigabyte written after the source
        # file was made lands in memory in another state (page-cache folios to assemble)
        # than every later one, and whichever tool went first paid 1.5-2x for it.
        for r in range(-1, self.rounds):
            for tool in self.rotate(tools, max(r, 0)):
                self.fresh_dir(out_dir)
                out = out_dir / "big.bin"
                fig = self._big_once(tool, url, out, r)
                if sha256_file(out) != sha:
                    raise RuntimeError(f"{tool} produced a wrong file in round {r}")
                if r < 0:
                    say(f"   warm-up {tool:<10} {fig['wall']:7.3f} s wall (not counted)")
                    continue
                runs[tool].append(fig)
                say(
                    f"   round {r + 1} {tool:<10} {fig['wall']:7.3f} s wall, "
                    f"{fig['cpu']:6.3f} s CPU"
                    + (f", ferryd peak RSS {fig['ferryd_hwm_kib'] / 1024:.1f} MiB"
                       if tool == "ferry" else "")
                )
        shutil.rmtree(out_dir, ignore_errors=True)
        (self.www / "big.bin").unlink()
        self.raw["big"] = {"size": size, "runs": runs}

    def _big_once(self, tool: str, url: str, out: Path, r: int) -> dict[str, Any]:
        if tool == "ferry":
            # A fresh ferryd per round: VmHWM is a per-process high-water mark.
            d = self.daemon("ferryd-big")
            d.start()
            try:
                cpu0 = d.cpu_seconds()
                t = run_timed(
                    [*ferry_cli(), "--socket", d.socket, "--json", "transfer",
                     "--name", f"big-{r}", url, str(out)],
                    env=child_env(),
                )
                ferryd_cpu = d.cpu_seconds() - cpu0
                hwm = d.hwm_kib()
            finally:
                d.stop()
            self._check(t, tool)
            return {
                "wall": t.wall,
                "cpu": t.cpu + ferryd_cpu,
                "cli_cpu": t.cpu,
                "ferryd_cpu": ferryd_cpu,
                "ferryd_hwm_kib": hwm,
                "cli_maxrss_kib": t.maxrss_kib,
            }
        if tool in ("curl", "curl+fsync"):
            t = run_timed([self.tools["curl"] or "curl", "-s", "-f", "-o", str(out), url])
            if tool == "curl+fsync":
                t0 = time.perf_counter()
                fd = os.open(out, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                t.wall += time.perf_counter() - t0
        else:
            t = run_timed(
                [self.tools["aria2c"] or "aria2c", *ARIA2_QUIET, "-x1", "-s1",
                 "-d", str(out.parent), "-o", out.name, url]
            )
        self._check(t, tool)
        return {"wall": t.wall, "cpu": t.cpu, "maxrss_kib": t.maxrss_kib}

    @staticmethod
    def _check(t: Timed, tool: str) -> None:
        if t.returncode != 0:
            raise RuntimeError(f"{tool} exited with status {t.returncode}")

    # ---- 2. many small files --------------------------------------------------------------------

    def small(self) -> None:
        nginx = self.start_nginx()
        if nginx is None:
            self.skipped.append("small: nginx is not installed (and could not be installed)")
            return
        count = 200 if self.q else 1000
        say(f"== 2. {count} files of 64 KiB in one job")
        src = self.www / "small"
        src.mkdir()
        shas = {f"f{i:04d}.bin": make_file(src / f"f{i:04d}.bin", 64 * KIB) for i in range(count)}
        urls = {name: nginx.url(f"small/{name}") for name in shas}
        tools = ["ferry", *self.peers(["aria2c", "curl"])]
        runs: dict[str, list[dict[str, Any]]] = {t: [] for t in tools}
        out_dir = self.work / "out-small"
        d = self.daemon("ferryd-small")
        d.start()
        try:
            for r in range(self.rounds):
                for tool in self.rotate(tools, r):
                    self.fresh_dir(out_dir)
                    fig = self._small_once(tool, d, urls, out_dir, r)
                    for name, sha in shas.items():
                        if sha256_file(out_dir / name) != sha:
                            raise RuntimeError(f"{tool}: {name} is wrong in round {r}")
                    runs[tool].append(fig)
                    say(f"   round {r + 1} {tool:<10} {fig['wall']:7.3f} s wall"
                        + (f" (complete {fig['complete_s']:.3f} s)" if "complete_s" in fig
                           else ""))
        finally:
            d.stop()
        shutil.rmtree(out_dir, ignore_errors=True)
        shutil.rmtree(src, ignore_errors=True)
        self.raw["small"] = {"count": count, "size": 64 * KIB, "runs": runs}

    def _small_once(
        self, tool: str, d: Daemon, urls: dict[str, str], out_dir: Path, r: int
    ) -> dict[str, Any]:
        import ferry

        if tool == "ferry":
            cpu0 = d.cpu_seconds()
            t0 = time.perf_counter()
            with ferry.Client(socket=d.socket) as c:
                job = c.create_job(f"small-{r}")
                job.add_files([(u, str(out_dir / n)) for n, u in urls.items()])
                job.resume()
                state = job.wait(timeout=600)
                if state is not ferry.JobState.TRANSFERRED:
                    raise RuntimeError(f"the small-files job ended {state}: {job.error}")
                tc = time.perf_counter()
                job.complete()  # 1,000 renames as the owner: one worker trip, one commit
                complete = time.perf_counter() - tc
            wall = time.perf_counter() - t0
            return {"wall": wall, "ferryd_cpu": d.cpu_seconds() - cpu0, "complete_s": complete}
        if tool == "aria2c":
            lst = self.work / "aria2.list"
            lst.write_text("".join(f"{u}\n  out={n}\n" for n, u in urls.items()))
            t = run_timed(
                [self.tools["aria2c"] or "aria2c", *ARIA2_QUIET, "-j5",
                 "-d", str(out_dir), "-i", str(lst)]
            )
        else:
            cfg = self.work / "curl.cfg"
            cfg.write_text(
                "".join(f'url = "{u}"\noutput = "{out_dir / n}"\n' for n, u in urls.items())
            )
            t = run_timed(
                [self.tools["curl"] or "curl", "-s", "-f", "--parallel", "--parallel-max", "5",
                 "-K", str(cfg)]
            )
        self._check(t, tool)
        return {"wall": t.wall, "cpu": t.cpu}

    # ---- 3. the control plane -------------------------------------------------------------------

    def control(self) -> None:
        import ferry

        list_n = 2000 if self.q else 10_000
        # The list's jobs are made in timed runs of sequential creations: several short runs
        # (median reported) say more on a noisy machine than one long one.
        creation_runs = 5
        creations = list_n // creation_runs
        store_n = 10_000 if self.q else 100_000
        say(f"== 3. control plane ({creation_runs} x {creations} creations, list at {list_n}, "
            f"{store_n} stored jobs)")
        fig: dict[str, Any] = {"creations": creations, "list_jobs": list_n, "store_jobs": store_n}
        d = self.daemon("ferryd-control")
        fig["empty_restart_s"] = d.start()  # the floor: interpreter, imports, empty store
        try:
            time.sleep(1.0)
            fig["idle_rss_kib"] = d.rss_kib()
            with ferry.Client(socket=d.socket) as c:
                c.status()  # the connection is open before the clock starts
                rates = []
                made = 0
                for _ in range(creation_runs):
                    t0 = time.perf_counter()
                    for i in range(creations):
                        c.create_job(f"c{made + i}")
                    rates.append(creations / (time.perf_counter() - t0))
                    made += creations
                fig["creations_per_s_runs"] = rates
                say("   creations/s: " + ", ".join(f"{x:.0f}" for x in rates))
                assert made == list_n
            fig["list_rss_kib"] = d.rss_kib()
            list_runs, api_runs = [], []
            out = self.work / "list.json"
            for _ in range(max(3, self.rounds)):
                with open(out, "wb") as f:
                    t = run_timed([*ferry_cli(), "--socket", d.socket, "--json", "list"],
                                  stdout=f, env=child_env())
                self._check(t, "ferry list")
                listed = json.loads(out.read_text())
                if len(listed) != list_n:
                    raise RuntimeError(f"ferry list printed {len(listed)} jobs, not {list_n}")
                list_runs.append(t.wall)
                with ferry.Client(socket=d.socket) as c:
                    c.status()
                    t0 = time.perf_counter()
                    n = len(c.jobs())
                    api_runs.append(time.perf_counter() - t0)
                    assert n == list_n
            fig["list_cli_s_runs"] = list_runs
            fig["list_api_s_runs"] = api_runs
            say(f"   ferry --json list at {list_n}: "
                + ", ".join(f"{x:.3f}" for x in list_runs) + " s (CLI); "
                + ", ".join(f"{x:.3f}" for x in api_runs) + " s (client call)")
        finally:
            d.stop()

        # A big store, written directly while no ferryd runs, then timed restarts.
        s = self.daemon("ferryd-store")
        s.state_dir.mkdir(parents=True)
        fill = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "fillstore.py"), str(s.db_path),
             str(store_n)],
            env=child_env(), capture_output=True, text=True, check=False,
        )
        if fill.returncode != 0:
            raise RuntimeError(f"fillstore failed:\n{fill.stderr}")
        restarts, rss, hwm = [], [], []
        for _ in range(max(3, self.rounds)):
            restarts.append(s.start(timeout=300))
            time.sleep(0.5)
            rss.append(s.rss_kib())
            hwm.append(s.hwm_kib())
            with ferry.Client(socket=s.socket) as c:
                jobs = c.status().get("jobs")
            if jobs != store_n:
                raise RuntimeError(f"ferryd loaded {jobs} jobs, not {store_n}")
            if s.stop() != 0:
                raise RuntimeError(f"ferryd did not stop cleanly:\n{s.log()}")
        fig["restart_s_runs"] = restarts
        fig["store_rss_kib_runs"] = rss
        fig["store_hwm_kib_runs"] = hwm
        say(f"   {store_n} stored jobs: restart-to-serving "
            + ", ".join(f"{x:.2f}" for x in restarts) + " s; RSS "
            + ", ".join(f"{x / 1024:.0f}" for x in rss) + " MiB")
        shutil.rmtree(s.base, ignore_errors=True)
        self.raw["control"] = fig

    # ---- 4. connection drops --------------------------------------------------------------------

    def drops(self) -> None:
        import ferry

        size = 64 * MIB
        n_drops = 20
        say(f"== 4. a {size // MIB} MiB download through {n_drops} forced connection drops")
        root = self.work / "www-fault"
        root.mkdir()
        sha = make_file(root / "drop.bin", size)
        server = FaultServer(root=root).start()
        d = self.daemon("ferryd-drops")
        d.start()
        out_dir = self.work / "out-drops"
        runs = []
        rng = random.Random(5)
        try:
            for r in range(self.rounds):
                self.fresh_dir(out_dir)
                server.reset_counts()
                server.plan_drops("drop.bin", rng.sample(range(1, size), n_drops))
                t0 = time.perf_counter()
                resumes = 0
                with ferry.Client(socket=d.socket) as c:
                    job = c.create_job(f"drops-{r}")
                    job.set(min_retry_delay=5)
                    job.add_file(server.url("drop.bin"), str(out_dir / "drop.bin"))
                    job.resume()
                    for _ in job.follow(timeout=600):
                        st = job.state
                        if st is ferry.JobState.TRANSIENT_ERROR:
                            job.resume()  # retries at once; min_retry_delay is 5 s
                            resumes += 1
                        elif st is ferry.JobState.TRANSFERRED:
                            break
                        elif st is ferry.JobState.ERROR or st.is_final:
                            raise RuntimeError(f"the job ended {st}: {job.error}")
                    job.complete()
                wall = time.perf_counter() - t0
                fetched = server.bytes_served().get("drop.bin", 0)
                dropped = sum(1 for s in server.responses if s.dropped)
                ok = sha256_file(out_dir / "drop.bin") == sha
                runs.append({
                    "wall": wall, "fetched": fetched, "ratio": fetched / size,
                    "drops": dropped, "resumes": resumes, "sha256_ok": ok,
                    "requests": len(server.responses),
                })
                say(f"   round {r + 1}: {dropped} drops, {resumes} resumes, fetched "
                    f"{fetched / size:.4f} x size, SHA-256 {'ok' if ok else 'WRONG'}, "
                    f"{wall:.2f} s")
                if not ok:
                    raise RuntimeError("the file transferred through drops is corrupt")
        finally:
            d.stop()
            server.stop()
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(out_dir, ignore_errors=True)
        self.raw["drops"] = {"size": size, "drops": n_drops, "runs": runs}

    def close(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()


ARIA2_QUIET = [
    "--file-allocation=none",
    "--console-log-level=error",
    "--summary-interval=0",
    "--download-result=hide",
    "--allow-overwrite=true",
    "--auto-file-renaming=false",
    "-q",
]


# ---- the table ---------------------------------------------------------------------------------


def summarize(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of (what, ferry, peer, ratio, target, met) from the raw figures."""
    rows: list[dict[str, Any]] = []

    def row(what: str, ferry_v: float | None, peer: str = "", peer_v: float | None = None,
            target: str = "", met: bool | None = None, fmt: str = "{:.3f}") -> None:
        ratio = ferry_v / peer_v if ferry_v is not None and peer_v else None
        rows.append({
            "what": what, "ferry": ferry_v, "peer": peer, "peer_value": peer_v,
            "ratio": ratio, "target": target, "met": met, "fmt": fmt,
        })

    big = raw.get("big")
    if big:
        mb = big["size"] // MIB
        runs = big["runs"]
        f_wall = median(x["wall"] for x in runs["ferry"])
        f_cpu = median(x["cpu"] for x in runs["ferry"])
        hwm = max(x["ferryd_hwm_kib"] for x in runs["ferry"]) * 1024 / MB
        for peer, target in (
            ("curl", TARGETS["big_vs_curl"]), ("aria2c", None), ("curl+fsync", None)
        ):
            if peer in runs:
                p = median(x["wall"] for x in runs[peer])
                row(f"{mb} MiB file, wall s", f_wall, peer, p,
                    f"<= {target}x" if target else "",
                    (f_wall / p <= target) if target else None)
        for peer in ("curl", "aria2c"):
            if peer in runs:
                row(f"{mb} MiB file, CPU s (ferryd+CLI)", f_cpu, peer,
                    median(x["cpu"] for x in runs[peer]))
        row(f"{mb} MiB file, ferryd peak RSS MB", hwm, fmt="{:.1f}")
    small = raw.get("small")
    if small:
        n = small["count"]
        runs = small["runs"]
        f_wall = median(x["wall"] for x in runs["ferry"])
        for peer, target in (("aria2c", TARGETS["small_vs_aria2c"]), ("curl", None)):
            if peer in runs:
                p = median(x["wall"] for x in runs[peer])
                label = "aria2c -j5" if peer == "aria2c" else "curl --parallel-max 5"
                row(f"{n} x 64 KiB, wall s", f_wall, label, p,
                    f"<= {target}x" if target else "",
                    (f_wall / p <= target) if target else None)
    ctl = raw.get("control")
    if ctl:
        rate = median(ctl["creations_per_s_runs"])
        row("job creations / s", rate, target=f">= {TARGETS['creations_per_s']:.0f}",
            met=rate >= TARGETS["creations_per_s"], fmt="{:.0f}")
        lst = median(ctl["list_cli_s_runs"])
        row(f"ferry --json list at {ctl['list_jobs']} jobs, s", lst,
            target=f"< {TARGETS['list_s']} s", met=lst < TARGETS["list_s"])
        row(f"  (the client call alone at {ctl['list_jobs']}), s",
            median(ctl["list_api_s_runs"]))
        idle = ctl["idle_rss_kib"] * 1024 / MB
        row("ferryd RSS idle, MB", idle, target=f"< {TARGETS['idle_rss_mb']:.0f}",
            met=idle < TARGETS["idle_rss_mb"], fmt="{:.1f}")
        row(f"ferryd RSS at {ctl['list_jobs']} jobs, MB", ctl["list_rss_kib"] * 1024 / MB,
            fmt="{:.1f}")
        rss = median(ctl["store_rss_kib_runs"]) * 1024 / MB
        row(f"ferryd RSS with {ctl['store_jobs']} stored jobs, MB", rss,
            target=f"< {TARGETS['store_rss_mb']:.0f}", met=rss < TARGETS["store_rss_mb"],
            fmt="{:.1f}")
        if "empty_restart_s" in ctl:
            row("restart to serving, empty store, s", ctl["empty_restart_s"])
        rs = median(ctl["restart_s_runs"])
        row(f"restart to serving with {ctl['store_jobs']} jobs, s", rs,
            target=f"< {TARGETS['restart_s']} s", met=rs < TARGETS["restart_s"])
    drops = raw.get("drops")
    if drops:
        worst = max(x["ratio"] for x in drops["runs"])
        row(f"bytes fetched / size, {drops['drops']} drops (worst round)", worst,
            target=f"<= {TARGETS['fetch_ratio']}", met=worst <= TARGETS["fetch_ratio"],
            fmt="{:.4f}")
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    head = ("what", "ferry", "peer", "peer value", "ferry / peer", "target", "met")
    lines = []
    for r in rows:
        fmt = r["fmt"]
        lines.append((
            r["what"],
            fmt.format(r["ferry"]) if r["ferry"] is not None else "",
            r["peer"],
            fmt.format(r["peer_value"]) if r["peer_value"] is not None else "",
            f"{r['ratio']:.2f}x" if r["ratio"] is not None else "",
            r["target"],
            {True: "yes", False: "NO", None: ""}[r["met"]],
        ))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=True)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for line in lines:
        out.append("| " + " | ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True))
                   + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, help="rounds per comparison (default 5; QUICK 1)")
    p.add_argument("--only", help="comma-separated: big,small,control,drops")
    p.add_argument("--no-micro", action="store_true", help="skip the micro-suite")
    p.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    args = p.parse_args(argv)
    q = quick()
    rounds = args.rounds or (1 if q else 5)
    wanted = (args.only or "big,small,control,drops").split(",")
    steps: dict[str, Callable[[Bench], None]] = {
        "big": Bench.big, "small": Bench.small, "control": Bench.control, "drops": Bench.drops,
    }
    unknown = set(wanted) - set(steps)
    if unknown:
        p.error(f"unknown comparisons: {', '.join(sorted(unknown))}")

    tools = ensure_tools(["nginx", "curl", "aria2c"])
    for name, path in tools.items():
        if path is None:
            say(f"note: {name} is not installed and could not be installed (not root?): "
                "the comparisons that need it are skipped")
    machine = machine_description()
    say(f"ferry benchmarks{' (QUICK)' if q else ''}, {rounds} round(s), "
        f"{machine['nproc']} CPUs ({machine['cpu']}), kernel {machine['kernel']}, "
        f"Python {machine['python']}")
    started = time.perf_counter()
    work = short_tmpdir("fb-")
    bench = Bench(work, rounds, tools)
    try:
        for name in wanted:
            steps[name](bench)
    finally:
        bench.close()
        shutil.rmtree(work, ignore_errors=True)
    rows = summarize(bench.raw)
    table = render(rows)
    say("")
    say(table)
    for s in bench.skipped:
        say(f"skipped: {s}")
    say(f"(total {time.perf_counter() - started:.0f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "machine": machine,
        "quick": q,
        "rounds": rounds,
        "tools": tools,
        "raw": bench.raw,
        "summary": [{k: v for k, v in r.items() if k != "fmt"} for r in rows],
        "table": table,
        "skipped": bench.skipped,
    }
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    say(f"raw figures: {args.out}")
    if not args.no_micro:
        say("")
        micro = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "micro.py")], env=child_env(
                {"QUICK": "1"} if q else None
            ), check=False,
        )
        if micro.returncode != 0:
            return micro.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
