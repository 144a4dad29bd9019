"""What was uploaded to ferry-server, fetched back by a ferry download job through a real
ferryd (GET with ranges is what the download engine uses)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from harness.ferryd import Daemon
from harness.upserver import FerryServer, upload
from harness.wait import wait_state

from tests.helpers.jobs import act, add, create, files, temps


def test_download_what_was_uploaded(
    ferryd: Daemon, base: Path, servers: list[FerryServer], dest: Path
) -> None:
    s = FerryServer(base / "root", state_dir=base / "state").start()
    servers.append(s)
    data = os.urandom(5 << 20)
    upload(s.port, "/back.bin", data, chunk=1 << 20)
    job = create(ferryd, "roundtrip")
    add(ferryd, job, s.url("/back.bin"), dest / "back.bin", sha256=hashlib.sha256(data).hexdigest())
    act(ferryd, job, "resume")
    j = wait_state(ferryd, job, "TRANSFERRED", "ERROR", "TRANSIENT_ERROR", timeout=120)
    assert j["state"] == "TRANSFERRED", j
    assert files(ferryd, job)[0]["bytes_total"] == len(data)
    assert act(ferryd, job, "complete")["result"]["code"] == "S_OK"
    assert (dest / "back.bin").read_bytes() == data
    assert temps(dest) == []
