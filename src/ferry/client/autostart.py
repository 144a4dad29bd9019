"""Start a user-mode ferryd on demand, as gpg-agent is started by gpg (SPEC §1).

Used by the CLI when the user asked for a transfer and no daemon answers. The daemon runs
detached (own session, no terminal), with the same interpreter as the client so a
virtualenv or ``PYTHONPATH`` checkout finds the same ``ferry`` package, and logs to the
user state directory where a failed start can be diagnosed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

from ..errors import FerryError
from ..protocol import default_socket, default_state_dir
from ._ops import DaemonUnavailable
from .sync import Client

START_TIMEOUT = 5.0
_POLL = 0.05


def _answers(path: str) -> bool:
    try:
        with Client(path, timeout=2.0) as c:
            c.status()
        return True
    except DaemonUnavailable:
        return False
    except FerryError:
        return True  # something answers in HTTP with an API error: it is a ferryd


def _child_env() -> dict[str, str]:
    """Make sure the child imports this very ``ferry`` even though it starts in ``/``
    (a relative ``PYTHONPATH=src`` would not survive the change of directory)."""
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parent.parent.parent)
    parts = [pkg_root] + [
        os.path.abspath(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p
    ]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    env.pop("FERRY_SOCKET", None)
    return env


def start_user_daemon(timeout: float = START_TIMEOUT) -> str:
    """Start ``ferryd --user`` unless one already answers, wait until it serves, and return
    its socket path. Concurrent callers serialize on a lock file so only one daemon starts.
    Raises FerryError(E_FAIL) with the log's location when the daemon does not come up."""
    path = default_socket(system=False)
    state_dir = Path(default_state_dir(system=False))
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    log_path = state_dir / "ferryd.log"
    with open(state_dir / "autostart.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _answers(path):
            return path
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ferry.daemon.main", "--user", "--socket", path],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd="/",
                env=_child_env(),
                start_new_session=True,
                close_fds=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.exists(path) and _answers(path):
                return path
            rc = proc.poll()
            if rc is not None:
                raise FerryError("E_FAIL", f"ferryd --user exited with status {rc}; see {log_path}")
            time.sleep(_POLL)
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        raise FerryError(
            "E_FAIL", f"ferryd --user did not answer at {path} within {timeout:g} s; see {log_path}"
        )
