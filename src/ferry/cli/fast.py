"""The fast path: ``ferry [--json] [--socket PATH] [--no-autostart] list [--all-users]``
answered without click, and without the client library either. Importing click costs about
as much as the rest of a ``ferry list`` together (click.types alone pulls in uuid, platform,
inspect, datetime), and the sync client brings the API contract, the job model, ``typing``,
``dataclasses`` and ``socket`` with it; scripts that poll ``ferry --json list`` would pay
all of it on every call. Here one ``GET /v1/jobs`` goes over a bare ``_socket`` framed by
``client.wire``; the modules imported are ``json``, ``wire`` and ``table`` (issue #15:
``tests/integration/test_cli_imports.py`` lists what a run may import).

Only exactly these spellings are taken; anything else — another command, ``--help``, an
unknown option, and every failure (no daemon, access denied, an unexpected answer) —
returns False and the run goes through click as usual, which reports it in the one uniform
way (a read-only request repeated costs nothing). The output is byte for byte click's
(``tests/integration/test_cli_imports.py`` compares them).

Which socket: ``locate`` here is ``ferry.client.sockets.locate_socket`` written without
``ferry.protocol`` (whose import loads the whole contract); ``tests/unit/test_cli_fast.py``
holds the two to the same answers.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing's: see ferry/__init__.py
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

SYSTEM_SOCKET = "/run/ferry/ferryd.sock"  # ferry.protocol.SYSTEM_SOCKET
JOBS = "/v1/jobs"  # the contract's list_jobs route


def locate(explicit: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The socket ``ferry.client.sockets.locate_socket`` would choose: the argument, else
    ``FERRY_SOCKET``, else the user daemon's socket if it exists, else the system one."""
    env = os.environ if environ is None else environ
    if explicit:
        return explicit
    from_env = env.get("FERRY_SOCKET")
    if from_env:
        return from_env
    runtime = env.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    user = os.path.join(runtime, "ferry", "ferryd.sock")
    return user if os.path.exists(user) else SYSTEM_SOCKET


def fetch_jobs(path: str, all_users: bool, timeout: float = 60.0) -> list[Any] | None:
    """The caller's jobs (every user's with ``all_users``) as ferryd sends them, or None
    for anything but a well-formed 200 answer (click's path then reports it)."""
    import _socket

    from ..client import wire

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        resp = wire.Connection(sock).request(  # type: ignore[arg-type]
            "GET", JOBS + ("?all_users=true" if all_users else ""), None, {}
        )
    except OSError:  # no daemon, refused, wire.ConnectionLost, a timeout
        return None
    finally:
        sock.close()
    if resp.status != 200:
        return None
    import json

    try:
        doc = json.loads(resp.body)
    except ValueError:
        return None
    jobs = doc.get("jobs") if isinstance(doc, dict) else None
    if not isinstance(jobs, list) or not all(isinstance(j, dict) for j in jobs):
        return None
    return jobs


def run(args: Sequence[str]) -> bool:
    """True when the command was fully answered here."""
    json_mode = False
    socket: str | None = None
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--json":
            json_mode = True
        elif a == "--no-autostart":
            pass  # list never starts a daemon anyway
        elif a == "--socket" and i + 1 < len(args):
            i += 1
            socket = args[i]
        elif a.startswith("--socket="):
            socket = a.removeprefix("--socket=")
        else:
            break
        i += 1
    rest = list(args[i:])
    if rest not in (["list"], ["list", "--all-users"]):
        return False
    all_users = len(rest) == 2

    docs = fetch_jobs(locate(socket), all_users)
    if docs is None:
        return False
    if json_mode:
        import json

        sys.stdout.write(json.dumps(docs, indent=2) + "\n")
    else:
        from .table import print_jobs

        print_jobs(docs, show_owner=all_users)
    sys.stdout.flush()
    return True
