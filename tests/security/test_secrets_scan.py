"""The secrets scan of the torture run (harness/secrets.py, issue 16): the scanner finds a
marker in every form a leak could take and nowhere else, and the short secrets phase
(harness/torture_secrets.py) — real jobs with passwords, write-only headers and a client
key against Apache, squid and https servers, ferryd killed while they are in use — leaks
none of them in logs, events, notifications, API answers, CLI output or the store."""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from harness import secrets
from harness.env import short_tmpdir
from harness.report import Report
from harness.secrets import Registry
from harness.torture_secrets import secrets_phase


class Quiet(Report):
    """A report that does not print the hits these tests plant on purpose."""

    def fail(self, msg: str, kind: str = "other") -> None:
        self.failures.append(msg)
        self.kinds.append(kind)


@pytest.fixture
def work() -> Iterator[Path]:
    path = short_tmpdir("ts-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_every_form_of_a_marker_is_found() -> None:
    reg = Registry()
    pw = reg.marker("basic")
    forms = {
        "plain": pw.encode(),
        "basic header": b"Authorization: Basic " + base64.b64encode(f"bob:{pw}".encode()),
        "base64 offset 2": base64.b64encode(b"ab" + pw.encode()),
        "urlsafe": base64.urlsafe_b64encode(b"x" + pw.encode() + b"yz"),
        "hex": pw.encode().hex().encode(),
        "HEX": pw.encode().hex().upper().encode(),
        "url-encoded": quote(pw, safe="").encode(),
        "utf-16": pw.encode("utf-16-le"),
        "utf-16-be": pw.encode("utf-16-be"),
        "json": ('{"p": "' + pw.replace("/", "\\/") + '"}').encode(),
    }
    for what, data in forms.items():
        report = Quiet()
        assert reg.scan_bytes(b"prefix " + data + b" suffix", what, report) >= 1, what
        assert report.kinds == ["secret-leak"] * len(report.kinds), what
    report = Quiet()
    other = Registry().marker("basic")  # a different secret: no hit
    assert reg.scan_bytes(other + base64.b64encode(other.encode()).decode(), "x", report) == 0
    assert not report.failures


def test_the_tree_scan_reads_every_file_but_the_exempt_ones(work: Path) -> None:
    reg = Registry()
    pw = reg.marker("header")
    (work / "sub").mkdir()
    (work / "clean.log").write_text("nothing here\n" * 1000)
    big = work / "sub" / "big.bin"  # a marker across the scanner's chunk boundary
    with open(big, "wb") as f:
        f.write(os.urandom(secrets.CHUNK - 10))
        f.write(pw.encode())
        f.write(os.urandom(100))
    (work / "credentials.key").write_bytes(pw.encode())  # a secretbox key: skipped
    (work / "client.key").write_text(pw)
    reg.exempt(work / "client.key")
    (work / "link").symlink_to(work / "client.key")  # not followed
    report = Quiet()
    assert reg.scan_tree(work, report) == 1
    assert len(report.failures) == 1 and "big.bin" in report.failures[0], report.failures
    assert report.secrets_files == 2 and report.secrets_bytes > secrets.CHUNK


@pytest.mark.skipif(os.geteuid() != 0, reason="Apache and squid run as nobody/proxy: root")
def test_the_secrets_phase_leaks_nothing(work: Path) -> None:
    report = Report()
    before = len(secrets.registry)
    secrets_phase(work, report, seed=1616, q=True, restarts=2)
    assert not report.failures, report.failures
    assert len(secrets.registry) >= before + 6
    assert report.secrets_restarts == 2
    assert report.secrets_files > 10 and report.secrets_bytes > 0
    assert "0 leaks" in report.summary()
