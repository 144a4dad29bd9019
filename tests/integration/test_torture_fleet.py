"""The fleet torture phase, short (issue 16; the full one runs in ``make torture``): two
real ferryd fleet workers on a throwaway PostgreSQL, three SIGKILLs of a worker holding
leases mid-transfer, then every file, state, temporary, overlapping fetch, takeover and
stored secret checked (harness/torture_fleet.py says what exactly)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import secrets
from harness.env import short_tmpdir
from harness.postgres import available
from harness.report import Report
from harness.torture_fleet import fleet_kill_phase

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="fleet workers run as root here")


@pytest.fixture
def work() -> Iterator[Path]:
    path = short_tmpdir("tf-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_fleet_workers_killed_mid_transfer_lose_nothing(work: Path) -> None:
    why = available()
    if why:
        pytest.skip(why)
    report = Report()
    fleet_kill_phase(work, report, seed=1616, q=True, kills=3, workers=2, lease=2.0, timeout=240)
    secrets.scan_tree(work, report)  # the workers' logs, the shared directory
    assert not report.failures, report.failures
    assert report.fleet_kills == 3
    assert len(report.fleet_takeovers) == 3
    assert report.fleet_files_verified > 0
    assert report.secrets_markers > 0 and report.secrets_files > 0
    assert "3 fleet worker kills" in report.summary()
