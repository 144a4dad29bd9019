"""The ferry-server command line (help, usage errors, a taken port), and a state directory
on a small tmpfs of its own: disk full (ERROR_DISK_FULL, the offset still right) and
Close-Session across file systems (copy beside the destination, then rename)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.env import child_env
from harness.upserver import FerryServer, bits, create, fragment, upload


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferry.server.main", *args],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
    )


def test_help_names_every_flag() -> None:
    out = _run("--help")
    assert out.returncode == 0
    for flag in (
        "--bind",
        "--root",
        "--state-dir",
        "--max-upload-size",
        "--allow-overwrite",
        "--session-timeout",
        "--host-id",
        "--host-id-fallback-timeout",
        "--notify-url",
        "--notify-type",
        "--tls-cert",
        "--tls-key",
        "--idle-timeout",
    ):
        assert flag in out.stdout, flag


def test_usage_errors(base: Path) -> None:
    root = str(base / "root")
    for args in (
        ["--root", root],  # no --bind
        ["--bind", "nonsense", "--root", root],
        ["--bind", "127.0.0.1:0", "--root", str(base / "missing")],
        ["--bind", "127.0.0.1:0", "--root", root, "--host-id-fallback-timeout", "5"],
        ["--bind", "127.0.0.1:0", "--root", root, "--notify-url", "ftp://x/"],
        ["--bind", "127.0.0.1:0", "--root", root, "--notify-type", "by-magic"],
        ["--bind", "127.0.0.1:0", "--root", root, "--tls-cert", __file__],
        ["--bind", "127.0.0.1:0", "--root", root, "--session-timeout", "0"],
    ):
        out = _run(*args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert "Error" in out.stderr


def test_port_taken(base: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        out = _run("--bind", f"127.0.0.1:{s.getsockname()[1]}", "--root", str(base / "root"))
    assert out.returncode == 1 and "ferry-server:" in out.stderr


@pytest.fixture
def small_state(base: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mnt = base / "small"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_and_cross_filesystem_close(
    base: Path, small_state: Path, servers: list[FerryServer]
) -> None:
    s = FerryServer(base / "root", state_dir=small_state / "state").start()
    servers.append(s)
    data = os.urandom(600_000)
    upload(s.port, "/fits.bin", data, chunk=200_000)  # Close copies across file systems
    assert (base / "root" / "fits.bin").read_bytes() == data
    assert not [p for p in (base / "root").iterdir() if p.name.startswith(".ferry-upload-")]
    big = os.urandom(2_000_000)
    sid = create(s.port, "/big.bin")
    a = fragment(s.port, "/big.bin", sid, big, 0, len(big))
    assert a.status == 500, a.headers
    assert a.h("BITS-Error-Code") == "0x80070112"  # ERROR_DISK_FULL
    # what is stored is a prefix of the upload, and the next Ack says how much
    a = fragment(s.port, "/big.bin", sid, big[:10], 0, len(big))
    stored = int(a.h("BITS-Received-Content-Range") or 0)
    data_file = small_state / "state" / "sessions" / sid.strip("{}") / "data"
    assert data_file.read_bytes() == big[:stored]
    assert bits(s.port, "/big.bin", "Cancel-Session", sid).status == 200
    assert not (base / "root" / "big.bin").exists()
