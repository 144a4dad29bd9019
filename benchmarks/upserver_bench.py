"""ferry-server's own cost of receiving: CPU seconds per GiB received, and throughput.

    python benchmarks/upserver_bench.py [--size MIB] [--fragments 1,8,32] [--rounds N]

A real ferry-server (its root and state directory on the same file system, so Close is a
rename) receives one upload per fragment size from a raw client in this process: one
keep-alive connection, Create-Session, Fragments sent with ``socket.sendfile`` (the client
costs next to nothing), Close-Session. The server's user + system CPU time comes from
/proc/PID/stat before and after; every fragment is fsynced before its Ack, so the figures
include durability. QUICK=1: 256 MiB, one round. Raw figures: benchmarks/results/upserver.json.
(ferry's upload client against curl -T is measured by the client side's benchmark.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.env import ROOT, say, short_tmpdir  # noqa: E402
from harness.files import MIB, make_file  # noqa: E402
from harness.upserver import FerryServer, bits, read_answer  # noqa: E402

from benchmarks.common import machine_description, median, quick  # noqa: E402

GIB = 1 << 30


def one_upload(server: FerryServer, src: Path, name: str, fragment: int) -> dict[str, float]:
    size = src.stat().st_size
    with socket.create_connection(("127.0.0.1", server.port), 300) as sock, open(src, "rb") as f:
        sid = bits(server.port, name, "Create-Session", sock=sock).h("BITS-Session-Id")
        assert sid
        cpu0, t0 = server.cpu_seconds(), time.perf_counter()
        off = 0
        while off < size:
            n = min(fragment, size - off)
            head = (
                f"BITS_POST {name} HTTP/1.1\r\nHost: 127.0.0.1\r\nBITS-Packet-Type: Fragment\r\n"
                f"BITS-Session-Id: {sid}\r\nContent-Length: {n}\r\n"
                f"Content-Range: bytes {off}-{off + n - 1}/{size}\r\n\r\n"
            ).encode()
            sock.sendall(head)
            sock.sendfile(f, off, n)
            a = read_answer(sock)
            assert a.status == 200, (a.status, a.headers)
            off = int(a.h("BITS-Received-Content-Range") or 0)
        a = bits(server.port, name, "Close-Session", sid, sock=sock)
        assert a.status == 200, a.headers
        wall, cpu = time.perf_counter() - t0, server.cpu_seconds() - cpu0
    out = server.root / name.lstrip("/")
    assert out.stat().st_size == size
    out.unlink()
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "cpu_s_per_gib": cpu * GIB / size,
        "mib_per_s": size / MIB / wall,
    }


def main() -> None:
    q = quick()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256 if q else 1024, help="MiB per upload")
    ap.add_argument("--fragments", default="1,8,32", help="fragment sizes in MiB")
    ap.add_argument("--rounds", type=int, default=1 if q else 3)
    args = ap.parse_args()
    work = short_tmpdir("fyb-")
    try:
        (work / "root").mkdir()
        src = work / "src.bin"
        make_file(src, args.size * MIB)
        server = FerryServer(work / "root", state_dir=work / "root" / ".ferry-server").start()
        results: dict[str, Any] = {"machine": machine_description(), "size_mib": args.size}
        try:
            for frag in [int(x) for x in args.fragments.split(",")]:
                runs = [
                    one_upload(server, src, f"/up-{frag}-{r}.bin", frag * MIB)
                    for r in range(args.rounds)
                ]
                results[f"fragment_{frag}mib"] = {
                    "runs": runs,
                    "cpu_s_per_gib": median(r["cpu_s_per_gib"] for r in runs),
                    "mib_per_s": median(r["mib_per_s"] for r in runs),
                }
        finally:
            server.stop()
        say(f"ferry-server receiving {args.size} MiB (median of {args.rounds}):")
        say(f"  {'fragment':>10} {'CPU s/GiB':>10} {'MiB/s':>8}")
        for key, val in results.items():
            if key.startswith("fragment_"):
                frag = key.removeprefix("fragment_")
                say(f"  {frag:>10} {val['cpu_s_per_gib']:>10.2f} {val['mib_per_s']:>8.0f}")
        out = ROOT / "benchmarks" / "results"
        out.mkdir(exist_ok=True)
        (out / "upserver.json").write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        os.sync()


if __name__ == "__main__":
    main()
