"""Where things are and how child processes start: the repository's paths, the environment
of a ferryd or ``ferry`` child, short temporary directories (for Unix socket paths), and
finding (or, as root on Debian, installing) the tools the benchmarks compare against."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness import ROOT, SRC

__all__ = [
    "ROOT",
    "SRC",
    "child_env",
    "ensure_tools",
    "ferry_cli",
    "say",
    "short_tmpdir",
    "which",
]


def say(msg: str) -> None:
    """Progress for a human watching a long run (flushed: output may be piped)."""
    print(msg, flush=True)


def short_tmpdir(prefix: str = "fy-") -> Path:
    """A new directory under /tmp with a short path (Unix socket paths are limited to 107
    bytes; $TMPDIR may be long), searchable by every user (a system-mode ferryd serves
    other uids, whose paths go through it)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(path, 0o755)
    return path


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a ferryd or ``ferry`` child: ours (read now, so a test's
    monkeypatched variables pass on), with this checkout's ``src`` first on PYTHONPATH so a
    bare checkout and a venv behave the same, and without what would point the child
    elsewhere (FERRY_SOCKET from the developer's shell, QUICK from ``make bench``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(SRC)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    env.pop("FERRY_SOCKET", None)
    env.pop("QUICK", None)
    # A proxy of the machine running the tests must not become ferryd's PRECONFIG proxy
    # (tests that want one pass it in ``extra``).
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        env.pop(name, None)
        env.pop(name.upper(), None)
    env.update(extra or {})
    return env


def ferry_cli() -> list[str]:
    """The ``ferry`` command as a user types it: the console script beside this
    interpreter (the venv's) when it is installed, else the same entry point by module."""
    script = Path(sys.executable).with_name("ferry")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "ferry.cli"]


# ---- tools -------------------------------------------------------------------------------

APT_PACKAGES = {"nginx": "nginx-light", "curl": "curl", "aria2c": "aria2"}
_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def which(name: str) -> str | None:
    """``shutil.which``, and the sbin directories a non-root PATH often lacks (nginx)."""
    found = shutil.which(name)
    if found is None:
        for d in _SBIN:
            candidate = Path(d) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return found


def ensure_tools(names: Sequence[str], install: bool = True) -> dict[str, str | None]:
    """Paths of the named tools. Missing ones are installed with apt-get when we are root
    (the Debian packages of APT_PACKAGES); otherwise their entry is None and the caller
    skips what needs them, saying so."""
    found = {n: which(n) for n in names}
    missing = [n for n, p in found.items() if p is None]
    if missing and install and os.geteuid() == 0 and shutil.which("apt-get"):
        pkgs = sorted({APT_PACKAGES[n] for n in missing if n in APT_PACKAGES})
        if pkgs:
            say(f"installing {' '.join(pkgs)} (apt-get, as root)")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
            subprocess.run(["apt-get", "install", "-y", "-qq", *pkgs], env=env, check=False)
            found = {n: which(n) for n in names}
    return found
