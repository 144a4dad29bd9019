"""Bandwidth and network conditions (SPEC §10) on a shaped link, part of ``make bench``.

    python benchmarks/bandwidth.py [--rounds N]

Two network namespaces made for the run (root only), joined by a veth pair shaped with
``tc tbf`` on the server's egress (40 Mbit/s, burst 64 kB, latency 400 ms: a deep queue, so
a saturated link shows queueing delay); nginx in one, ferryd and curl in the other. Figures
(medians over the rounds; QUICK=1: one round):

1. ``curl_share``  a foreground ``curl`` download's throughput over 10 s while a background
   (normal priority) ferry job runs beside it, over its throughput alone. Target >= 85 %.
2. ``ferry_link``  a background ferry job alone: its throughput over 10 s over the link's
   rate. Target >= 80 %.
3. ``limit_error`` a background job under ``background_limit`` = 1 MB/s: its payload rate
   over 10 s against the limit. Target within +-5 %.
4. ``limit_lag``   after ``ferry reload`` lowers the limit to 300 kB/s, the time from which
   the wire rate (veth counters, less header bytes), averaged to the end of a 6 s span, is
   within 10 % of the new limit. Target <= 1 s.
5. ``back_lag``    a job held offline (``ip link set down``): from ``ip link set up`` to the
   first 64 kB on the wire. Target <= 2 s.

Raw figures go to benchmarks/results/bandwidth.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import netns  # noqa: E402
from harness.env import ROOT, say  # noqa: E402
from harness.ferryd import Daemon  # noqa: E402

from benchmarks.common import median, quick  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
LINK_RATE = 40_000_000 / 8  # bytes/s of the shaped link
WINDOW = 10.0
FILE_SIZE = 1 << 30  # sparse: nginx serves it, nothing is read from disk


class NetnsDaemon(Daemon):
    def __init__(self, ns: str, base: Path, **kw: Any) -> None:
        super().__init__(base, **kw)
        self.ns = ns

    def command(self) -> list[str]:
        return [netns.IP, "netns", "exec", self.ns, *super().command()]


def rx_bytes(pair: netns.NetnsPair) -> int:
    out = subprocess.run(
        [netns.IP, "netns", "exec", pair.client, "cat",
         f"/sys/class/net/{pair.client_dev}/statistics/rx_bytes"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(out.stdout)


def curl_rate(pair: netns.NetnsPair, url: str, seconds: float) -> float:
    """curl's average download rate (bytes/s) over ``seconds`` (it is stopped then)."""
    proc = subprocess.run(
        [*pair.prefix(pair.client), "curl", "-s", "-o", "/dev/null", "--max-time",
         str(seconds), "-w", "%{speed_download}", url],
        capture_output=True, text=True,
    )  # fmt: skip
    return float(proc.stdout.strip() or 0)


def new_job(d: Daemon, url: str, dest: Path, priority: str = "normal") -> str:
    status, job = d.call("POST", "/v1/jobs", {"display_name": dest.name, "priority": priority})
    assert status == 201, job
    jid = str(job["id"])
    status, body = d.call(
        "POST", f"/v1/jobs/{jid}/files", {"files": [{"remote_name": url, "local_name": str(dest)}]}
    )
    assert status == 200, body
    status, body = d.call("POST", f"/v1/jobs/{jid}/resume", {})
    assert status == 200, body
    return jid


def cancel(d: Daemon, jid: str) -> None:
    d.call("POST", f"/v1/jobs/{jid}/cancel", {})


def progress(d: Daemon, jid: str) -> int:
    return int(d.call("GET", f"/v1/jobs/{jid}")[1]["progress"]["bytes_transferred"])


def payload_rate(d: Daemon, jid: str, seconds: float) -> float:
    """The job's payload rate between checkpoints ``seconds`` apart: progress is reported
    at checkpoints (about once a second), so the rate is taken between two reports."""

    def next_report(after: int) -> tuple[int, float]:
        while True:
            value = progress(d, jid)
            if value != after:
                return value, time.monotonic()
            time.sleep(0.02)

    b1, t1 = next_report(progress(d, jid))
    time.sleep(seconds - 1.0)
    b2, t2 = next_report(progress(d, jid))
    return (b2 - b1) / (t2 - t1)


def wait_rx(pair: netns.NetnsPair, predicate: Any, timeout: float, window: float = 0.25) -> float:
    """Seconds until the wire rate over ``window`` satisfies ``predicate``."""
    t0 = time.monotonic()
    last_b, last_t = rx_bytes(pair), t0
    while time.monotonic() - t0 < timeout:
        time.sleep(window)
        b, t = rx_bytes(pair), time.monotonic()
        if predicate((b - last_b) / (t - last_t)):
            return t - t0
        last_b, last_t = b, t
    return float("inf")


WIRE_OVERHEAD = 1514 / 1448  # Ethernet + IP + TCP (with timestamps) bytes per payload byte


