"""The transfer settings of ferryd's configuration: stall_timeout and ca_file."""

from __future__ import annotations

import platform
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from ferry.daemon.config import load_config
from ferry.daemon.main import tls_context
from ferry.errors import FerryError


def test_defaults() -> None:
    cfg = load_config(False)
    assert cfg.stall_timeout == 60 and cfg.ca_file is None


def test_stall_timeout_and_ca_file(tmp_path: Path) -> None:
    ca = trustme.CA()
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    path = tmp_path / "ferryd.toml"
    path.write_text(f'[daemon]\nstall_timeout = 2.5\nca_file = "{pem}"\n')
    cfg = load_config(False, path)
    assert cfg.stall_timeout == 2.5 and cfg.ca_file == pem
    ctx = tls_context(cfg)
    assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname
    assert any(c.get("subject") for c in ctx.get_ca_certs()), "the private CA is trusted"


@pytest.mark.parametrize(
    "line",
    [
        "stall_timeout = 0",
        "stall_timeout = -1",
        'stall_timeout = "60"',
        'ca_file = "/nonexistent/ca.pem"',
        "ca_file = 5",
    ],
)
def test_bad_values_stop_ferryd(tmp_path: Path, line: str) -> None:
    path = tmp_path / "ferryd.toml"
    path.write_text(f"[daemon]\n{line}\n")
    with pytest.raises(FerryError):
        load_config(False, path)


def test_a_ca_file_that_is_not_pem_stops_ferryd(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    path = tmp_path / "ferryd.toml"
    path.write_text(f'[daemon]\nca_file = "{junk}"\n')
    with pytest.raises(FerryError) as exc:
        tls_context(load_config(False, path))
    assert exc.value.code == "E_INVALIDARG"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_malloc_tuning_takes_on_glibc() -> None:
    """ferryd raises glibc's mmap threshold so socket read buffers come from the heap; a
    run in a subprocess, so this test process keeps its own malloc settings."""
    code = "from ferry.daemon.main import tune_malloc; raise SystemExit(0 if tune_malloc() else 3)"
    done = subprocess.run([sys.executable, "-c", code], check=False, timeout=60)
    assert done.returncode == 0
