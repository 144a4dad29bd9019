"""The ``ferry`` command starts like a native tool only if its common paths import nothing
heavy (issue #15): ``--version``, ``list`` (human and ``--json``), ``info`` and ``--help``
(which loads every command) never import asyncio, aiohttp, ssl, rich or http.client. A new
command that imports one of them at module level, or a new import in the client's light
modules, fails here — see docs/architecture.md, "Where to add … a CLI command". Not a
timing test: ``python -X importtime`` lists the modules a run imported."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from harness.ferryd import Daemon

from .cli_helpers import cli_env

HEAVY = ("asyncio", "aiohttp", "ssl", "rich", "http.client", "email")


def imported(*args: str, socket: str | None = None) -> set[str]:
    """The modules ``python -m ferry.cli ARGS`` imports (it must exit 0)."""
    cmd = [sys.executable, "-X", "importtime", "-m", "ferry.cli"]
    if socket is not None:
        cmd += ["--socket", socket]
    proc = subprocess.run(
        cmd + list(args), capture_output=True, text=True, env=cli_env(), timeout=60
    )
    assert proc.returncode == 0, proc
    names = set()
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+\d+ \|\s+(\S+)", line)
        if m:
            names.add(m.group(1))
    assert "json" in names or "encodings" in names, proc.stderr[-2000:]  # the report ran
    return names


def heavy(names: set[str]) -> list[str]:
    return sorted(n for n in names for h in HEAVY if n == h or n.startswith(h + "."))


def test_version_imports_nothing_of_ferry_but_its_version() -> None:
    names = imported("--version")
    assert heavy(names) == []
    assert "click" not in names
    # ferry._lazy: the package's lazy-export helper, a few lines importing nothing.
    ours = {n for n in names if n.startswith("ferry.")}
    assert ours <= {"ferry._version", "ferry._lazy", "ferry.cli"}


def test_help_loads_every_command_without_heavy_modules() -> None:
    assert heavy(imported("--help")) == []


@pytest.mark.parametrize(
    "args",
    [("list",), ("--json", "list"), ("--json", "info", "one"), ("files", "one")],
)
def test_everyday_commands_stay_light(ferryd: Daemon, args: tuple[str, ...]) -> None:
    status, _ = ferryd.call("POST", "/v1/jobs", {"display_name": "one"})
    assert status in (200, 201)
    names = imported(*args, socket=ferryd.socket)
    if args == ("files", "one"):  # human output of files is drawn by rich: allowed there
        names = {n for n in names if not n.startswith("rich")}
    assert heavy(names) == [], f"ferry {' '.join(args)} imported {heavy(names)}"
    assert "ferry.client.aio" not in names


@pytest.mark.parametrize("args", [("--json", "list"), ("list",), ("--json", "list", "--all-users")])
def test_list_fast_path_skips_click_and_prints_what_click_prints(
    ferryd: Daemon, args: tuple[str, ...]
) -> None:
    for name in ("a", "b"):
        status, _ = ferryd.call("POST", "/v1/jobs", {"display_name": name})
        assert status in (200, 201)
    assert "click" not in imported(*args, socket=ferryd.socket)
    outputs = []
    for module in ("ferry.cli", "ferry.cli.main"):  # the fast path, and click's
        cmd = [sys.executable, "-m", module, "--socket", ferryd.socket, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=60)
        assert proc.returncode == 0, proc
        outputs.append((proc.stdout, proc.stderr))
    assert outputs[0] == outputs[1]


def test_list_fast_path_leaves_failures_to_click(short_tmp: Path) -> None:
    missing = str(short_tmp / "nobody.sock")
    cmd = [sys.executable, "-m", "ferry.cli", "--socket", missing, "--json", "list"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=60)
    assert proc.returncode == 1
    assert "the socket given by --socket" in proc.stderr
    assert '"error"' in proc.stdout


@pytest.mark.parametrize("args", [("list",), ("--json", "list")])
def test_list_fast_path_imports_neither_the_client_library_nor_typing(
    ferryd: Daemon, args: tuple[str, ...]
) -> None:
    """Issue #15: ``ferry list`` is json, ``client.wire`` and the table over a bare socket;
    the contract, the job model, the sync client, typing and dataclasses would double its
    start-up."""
    status, _ = ferryd.call("POST", "/v1/jobs", {"display_name": "one"})
    assert status in (200, 201)
    names = imported(*args, socket=ferryd.socket)
    unwanted = {"typing", "dataclasses", "inspect", "socket", "ferry.protocol", "ferry.model",
                "ferry.client.sync", "ferry.client._ops", "click"}  # fmt: skip
    assert sorted(names & unwanted) == []
    assert "ferry.client.wire" in names