def settle_time(pair: netns.NetnsPair, limit: float, span: float) -> float:
    """Seconds from now until the new ``limit`` is in force: the earliest time from which
    the wire rate, averaged from then to the end of ``span`` (at least 3 s), is within 10 %
    of the limit (plus header bytes). A throttled download arrives in bursts of a receive
    buffer's worth (TCP's window opens when ferry reads), so short windows would measure the
    bursts, not the rate."""
    t0 = time.monotonic()
    samples: list[tuple[float, int]] = []
    while time.monotonic() - t0 < span:
        samples.append((time.monotonic() - t0, rx_bytes(pair)))
        time.sleep(0.05)
    t_end, b_end = samples[-1]
    for t, b in samples:
        if t_end - t < 3.0:
            break
        if (b_end - b) / (t_end - t) <= limit * WIRE_OVERHEAD * 1.1:
            return t
    return float("inf")


def one_round(work: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    with netns.NetnsPair() as pair:
        pair.shape("40mbit", "64kb", "400ms")
        root = work / "www"
        root.mkdir(exist_ok=True)
        big = root / "big.bin"
        if not big.exists():
            with open(big, "wb") as f:
                f.truncate(FILE_SIZE)
        server = netns.NetnsNginx(pair, root, work / "nginx").start()
        dest = work / "dest"
        dest.mkdir(exist_ok=True)
        base = Path(tempfile.mkdtemp(prefix="fybw-", dir="/tmp"))
        d = NetnsDaemon(pair.client, base / "d", config="")
        try:
            d.start()
            url = server.url("big.bin")
            # 1. curl alone, then beside a background ferry job.
            solo = curl_rate(pair, url, WINDOW)
            jid = new_job(d, url, dest / "bg1.bin")
            time.sleep(3.0)
            shared = curl_rate(pair, url, WINDOW)
            out["curl_solo_Bps"] = solo
            out["curl_shared_Bps"] = shared
            out["curl_share"] = shared / solo
            say(f"   curl solo {solo:.0f} B/s, beside ferry {shared:.0f} B/s")
            # 2. ferry alone (the same job, once curl has gone).
            time.sleep(2.0)
            alone = payload_rate(d, jid, WINDOW)
            out["ferry_alone_Bps"] = alone
            out["ferry_link"] = alone / LINK_RATE
            cancel(d, jid)
            # 3. the background limit.
            assert d.config_path is not None
            d.config_path.write_text('[bandwidth]\nbackground_limit = 1000000\n')
            d.call("POST", "/v1/reload", {})
            jid = new_job(d, url, dest / "bg2.bin")
            time.sleep(2.0)
            limited = payload_rate(d, jid, WINDOW)
            out["limited_Bps"] = limited
            out["limit_error"] = limited / 1_000_000 - 1
            # 4. a new limit.
            d.config_path.write_text('[bandwidth]\nbackground_limit = 300000\n')
            d.call("POST", "/v1/reload", {})
            out["limit_lag_s"] = settle_time(pair, 300_000, 7.0)
            cancel(d, jid)
            d.config_path.write_text("")
            d.call("POST", "/v1/reload", {})
            # 5. offline and back.
            jid = new_job(d, url, dest / "bg3.bin")
            time.sleep(2.0)
            pair.link_down()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                job = d.call("GET", f"/v1/jobs/{jid}")[1]
                if job["waiting"]:
                    break
                time.sleep(0.05)
            time.sleep(1.0)
            before = rx_bytes(pair)
            t0 = time.monotonic()
            pair.link_up()
            out["back_lag_s"] = float("inf")
            while time.monotonic() - t0 < 15:
                if rx_bytes(pair) - before >= 64 << 10:
                    out["back_lag_s"] = time.monotonic() - t0
                    break
                time.sleep(0.02)
            cancel(d, jid)
        finally:
            if d.alive():
                d.stop()
            server.stop()
            for f in dest.iterdir():
                f.unlink()
            shutil.rmtree(base, ignore_errors=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=1 if quick() else 3)
    args = p.parse_args()
    why = netns.missing()
    if why:
        say(f"bandwidth benchmark skipped: {why}")
        return 0
    if subprocess.run(["which", "curl"], capture_output=True).returncode != 0:
        say("bandwidth benchmark skipped: curl is not installed")
        return 0
    rounds: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="fybw-") as tmp:
        for i in range(args.rounds):
            say(f"== bandwidth round {i + 1}/{args.rounds}")
            rounds.append(one_round(Path(tmp)))
            say("   " + json.dumps({k: round(v, 3) for k, v in rounds[-1].items()}))
    med = {k: median(r[k] for r in rounds) for k in rounds[0]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bandwidth.json").write_text(json.dumps({"rounds": rounds, "median": med}, indent=2))
    rows = [
        ("foreground curl beside a background job", f"{med['curl_share']:.0%} of solo", ">= 85 %"),
        ("background ferry alone", f"{med['ferry_link']:.0%} of the link", ">= 80 %"),
        ("background limit 1 MB/s over 10 s", f"{med['limit_error']:+.1%}", "within +-5 %"),
        ("new limit in force after", f"{med['limit_lag_s']:.2f} s", "<= 1 s"),
        ("transferring again after link up", f"{med['back_lag_s']:.2f} s", "<= 2 s"),
    ]
    say(f"\nbandwidth (40 Mbit/s tbf link, medians of {len(rounds)} rounds)")
    for what, got, target in rows:
        say(f"  {what:<42} {got:>18}   target {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
