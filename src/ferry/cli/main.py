"""The ``ferry`` command (SPEC §6): bitsadmin for ferryd.

Output contract: human-readable by default; with ``--json`` every command prints exactly
one JSON document on stdout (``events`` prints one JSON object per line). Exit status: 0
success, 1 a BITS/ferry error (``CODE (0xHRESULT): message`` on stderr), 2 a usage error.

Start-up time matters (scripts call ``ferry`` in loops), so this module imports neither
aiohttp nor rich; rich is loaded only to draw human output.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from .. import __version__
from ..client import Client, DaemonUnavailable, Job, locate_socket
from ..errors import FerryError, hresult_of
from ..model.types import JobState, JobType, NotifyFlags, Priority

F = TypeVar("F", bound=Callable[..., Any])

PRIORITIES = click.Choice([p.value for p in Priority], case_sensitive=False)
TYPES = click.Choice([t.value for t in JobType], case_sensitive=False)

EXIT_ERROR = 1
EXIT_USAGE = 2


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
            c = Client(self.choice.path)
            if transfer and self.autostart and not self.choice.explicit:
                try:
                    c.status()
                except DaemonUnavailable:
                    c.close()
                    from ..client.autostart import start_user_daemon

                    c = Client(start_user_daemon())
            self._client = c
        return self._client

    def emit(self, doc: Any, human: Callable[[], None]) -> None:
        if self.json:
            click.echo(json.dumps(doc, indent=2))
        else:
            human()


def report_error(e: FerryError, json_mode: bool) -> None:
    """SPEC §6: the code name and hresult on stderr; in JSON mode the error document too."""
    if json_mode:
        click.echo(json.dumps(e.to_json(), indent=2))
    click.echo(f"{e.code} (0x{e.hresult:08X}): {e.message}", err=True)


class FerryGroup(click.Group):
    """Turns FerryError into exit status 1 in one place, and gives usage errors a JSON
    document in ``--json`` mode so scripts always find one on stdout."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FerryError as e:
            obj = ctx.obj
            report_error(e, isinstance(obj, Ctx) and obj.json)
            ctx.exit(EXIT_ERROR)
        except click.UsageError as e:
            obj = ctx.obj
            if isinstance(obj, Ctx) and obj.json:
                click.echo(json.dumps(FerryError("E_INVALIDARG", e.format_message()).to_json()))
            raise


def _ctx() -> Ctx:
    obj = click.get_current_context().find_object(Ctx)
    assert obj is not None
    return obj


def _pairs(args: Sequence[str]) -> list[tuple[str, str]]:
    if not args or len(args) % 2:
        raise click.UsageError("give REMOTE LOCAL pairs: an even number of names")
    return [(args[i], args[i + 1]) for i in range(0, len(args), 2)]


