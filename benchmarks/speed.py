"""The issue #15 ("Speed") benchmarks in one run, each side by side with its peer:

1. CLI start: ``ferry --version``, ``ferry list``, ``ferry --json list`` beside
   ``python -c pass`` and ``curl --version`` (cli_bench: wall medians, callgrind
   instruction counts);
2. job creations over the socket, durable before each answer: one sequential client and
   8 concurrent ones (create_bench);
3. N x 64 KiB with ``ferry transfer`` (CLI with its bar, CLI ``--json``) and the library vs
   ``aria2c -j5`` and curl, on tmpfs and on disk (transfer_bench small);
4. one big file, 512 MiB and (not QUICK, and only where /dev/shm has room for it on tmpfs)
   2 GiB, with ``ferry transfer`` (bar and ``--json``) and the library vs curl and
   curl+fsync, on tmpfs and on disk (transfer_bench big);
5. restart to serving with 100,000 stored jobs, and RSS then (restart_bench).

At the end the issue's table — every target, the figure, the peer, the ratio, met or not —
is printed and written as markdown to ``benchmarks/results/speed.md`` (ready to paste into
benchmarks/README.md), the raw figures to ``benchmarks/results/speed.json``.

    .venv/bin/python -m benchmarks.speed          (QUICK=1: smaller and fewer rounds)
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import cli_bench, create_bench, restart_bench, transfer_bench  # noqa: E402
from benchmarks.common import machine_description, quick  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else float("nan")


def table(results: dict[str, Any]) -> list[list[str]]:
    """The issue's table: what, ferry, peer, peer value, ferry / peer, target, met."""
    rows: list[list[str]] = []

    def row(what: str, ferry: str, peer: str = "", peer_value: str = "", ratio: float | None = None,
            target: str = "", met: bool | None = None) -> None:  # fmt: skip
        rows.append([what, ferry, peer, peer_value,
                     "" if ratio is None or math.isnan(ratio) else f"{ratio:.2f}x", target,
                     "" if met is None else ("yes" if met else "**no**")])  # fmt: skip

    cli = results.get("cli")
    if cli:
        base = cli["python -c pass"]
        for name, target_ms in (("ferry --version", 40), ("ferry list", 80),
                                ("ferry --json list", 80), ("ferry --json info job3", None),
                                ("python -m ferry.cli --version", None)):  # fmt: skip
            r = cli.get(name)
            if r is None:
                continue
            ins, bins = r["instructions"], base["instructions"]
            ins_text = f", {ins / 1e6:.1f} M instr." if ins else ""
            jobs = " (10 jobs)" if "list" in name or "info" in name else ""
            row(f"`{name}`{jobs}, wall ms (median)", f"{r['wall_median_ms']:.1f}{ins_text}",
                "python -c pass",
                f"{base['wall_median_ms']:.1f}" + (f", {bins / 1e6:.1f} M instr." if bins else ""),
                _ratio(ins, bins) if ins and bins else _ratio(r["wall_median_ms"],
                                                               base["wall_median_ms"]),
                f"<= {target_ms} ms" if target_ms else "",
                r["wall_median_ms"] <= target_ms if target_ms else None)  # fmt: skip
        if "curl --version" in cli:
            c = cli["curl --version"]
            row("`curl --version`, wall ms (median)", f"{c['wall_median_ms']:.1f}")
    for key in ("small", "big512", "big2048"):
        for r in results.get(key) or []:
            med = r["median"]
            small = key == "small"
            dest = r["dest"]
            for tool in [t for t in med if t.startswith("ferry")]:
                what = f"{r['what']} to {dest}, {TOOL_TEXT.get(tool, tool)}, wall s"
                if small:
                    ratio = _ratio(med[tool], med["aria2c"])
                    row(what, f"{med[tool]:.3f}", "aria2c -j5", f"{med['aria2c']:.3f}", ratio,
                        "<= 0.8x", ratio <= 0.8)  # fmt: skip
                    row(what, f"{med[tool]:.3f}", "curl --parallel-max 5", f"{med['curl']:.3f}",
                        _ratio(med[tool], med["curl"]))  # fmt: skip
                elif dest == "tmpfs":
                    ratio = _ratio(med[tool], med["curl"])
                    row(what, f"{med[tool]:.3f}", "curl", f"{med['curl']:.3f}", ratio, "<= 1.0x",
                        ratio <= 1.0)  # fmt: skip
                else:
                    ratio = _ratio(med[tool], med["curl+fsync"])
                    row(what, f"{med[tool]:.3f}", "curl+fsync", f"{med['curl+fsync']:.3f}", ratio,
                        "<= 1.0x", ratio <= 1.0)  # fmt: skip
                    ratio = _ratio(med[tool], med["curl"])
                    row(what, f"{med[tool]:.3f}", "curl", f"{med['curl']:.3f}", ratio, "<= 1.25x",
                        ratio <= 1.25)  # fmt: skip
            row(f"{r['what']} to {dest}, ferryd CPU s a run (median)", f"{r['ferryd_cpu']:.3f}")
    cr = results.get("create")
    if cr:
        row("job creations / s, one sequential client", f"{cr['sequential']:,.0f}",
            target=">= 2,000", met=cr["sequential"] >= 2000)  # fmt: skip
        row("job creations / s, 8 concurrent clients", f"{cr['concurrent']:,.0f}",
            target=">= 5,000", met=cr["concurrent"] >= 5000)  # fmt: skip
    rs = results.get("restart")
    if rs:
        row(f"restart to serving with {rs['jobs']:,} jobs, s", f"{rs['full']:.3f}",
            "empty store", f"{rs['empty']:.3f}", target="< 1 s", met=rs["full"] < 1.0)  # fmt: skip
        row("ferryd RSS then, MB", f"{rs['rss_mb']:.1f}", target="< 150 MB",
            met=rs["rss_mb"] < 150)  # fmt: skip
    return rows


