"""A short ferry-server fuzzing run inside ``make test`` (harness/serverfuzz.py says what is
sent and checked; ``make torture`` runs 10,000 requests), and proof that its invariants
catch what they claim to: violations planted while it runs are reported."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

from harness.report import Report
from harness.serverfuzz import World, probe, server_fuzz_phase


def test_server_fuzz_short(short_tmp: Path) -> None:
    report = Report()
    server_fuzz_phase(short_tmp / "s", report, seed=random.randrange(100_000), q=True,
                      requests=400, duration=120.0)
    assert not report.failures, "\n".join([report.summary(), *report.failures])
    assert report.server_requests >= 400
    assert report.server_checks > 0
    assert f"ferry-server: {report.server_requests} raw requests" in report.summary()


def test_planted_violations_are_caught(short_tmp: Path) -> None:
    planted: list[str] = []

    bases: set[Path] = set()

    def plant(w: World) -> None:
        bases.add(w.base)
        if w.cases == 5:
            (w.outside / "planted-outside").write_text("x")
            planted.append("outside")
        elif w.cases == 10:
            (w.root / "d" / "planted-in-root").write_text("x")
            planted.append("root")
        elif w.cases == 15:
            live = [s for s in w.sessions if s.state == "open" and not s.held
                    and (w.data_size(s) or 0) > 0]
            if live:
                with open(w.session_dir(live[-1]) / "data", "r+b") as f:
                    first = f.read(1)[0]
                    f.seek(0)
                    f.write(bytes([first ^ 0xFF]))
                planted.append("data")
                probe(w, live[-1])  # what every 25th case and the end do for each session

    report = Report()
    try:
        server_fuzz_phase(short_tmp / "s", report, seed=4242, q=True, requests=150,
                          duration=120.0, hook=plant)
    finally:
        for b in bases:  # kept (on tmpfs) because of the failures planted
            shutil.rmtree(b, ignore_errors=True)
    text = "\n".join(report.failures)
    assert "outside the root changed" in text and "planted-outside" in text
    assert "d/planted-in-root appeared in the root" in text
    if "data" in planted:
        assert "stored bytes differ from the upload's at offset 0" in text
    assert set(report.kinds) == {"server-fuzz"}
