"""What the fault-server transfer tests share (test_transfer_faults.py, test_lean_http.py):
one ferryd for a whole module with its own config, the per-test sweep of the jobs a test
left behind, and putting a file with a script of faults on harness/faultserver.py."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.aio import ServerThread
from harness.faultserver import Drop, FaultServer, Status
from harness.ferryd import Daemon

from tests.helpers.jobs import cancel_all


@contextmanager
def module_daemon(prefix: str, config: Callable[[Path], str], **kw: Any) -> Iterator[Daemon]:
    """A started ferryd in a fresh temporary directory, run with the ferryd.toml that
    ``config(base)`` writes (it may put files it names there); on leaving, stopped, its
    directory removed, and its exit code checked (after the tests' own outcome)."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    path = base / "ferryd.toml"
    path.write_text(config(base))
    daemon = Daemon(base, ["--config", str(path)], **kw)
    daemon.start()
    try:
        yield daemon
    finally:
        code = daemon.stop()
        shutil.rmtree(base, ignore_errors=True)
    assert code == 0, f"ferryd exited with {code}:\n{daemon.log()}"


def cancel_leftovers(d: Daemon) -> None:
    """Cancel every job still open on ``d``, so the next test starts from none."""
    status, body = d.call("GET", "/v1/jobs")
    assert status == 200
    cancel_all(d, [j["id"] for j in body["jobs"]])


def serve(
    srv: ServerThread[FaultServer], name: str, size: int, *steps: Drop | Status, **kw: object
) -> bytes:
    """Put ``size`` random bytes at /f/NAME, with a script of faults for its next requests."""
    data = os.urandom(size)

    def install() -> None:
        srv.server.add(name, data, **kw)
        srv.server.script[name] = list(steps)

    srv.on_loop(install)
    return data
