"""The test and benchmark harness: what the tests, the benchmarks, the torture run and the
demo share to drive real parts on this machine.

* ``harness.ferryd``      a real ferryd on a private socket and state directory
* ``harness.nginx``       the real nginx on loopback, with a private configuration
* ``harness.faultserver`` an aiohttp server on loopback whose faults each test configures
* ``harness.aio``         an asyncio loop on a thread of its own; aiohttp servers run there
* ``harness.wait``        polling with a deadline: ``wait_until``, ``wait_state``
* ``harness.env``         paths, the environment of child processes, short temp dirs, tools
* ``harness.files``       random files and their SHA-256
* ``harness.torture``, ``harness.hostile``, ``harness.report``: the torture run's phases
  (SIGKILLs mid-transfer; hostile API requests) and its report
* ``harness.torture_fleet`` the torture's fleet phase (SIGKILLs of fleet workers)
* ``harness.secrets``, ``harness.torture_secrets``: marker secrets every phase registers,
  the scanner of answers, files and stores, and the phase that uses secrets under kills

It lives beside ``benchmarks/`` (not in ``src/``): it is no part of ferry. Scripts started
from the repository (``python benchmarks/run.py``, ``python scripts/demo.py``) put the
repository root on ``sys.path`` to import it; pytest does that itself (``tests`` is a
package, so its parent, the root, goes first on the path).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"

# An installed ferry (the venv's, editable) wins; a bare checkout works too.
if importlib.util.find_spec("ferry") is None:  # pragma: no cover - depends on the caller
    sys.path.insert(0, str(SRC))
