"""The ``--json`` fast path: ``ferry [--json] [--socket PATH] [--no-autostart] list
[--all-users]`` answered without click. Importing click costs about as much as the rest of
a ``ferry list`` together (click.types alone pulls in uuid, platform, inspect, datetime);
scripts that poll ``ferry --json list`` pay it on every call.

Only exactly these spellings are taken; anything else — another command, ``--help``, an
unknown option, and every failure (no daemon, access denied) — returns False and the run
goes through click as usual, which reports it in the one uniform way (a read-only request
repeated costs nothing). The output is byte for byte click's (``tests/integration/
test_cli_imports.py`` compares them)."""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # not typing's: see ferry/__init__.py
if TYPE_CHECKING:
    from collections.abc import Sequence


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

    from ..client.sync import Client
    from ..errors import FerryError

    try:
        with Client(socket) as client:
            docs = [j.data for j in client.jobs(all_users=all_users)]
    except FerryError:
        return False  # click's path reports it (and says which sockets it tried)
    if json_mode:
        import json

        sys.stdout.write(json.dumps(docs, indent=2) + "\n")
    else:
        from .table import print_jobs

        print_jobs(docs, show_owner=all_users)
    sys.stdout.flush()
    return True
