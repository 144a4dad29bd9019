"""ferry's upload client against curl -T, side by side in one run, on loopback.

    python benchmarks/upload_bench.py [--size MIB] [--rounds N] [--small N] [--only big,small]

* big: one file (512 MiB; QUICK=1: 128 MiB) uploaded by a ferry upload job to a real
  ferry-server (create, add, resume, TRANSFERRED, complete = Close-Session: the file is at
  its destination), against ``curl -T`` of the same file to nginx with WebDAV PUT
  (``dav_methods PUT``, nginx-light's dav module). Reports each one's wall time, the ratio
  (target: ferry <= 1.3 x curl), and ferry-server's CPU seconds per GiB during ferry's runs.
  ferry-server fsyncs every fragment before acknowledging it; nginx does not fsync a PUT.
* small: 1,000 uploads of 64 KiB (QUICK=1: 200) as 1,000 ferry upload jobs (created,
  resumed, transferred and completed; ferryd's default of 4 background jobs at a time)
  against 1,000 ``curl -T`` to nginx in a 5-way parallel loop (``xargs -P 5``): jobs/s and
  uploads/s.

Raw figures: benchmarks/results/upload.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.env import ROOT, say, short_tmpdir, which  # noqa: E402
from harness.ferryd import Daemon  # noqa: E402
from harness.files import MIB, make_file  # noqa: E402
from harness.upserver import FerryServer  # noqa: E402
from harness.wait import wait_state  # noqa: E402

from benchmarks.common import machine_description, median, quick  # noqa: E402
from ferry import Client  # noqa: E402

GIB = 1 << 30
NGINX_CONF = """
{user}
worker_processes 1;
error_log {dir}/error.log;
pid {dir}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    client_max_body_size 0;
    sendfile on;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
        }}
    }}
}}
"""


class DavNginx:
    """nginx (foreground, our child) serving PUT into ``root`` on a free port."""

    def __init__(self, work: Path, root: Path) -> None:
        self.dir = work / "nginx"
        self.dir.mkdir()
        (self.dir / "body").mkdir()
        self.root = root
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DavNginx:
        import socket

        binary = which("nginx")
        assert binary, "nginx is not installed"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        conf = self.dir / "nginx.conf"
        # As root, nginx's worker would switch to nobody, who may not write the temporary tree.
        user = "user root root;" if os.geteuid() == 0 else ""
        conf.write_text(
            NGINX_CONF.format(user=user, dir=self.dir, port=self.port, root=self.root)
        )
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf), "-p", str(self.dir), "-e", str(self.dir / "error.log"),
             "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError((self.dir / "error.log").read_text())

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def ferry_big(ferryd: Daemon, server: FerryServer, src: Path, name: str) -> dict[str, float]:
    size = src.stat().st_size
    with Client(ferryd.socket) as c:
        cpu0, t0 = server.cpu_seconds(), time.perf_counter()
        job = c.create_job(name, type="upload")
        job.add_file(server.url(f"/{name}"), str(src))
        job.resume()
        body = wait_state(ferryd, job.id, "TRANSFERRED", "ERROR", timeout=600, every=0.01)
        assert body["state"] == "TRANSFERRED", body["error"]
        job.complete()
        wall, cpu = time.perf_counter() - t0, server.cpu_seconds() - cpu0
    out = server.root / name
    assert out.stat().st_size == size
    out.unlink()
    return {
        "wall_s": wall,
        "mib_per_s": size / MIB / wall,
        "server_cpu_s_per_gib": cpu * GIB / size,
    }


def curl_big(nginx: DavNginx, src: Path, name: str) -> dict[str, float]:
    size = src.stat().st_size
    t0 = time.perf_counter()
    subprocess.run(
        ["curl", "-sS", "-f", "-T", str(src), f"http://127.0.0.1:{nginx.port}/{name}",
         "-o", "/dev/null"],
        check=True,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    out = nginx.root / name
    assert out.stat().st_size == size
    out.unlink()
    return {"wall_s": wall, "mib_per_s": size / MIB / wall}


def ferry_small(
    ferryd: Daemon, server: FerryServer, srcs: list[Path], tag: str
) -> dict[str, float]:
    (server.root / tag).mkdir()  # ferry-server wants the destination's directory
    with Client(ferryd.socket) as c:
        t0 = time.perf_counter()
        jobs = []
        for i, src in enumerate(srcs):
            job = c.create_job(f"{tag}-{i}", type="upload")
            job.add_file(server.url(f"/{tag}/{i}"), str(src))
            job.resume()
            jobs.append(job)
        for job in jobs:
            body = wait_state(ferryd, job.id, "TRANSFERRED", "ERROR", timeout=600, every=0.01)
            assert body["state"] == "TRANSFERRED", body["error"]
            job.complete()
        wall = time.perf_counter() - t0
    assert len(list((server.root / tag).iterdir())) == len(srcs)
    shutil.rmtree(server.root / tag)
    return {"wall_s": wall, "jobs_per_s": len(srcs) / wall}


def curl_small(nginx: DavNginx, srcs: list[Path], tag: str) -> dict[str, float]:
    lines = "".join(f"{src}\n" for src in srcs).encode()
    t0 = time.perf_counter()
    subprocess.run(
        ["xargs", "-P", "5", "-I{}", "curl", "-sS", "-f", "-T", "{}", "-o", "/dev/null",
         f"http://127.0.0.1:{nginx.port}/{tag}/"],
        input=lines, check=True,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    assert len(list((nginx.root / tag).iterdir())) == len(srcs)
    shutil.rmtree(nginx.root / tag)
    return {"wall_s": wall, "uploads_per_s": len(srcs) / wall}


def main() -> None:
    q = quick()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=128 if q else 512, help="MiB of the big file")
    ap.add_argument("--rounds", type=int, default=1 if q else 3)
    ap.add_argument("--small", type=int, default=200 if q else 1000, help="64 KiB uploads")
    ap.add_argument("--only", default="big,small")
    args = ap.parse_args()
    only = set(args.only.split(","))
    if not which("nginx") or not which("curl"):
        say("upload_bench: nginx and curl are needed (apt-get install nginx-light curl)")
        return
    work = short_tmpdir("fyub-")
    results: dict[str, Any] = {"machine": machine_description(), "size_mib": args.size}
    ferryd = server = nginx = None
    try:
        for d in ("root", "dav", "src"):
            (work / d).mkdir()
        server = FerryServer(work / "root", state_dir=work / "root" / ".ferry-server").start()
        nginx = DavNginx(work, work / "dav").start()
        ferryd = Daemon(work / "ferryd", log_level="warning")
        ferryd.start()
        if "big" in only:
            src = work / "src" / "big.bin"
            make_file(src, args.size * MIB)
            ferry_runs, curl_runs = [], []
            for r in range(args.rounds):
                curl_runs.append(curl_big(nginx, src, f"big-{r}.bin"))
                ferry_runs.append(ferry_big(ferryd, server, src, f"big-{r}.bin"))
            f_wall = median(x["wall_s"] for x in ferry_runs)
            c_wall = median(x["wall_s"] for x in curl_runs)
            results["big"] = {
                "ferry": ferry_runs, "curl": curl_runs, "ferry_wall_s": f_wall,
                "curl_wall_s": c_wall, "ratio": f_wall / c_wall,
                "server_cpu_s_per_gib": median(x["server_cpu_s_per_gib"] for x in ferry_runs),
            }  # fmt: skip
            src.unlink()
        if "small" in only:
            srcs = []
            for i in range(args.small):
                p = work / "src" / f"s{i}.bin"
                p.write_bytes(os.urandom(64 << 10))
                srcs.append(p)
            f = ferry_small(ferryd, server, srcs, "small")
            c = curl_small(nginx, srcs, "small")
            results["small"] = {"count": args.small, "ferry": f, "curl": c,
                                "ratio_rate": f["jobs_per_s"] / c["uploads_per_s"]}  # fmt: skip
    finally:
        for thing in (ferryd, server, nginx):
            if thing is not None:
                thing.stop()
        shutil.rmtree(work, ignore_errors=True)
    if "big" in results:
        b = results["big"]
        say(f"upload {args.size} MiB (median of {args.rounds}): ferry -> ferry-server "
            f"{b['ferry_wall_s']:.2f} s, curl -T -> nginx PUT {b['curl_wall_s']:.2f} s, "
            f"ratio {b['ratio']:.2f} (target <= 1.3); ferry-server CPU "
            f"{b['server_cpu_s_per_gib']:.2f} s/GiB")  # fmt: skip
    if "small" in results:
        s = results["small"]
        say(f"{s['count']} x 64 KiB: ferry {s['ferry']['jobs_per_s']:.0f} jobs/s "
            f"({s['ferry']['wall_s']:.1f} s), curl -T x5 {s['curl']['uploads_per_s']:.0f} "
            f"uploads/s ({s['curl']['wall_s']:.1f} s)")  # fmt: skip
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "upload.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