TOOL_TEXT = {
    "ferry CLI, bar": "`ferry transfer` (bar on a tty)",
    "ferry CLI": "`ferry --json transfer`",
    "ferry library": "library (`ferry.Client`)",
    "ferry CLI, B": "`ferry --json transfer`, ferryd B",
}


def markdown(results: dict[str, Any], header: dict[str, str]) -> str:
    head = ["what", "ferry", "peer", "peer value", "ferry / peer", "target", "met"]
    rows = table(results)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(head)]  # fmt: skip

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(cells)) + " |"

    out = [
        f"`benchmarks/speed.py`{' (QUICK)' if results.get('quick') else ''}, "
        f"{header.get('date', '')}: nproc {header.get('nproc', '?')}, "
        f"{header.get('cpu', '?')}, kernel {header.get('kernel', '?')}, Python "
        f"{header.get('python', '?')}; load average at the start {results.get('load', '?')}, "
        f"at the end {results.get('load_end', '?')}. Medians of alternating rounds; "
        "wall times move with the machine's load, ratios and instruction counts much less.",
        "",
        line(head),
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    out += [line(r) for r in rows]
    return "\n".join(out) + "\n"


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main() -> int:
    q = quick()
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # the parts print as they go
    header = machine_description()
    for key, value in header.items():
        print(f"{key}: {value}")
    results: dict[str, Any] = {"quick": q, "load": _load()}
    started = time.monotonic()
    print("== 1. CLI start", flush=True)
    results["cli"] = cli_bench.measure(5 if q else 15)
    print(cli_bench.render(results["cli"]))
    print("== 2. job creations", flush=True)
    results["create"] = create_bench.run(["500" if q else "2000", "1" if q else "3"])
    print("== 3. small files", flush=True)
    results["small"] = transfer_bench.run(["small", "200" if q else "1000", "1" if q else "5"])
    print("== 4. one big file", flush=True)
    results["big512"] = transfer_bench.run(["big", "128" if q else "512", "1" if q else "5"])
    if not q:
        results["big2048"] = transfer_bench.run(["big", "2048", "3"])
    print("== 5. restart", flush=True)
    results["restart"] = restart_bench.run(["10000" if q else "100000", "1" if q else "3"])
    results["load_end"] = _load()
    results["seconds"] = time.monotonic() - started
    md = markdown(results, header)
    print("== the issue's table (benchmarks/results/speed.md)")
    print(md)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "speed.md").write_text(md)
    (RESULTS / "speed.json").write_text(
        json.dumps({"machine": header, **results}, indent=2, default=str) + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
