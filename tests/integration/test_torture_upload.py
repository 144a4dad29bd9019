"""A short upload torture run inside ``make test`` (harness/torture_upload.py says what is
checked; ``make torture`` runs the long one): a few SIGKILLs of ferryd and of ferry-server
while small upload and upload-reply jobs run, then every upload, reply, destination,
temporary file and commit is checked. The seed is printed on failure (``report.summary()``
and the failures list name the jobs)."""

from __future__ import annotations

import random
from pathlib import Path

from harness.files import KIB, MIB
from harness.report import Report
from harness.torture_upload import upload_kill_phase


def test_upload_kills_lose_nothing_and_commit_once(short_tmp: Path) -> None:
    seed = random.randrange(100_000)
    report = Report()
    upload_kill_phase(
        short_tmp / "u",
        report,
        seed=seed,
        q=True,
        ferryd_kills=3,
        server_kills=2,
        duration=50.0,
        max_size=700 * KIB,
        active_jobs=4,
        rate=1 * MIB,
        interval=(0.5, 2.0),
        server_interval=(0.5, 3.0),
    )
    assert not report.failures, "\n".join([f"seed {seed}", report.summary(), *report.failures])
    assert report.upload_kills >= 3
    assert report.server_kills >= 2
    assert report.uploads_verified > 0