def _notify_flags(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """``3``, ``0x3`` or ``JOB_TRANSFERRED,JOB_ERROR`` (names as in BG_NOTIFY_*)."""
    if value is None:
        return None
    text = value.strip()
    try:
        return int(text, 0)
    except ValueError:
        pass
    flags = 0
    for part in text.replace("|", ",").split(","):
        name = part.strip().upper().removeprefix("BG_NOTIFY_")
        if not name:
            continue
        try:
            flags |= NotifyFlags[name]
        except KeyError:
            known = ", ".join(f.name or "" for f in NotifyFlags)
            raise click.BadParameter(f"{part!r} is not a number or one of {known}") from None
    return flags


# ---- the group ------------------------------------------------------------------------

HELP = """Manage background transfers with ferryd — BITS for Linux.

\b
JOB is a job id or a display name unique among your jobs.
A typical session (bitsadmin equivalents in brackets):
  ferry create nightly                    [/create]
  ferry add nightly https://host/a.iso /srv/a.iso   [/addfile]
  ferry resume nightly                    [/resume]
  ferry wait nightly && ferry complete nightly      [/monitor, /complete]
or in one step, with a progress bar:
  ferry transfer https://host/a.iso /srv/a.iso      [/transfer]

\b
The daemon: --socket, else $FERRY_SOCKET, else your user daemon
($XDG_RUNTIME_DIR/ferry/ferryd.sock), else the system one (/run/ferry/ferryd.sock).
create/add/resume/transfer start a user daemon when none is running
(unless --no-autostart, --socket or $FERRY_SOCKET is given).

\b
--json: every command prints exactly one JSON document on stdout (events: one
per line); failures print {"error": {"code", "hresult", "message"}}.
Exit status: 0 success, 1 a BITS/ferry error (CODE (0xHRESULT): message on
stderr), 2 a usage error.
"""


@click.group(cls=FerryGroup, help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--socket", metavar="PATH", help="ferryd's socket (default: see above).")
@click.option("--json", "json_mode", is_flag=True, help="Machine-readable output.")
@click.option(
    "--no-autostart", is_flag=True, help="Never start a user ferryd, even for a transfer."
)
@click.version_option(__version__, prog_name="ferry")
@click.pass_context
def cli(ctx: click.Context, socket: str | None, json_mode: bool, no_autostart: bool) -> None:
    obj = Ctx(socket, json_mode, not no_autostart)
    ctx.obj = obj
    ctx.call_on_close(lambda: obj._client.close() if obj._client else None)


# ---- jobs -----------------------------------------------------------------------------


@cli.command()
@click.argument("name")
@click.option("--type", "type_", type=TYPES, default="download", show_default=True)
@click.option("--priority", type=PRIORITIES, default="normal", show_default=True)
@click.option("--description", default="", help="Free text shown by info.")
def create(name: str, type_: str, priority: str, description: str) -> None:
    """Create a job (it starts SUSPENDED) and print it.  [bitsadmin /create]"""
    c = _ctx()
    job = c.client(transfer=True).create_job(
        name, JobType(type_.lower()), Priority(priority.lower()), description
    )
    c.emit(job.data, lambda: click.echo(f"Created job {job.id} ({job.display_name})."))


@cli.command()
@click.argument("job")
@click.argument("names", nargs=-1, required=True, metavar="REMOTE LOCAL [REMOTE LOCAL]...")
def add(job: str, names: tuple[str, ...]) -> None:
    """Add files to a job, all or none.  [bitsadmin /addfile, /addfileset]

    REMOTE is an http://, https:// or file:// URL; LOCAL a path (made absolute against the
    current directory; its directory must exist). Prints the job."""
    c = _ctx()
    pairs = _pairs(names)
    j = c.client(transfer=True).get_job(job)
    j.add_files(pairs)
    c.emit(j.data, lambda: click.echo(f"Added {len(pairs)} file(s) to job {_label(j)}."))


@cli.command()
@click.argument("job")
def files(job: str) -> None:
    """List a job's files and their progress (JSON: a list of file objects).
    [bitsadmin /listfiles]"""
    c = _ctx()
    fl = c.client().get_job(job).files()
    docs = [f.data for f in fl]

    def human() -> None:
        from .render import print_files

        print_files(docs)

    c.emit(docs, human)


@cli.command()
@click.argument("job")
def info(job: str) -> None:
    """Show everything about a job: state, progress, error, owner.  [bitsadmin /info /verbose]"""
    c = _ctx()
    j = c.client().get_job(job)

    def human() -> None:
        from .render import print_job

        print_job(j.data)

    c.emit(j.data, human)


@cli.command(name="list")
@click.option("--all-users", is_flag=True, help="Every user's jobs (administrators only).")
def list_(all_users: bool) -> None:
    """List your jobs (JSON: a list of job objects).  [bitsadmin /list]"""
    c = _ctx()
    docs = [j.data for j in c.client().jobs(all_users=all_users)]

    def human() -> None:
        from .render import print_jobs

        print_jobs(docs, show_owner=all_users)

    c.emit(docs, human)


def _label(j: Job) -> str:
    return f"{j.display_name} ({j.id})"


def _simple_action(name: str, verb: str, bitsadmin: str, doc: str, transfer: bool) -> None:
    @cli.command(name=name, help=f"{doc}  [bitsadmin {bitsadmin}]\n\nPrints the job.")
    @click.argument("job")
    def command(job: str) -> None:
        c = _ctx()
        j = c.client(transfer=transfer).get_job(job)
        getattr(j, name.replace("-", "_"))()
        c.emit(j.data, lambda: click.echo(f"Job {_label(j)} {verb}; it is now {j.state.value}."))


_simple_action(
    "resume", "resumed", "/resume",
    "Queue a job for transfer (from SUSPENDED, ERROR or TRANSIENT_ERROR).", transfer=True,
)  # fmt: skip
_simple_action("suspend", "suspended", "/suspend", "Stop a job's transfers.", transfer=False)
_simple_action(
    "cancel", "cancelled", "/cancel",
    "Cancel a job: temporary files are deleted, local files are never touched.", transfer=False,
)  # fmt: skip
_simple_action(
    "take-ownership", "taken over", "/takeownership",
    "Make yourself the job's owner (owner or administrator).", transfer=False,
)  # fmt: skip


@cli.command()
@click.argument("job")
def complete(job: str) -> None:
    """Finish a job: move transferred files to their local names.  [bitsadmin /complete]

    Files not fully transferred are discarded and the result is BG_S_PARTIAL_COMPLETE
    (still exit 0). JSON output: {"result": {"code", "hresult"}, "job": JOB}."""
    c = _ctx()
    j = c.client().get_job(job)
    code = j.complete()
    doc = {"result": {"code": code, "hresult": f"0x{hresult_of(code):08X}"}, "job": j.data}

    def human() -> None:
        click.echo(f"Job {_label(j)} completed: {code}.")
        if code != "S_OK":
            click.echo("Only some files were transferred; the others were discarded.", err=True)

    c.emit(doc, human)


@cli.command(name="set")
@click.argument("job")
@click.option("--display-name", metavar="S", help="[bitsadmin /setdisplayname]")
@click.option("--description", metavar="S", help="[bitsadmin /setdescription]")
@click.option("--priority", type=PRIORITIES, help="[bitsadmin /setpriority]")
@click.option(
    "--min-retry-delay", type=int, metavar="SEC",
    help="Wait after a transient error before retrying (min 5). [/setminretrydelay]",
)  # fmt: skip
@click.option(
    "--no-progress-timeout", type=int, metavar="SEC",
    help="Give up (ERROR) after this long without progress; 0: no retries. "
    "[/setnoprogresstimeout]",
)  # fmt: skip
@click.option(
    "--notify-flags", callback=_notify_flags, metavar="FLAGS",
    help="A number (0x3) or names joined by commas: JOB_TRANSFERRED, JOB_ERROR, DISABLE, "
    "JOB_MODIFICATION, FILE_TRANSFERRED. [/setnotifyflags]",
)  # fmt: skip
@click.option(
    "--notify-cmdline", metavar="'PROGRAM ARGS...'",
    help="Run as the job owner on notification (split like a shell; '' clears). "
    "[/setnotifycmdline]",
)  # fmt: skip
def set_(job: str, **options: Any) -> None:
    """Change job properties; prints the job."""
    props: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    if not props:
        raise click.UsageError("nothing to set: give at least one option")
    if "priority" in props:
        props["priority"] = props["priority"].lower()
    if "notify_cmdline" in props:
        try:
            props["notify_cmdline"] = shlex.split(props["notify_cmdline"]) or None
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--notify-cmdline") from None
    c = _ctx()
    j = c.client().get_job(job)
    j.set(**props)
    c.emit(j.data, lambda: click.echo(f"Job {_label(j)} updated."))


@cli.command()
@click.argument("job")
@click.option("--timeout", type=click.FloatRange(min=0), metavar="SEC", help="Give up after SEC.")
def wait(job: str, timeout: float | None) -> None:
    """Wait until the job is TRANSFERRED, ERROR, ACKNOWLEDGED or CANCELLED; prints the job.

    Exit 0 only if it ended TRANSFERRED or ACKNOWLEDGED; 1 otherwise (and on timeout,
    BG_E_WATCHDOG_TIMEOUT). Transient errors are waited out.  [bitsadmin /monitor]"""
    c = _ctx()
    j = c.client().get_job(job)
    state = j.wait(timeout)
    ok = state in (JobState.TRANSFERRED, JobState.ACKNOWLEDGED)
    c.emit(j.data, lambda: click.echo(f"Job {_label(j)} is {state.value}."))
    if not ok:
        err = j.error
        if err is not None:
            click.echo(
                f"{err.get('code')} ({err.get('hresult')}): {err.get('description', '')}",
                err=True,
            )
        else:
            click.echo(f"the job ended {state.value}", err=True)
        click.get_current_context().exit(EXIT_ERROR)


@cli.command()
@click.option("--priority", type=PRIORITIES, default="normal", show_default=True)
@click.option("--name", metavar="S", help="Display name (default: the first local file's name).")
@click.argument("names", nargs=-1, required=True, metavar="REMOTE LOCAL [REMOTE LOCAL]...")
def transfer(priority: str, name: str | None, names: tuple[str, ...]) -> None:
    """Transfer files now, with a progress bar, and complete the job.  [bitsadmin /transfer]

    Creates a job, adds the files, resumes it and follows it. On success the files are in
    place (JSON: {"result", "job"}); on ERROR the job is kept for `ferry resume` and the exit
    status is 1; Ctrl-C cancels the job (exit 130)."""
    import os.path

    from .transfer import run_transfer

    pairs = _pairs(names)
    c = _ctx()
    label = name or os.path.basename(pairs[0][1].rstrip("/")) or "ferry transfer"
    code = run_transfer(c.client(transfer=True), pairs, label, Priority(priority.lower()), c.json)
    if code:
        click.get_current_context().exit(code)


@cli.command()
@click.argument("job", required=False)
@click.option("--all-users", is_flag=True, help="Every user's jobs (administrators only).")
@click.option(
    "--all-events", is_flag=True, help="Every change, whatever the jobs' notify flags."
)
def events(job: str | None, all_users: bool, all_events: bool) -> None:
    """Follow job events (a job's, or all of yours) until Ctrl-C.

    Each job is first reported as job-snapshot, then as its notify flags ask:
    job-transferred (JOB_TRANSFERRED), job-error (JOB_ERROR), file-transferred
    (FILE_TRANSFERRED), job-modification (JOB_MODIFICATION), job-removed; DISABLE silences
    a job. --all-events shows every change regardless. --json: one JSON object per line
    ({"type", "job_id", "job"})."""
    c = _ctx()
    stream = c.client().events(job, all_users=all_users, all_events=all_events)
    try:
        for ev in stream:
            if c.json:
                doc = {"type": ev.type, "job_id": ev.job_id, "job": ev.job}
                click.echo(json.dumps(doc, separators=(",", ":")))
            else:
                click.echo(_event_line(ev.type, ev.job_id, ev.job))
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    finally:
        stream.close()


def _event_line(kind: str, job_id: str | None, j: dict[str, Any] | None) -> str:
    import time

    stamp = time.strftime("%H:%M:%S")
    if j is None:
        return f"{stamp} {kind:<17} {job_id}"
    p = j.get("progress") or {}
    total = p.get("bytes_total")
    line = (
        f"{stamp} {kind:<17} {j.get('display_name')} ({job_id}) {j.get('state')} "
        f"{p.get('bytes_transferred', 0)}/{total if total is not None else '?'} bytes "
        f"{p.get('files_transferred', 0)}/{p.get('files_total', 0)} files"
    )
    err = j.get("error")
    if isinstance(err, dict):
        line += f" {err.get('code')} ({err.get('hresult')}): {err.get('description', '')}"
    return line


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    from . import tokens  # noqa: F401  (registers open, helper-token and logoff)

    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="ferry")
    except BrokenPipeError:
        # `ferry list | head`: the reader left; that is not an error worth a traceback.
        sys.stderr.close()
        sys.exit(EXIT_ERROR)


if __name__ == "__main__":
    # Run the importable module's ``main`` (not this ``__main__`` copy), so commands other
    # modules register on ``ferry.cli.main.cli`` are there.
    from ferry.cli.main import main as _entry

    _entry()
