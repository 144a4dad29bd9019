"""What every ``ferry`` command shares: the per-invocation state (output mode, the lazily
opened client) and the uniform error report. A module of its own so that the modules that
define commands (``main``, ``tokens``) import it, never each other."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from ..client._ops import DaemonUnavailable
from ..client.sockets import ENV_SOCKET, SocketChoice, locate_socket, user_socket
from ..errors import FerryError

if TYPE_CHECKING:
    from ..client.sync import Client

EXIT_ERROR = 1


class Ctx:
    """Per-invocation state: output mode and the (lazily opened) client."""

    def __init__(self, socket: str | None, json_mode: bool, autostart: bool) -> None:
        self.choice = locate_socket(socket)
        self.json = json_mode
        self.autostart = autostart
        self._client: Client | None = None

    def client(self, transfer: bool = False) -> Client:
        """The client; for commands that ask for a transfer, start a user daemon when none
        answers — but only if the user did not name a socket (then they meant that daemon)
        and did not say ``--no-autostart``."""
        if self._client is None:
            from ..client.sync import Client

            c = Client(self.choice.path)
            if transfer and self.autostart and not self.choice.explicit:
                try:
                    c.connect()  # a connection, not a request: one round trip fewer
                except DaemonUnavailable:
                    c.close()
                    from ..client.autostart import start_user_daemon

                    c = Client(start_user_daemon())
            self._client = c
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def emit(self, doc: Any, human: Callable[[], None]) -> None:
        if self.json:
            click.echo(json.dumps(doc, indent=2))
        else:
            human()


def current() -> Ctx:
    """The invocation's ``Ctx`` (set up by the ``ferry`` group)."""
    obj = click.get_current_context().find_object(Ctx)
    assert obj is not None
    return obj


_START_HINT = (
    "Start one: `ferryd --user &` or `systemctl --user start ferryd.socket` (your own "
    "daemon), or `systemctl start ferryd.socket` as root (the system daemon)."
)


def no_daemon_error(e: DaemonUnavailable, choice: SocketChoice) -> FerryError:
    """``DaemonUnavailable`` told as a user needs it: every socket that was tried, in the
    order ``locate_socket`` tries them, and how to start ferryd. The bare "not running at
    /run/ferry/ferryd.sock" left a new user guessing which daemon was meant."""
    if choice.source == "argument":
        tried = f"the socket given by --socket ({e.message})"
    elif choice.source == "environment":
        tried = f"the socket named by ${ENV_SOCKET} ({e.message})"
    elif choice.source == "user":
        tried = f"your user daemon's socket ({e.message})"
    else:
        tried = f"no user daemon at {user_socket()}, and {e.message}"
    return FerryError(e.code, f"{tried}. {_START_HINT}")


def report_error(e: FerryError, json_mode: bool) -> None:
    """SPEC §6: the code name and hresult on stderr; in JSON mode the error document too."""
    if json_mode:
        click.echo(json.dumps(e.to_json(), indent=2))
    click.echo(f"{e.code} (0x{e.hresult:08X}): {e.message}", err=True)


def retry_text(job: dict[str, Any], now: float | None = None, countdown: bool = True) -> str:
    """When a TRANSIENT_ERROR job tries again, from its ``retry_at`` (ISO 8601 UTC): "next
    try at 00:41:07 (in 60 s)", local time. Empty when no retry is scheduled. Without it a
    retry 600 s away looks like a hang. ``countdown=False`` leaves out "(in N s)", which a
    line redrawn without a new event (the progress bar) would show stale."""
    at = job.get("retry_at")
    if not isinstance(at, str) or not at:
        return ""
    from datetime import datetime

    try:
        when = datetime.fromisoformat(at.replace("Z", "+00:00"))
    except ValueError:
        return f"next try at {at}"
    import time

    text = f"next try at {when.astimezone().strftime('%H:%M:%S')}"
    if not countdown:
        return text
    left = max(0, round(when.timestamp() - (time.time() if now is None else now)))
    return f"{text} (in {left} s)"


def partial_complete_text(job: dict[str, Any]) -> str:
    """What a BG_S_PARTIAL_COMPLETE means for this job, in numbers: "only some files"
    misleads when none arrived at all."""
    progress = job.get("progress") or {}
    done = int(progress.get("files_transferred") or 0)
    total = int(progress.get("files_total") or 0)
    if done == 0:
        what = "the file was" if total == 1 else f"all {total} files were"
        return f"No file was transferred: {what} discarded."
    left = total - done
    return (
        f"{done} of {total} files were transferred; "
        f"the other {left} {'was' if left == 1 else 'were'} discarded."
    )
