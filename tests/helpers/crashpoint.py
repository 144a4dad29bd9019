"""Crash points inside a real ferryd (a subprocess), for crash tests that must stop it at an
exact moment rather than at a random one.

``enable(monkeypatch, work, point)`` makes every ferryd started afterwards (``Daemon.start``
passes the test's environment on) load this module at interpreter start-up, through a
``sitecustomize`` on PYTHONPATH, and wrap ``IdentityIO.create_temp`` and
``IdentityIO.create_temp_many`` (a group of small files in one trip), the places where the
engine creates a download's temporary file. At the first call it writes the (first)
temporary name to the report file (atomically: the test polls for it), then, depending on
``point``:

* ``kill-before-create`` — SIGKILLs ferryd before the file is created;
* ``kill-after-create`` — creates the file, then SIGKILLs ferryd before anything else runs;
* ``fail-create`` — fails the creation (E_ACCESSDENIED) without creating anything.

``disable(monkeypatch)`` turns it off for the ferryd started next (the restart).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from harness.env import ROOT

ENV = "FERRY_TEST_CRASHPOINT"
POINTS = ("kill-before-create", "kill-after-create", "fail-create")


def enable(monkeypatch: pytest.MonkeyPatch, work: Path, point: str) -> Path:
    """Arm ``point`` for the ferryd started next; returns the report file's path."""
    assert point in POINTS, point
    site = work / "crashpoint-site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "from tests.helpers.crashpoint import install\n\ninstall()\n"
    )
    report = work / f"crashpoint-{point}.txt"
    report.unlink(missing_ok=True)
    monkeypatch.setenv("PYTHONPATH", f"{site}{os.pathsep}{ROOT}")
    monkeypatch.setenv(ENV, f"{point}:{report}")
    return report


def disable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)


def _write(report: Path, text: str) -> None:
    tmp = report.with_suffix(".tmp")
    tmp.write_text(text)
    os.rename(tmp, report)


def install() -> None:
    """Runs in ferryd (from sitecustomize): wrap IdentityIO.create_temp when armed."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, path = spec.partition(":")
    report = Path(path)

    from ferry.errors import FerryError
    from ferry.security.identity import IdentityIO

    real = IdentityIO.create_temp
    fired = False

    async def create_temp(
        self: IdentityIO, token: Any, local_name: str, *args: Any, **kwargs: Any
    ) -> Any:
        nonlocal fired
        if fired:
            return await real(self, token, local_name, *args, **kwargs)
        fired = True
        name = args[0] if args else kwargs.get("temp_name")
        if point == "kill-after-create":
            result = await real(self, token, local_name, *args, **kwargs)
            _write(report, str(result[1]))
            os.kill(os.getpid(), signal.SIGKILL)
        _write(report, str(name))
        if point == "kill-before-create":
            os.kill(os.getpid(), signal.SIGKILL)
        raise FerryError("E_ACCESSDENIED", f"crash point {point}: {name} not created")

    IdentityIO.create_temp = create_temp  # type: ignore[method-assign]

    real_many = IdentityIO.create_temp_many

    async def create_temp_many(self: IdentityIO, token: Any, names: Any) -> Any:
        nonlocal fired
        if fired or not names:
            return await real_many(self, token, names)
        fired = True
        name = names[0][1]
        if point == "kill-after-create":
            await real_many(self, token, names[:1])
            _write(report, str(name))
            os.kill(os.getpid(), signal.SIGKILL)
        _write(report, str(name))
        if point == "kill-before-create":
            os.kill(os.getpid(), signal.SIGKILL)
        rest = await real_many(self, token, names[1:]) if len(names) > 1 else []
        return [FerryError("E_ACCESSDENIED", f"crash point {point}: {name} not created"), *rest]

    IdentityIO.create_temp_many = create_temp_many  # type: ignore[method-assign]
