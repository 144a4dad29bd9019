"""The ``ferry`` command (SPEC §6): bitsadmin for ferryd.

Output contract: human-readable by default; with ``--json`` every command prints exactly
one JSON document on stdout (``events`` prints one JSON object per line). Exit status: 0
success, 1 a BITS/ferry error (``CODE (0xHRESULT): message`` on stderr), 2 a usage error.

Start-up time matters (scripts call ``ferry`` in loops), so this module imports neither
aiohttp nor rich; rich is loaded only to draw human output.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click

from .._version import __version__
from ..client._ops import DaemonUnavailable
from ..errors import FerryError, hresult_of
from ..model.types import JobState, JobType, Priority
from ..protocol import ACTIONS, PROPERTIES, SYSTEM_SOCKET, Property
from . import bitsadmin, completion, credentials, fleet, netstatus, network, tokens, top, uploads
from .context import EXIT_ERROR, Ctx, no_daemon_error, partial_complete_text, report_error
from .context import current as _ctx

if TYPE_CHECKING:
    from ..client.sync import Job

PRIORITIES = click.Choice([p.value for p in Priority], case_sensitive=False)
TYPES = click.Choice([t.value for t in JobType], case_sensitive=False)


class FerryGroup(click.Group):
    """Turns FerryError into exit status 1 in one place, and gives usage errors a JSON
    document in ``--json`` mode so scripts always find one on stdout."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FerryError as e:
            obj = ctx.obj
            if isinstance(e, DaemonUnavailable) and isinstance(obj, Ctx):
                e = no_daemon_error(e, obj.choice)
            report_error(e, isinstance(obj, Ctx) and obj.json)
            ctx.exit(EXIT_ERROR)
        except click.UsageError as e:
            obj = ctx.obj
            if isinstance(obj, Ctx) and obj.json:
                click.echo(json.dumps(FerryError("E_INVALIDARG", e.format_message()).to_json()))
            raise


def _pairs(args: Sequence[str]) -> list[tuple[str, str]]:
    if not args or len(args) % 2:
        raise click.UsageError("give REMOTE LOCAL pairs: an even number of names")
    return [(args[i], args[i + 1]) for i in range(0, len(args), 2)]


# ---- the group ------------------------------------------------------------------------

HELP = f"""Manage background transfers with ferryd — BITS for Linux.

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
($XDG_RUNTIME_DIR/ferry/ferryd.sock), else the system one ({SYSTEM_SOCKET}).
Autostart: only the commands that ask for a transfer (create, add, resume,
transfer) start a user daemon (ferryd --user) when none answers; never when
--socket or $FERRY_SOCKET names a daemon, never with --no-autostart. Other
commands report every socket tried and how to start ferryd. The library
(import ferry) never starts one.

\b
--json: every command prints exactly one JSON document on stdout (events: one
per line); failures print {{"error": {{"code", "hresult", "message"}}}}.
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
    ctx.call_on_close(obj.close)


for _command in (uploads.reply,):
    cli.add_command(_command)
for _command in (
    tokens.open_, tokens.helper_token, tokens.logoff, bitsadmin.bitsadmin, top.top,
    completion.completion,
):  # fmt: skip
    cli.add_command(_command)
cli.add_command(credentials.credentials)
cli.add_command(fleet.fleet)  # fleet mode (cli/fleet.py)
# SPEC §10: ferry network, ferry reload (cli/netstatus.py).
for _command in (netstatus.network, netstatus.reload):
    cli.add_command(_command)


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
@click.option(
    "--sha256", "digests", multiple=True, metavar="HEX",
    help="The SHA-256 a file must have (64 hex digits): once per REMOTE LOCAL pair, in their "
    "order; '-' for a file not to check.",
)  # fmt: skip
@click.option(
    "--ranges", "ranges", multiple=True, metavar="OFFSET:LENGTH,...",
    help="Fetch only these byte ranges (LENGTH 'eof': to the end), each into the local file "
    "at its own offset: once per REMOTE LOCAL pair, in their order; '-' for a whole file.",
)  # fmt: skip
def add(
    job: str, names: tuple[str, ...], digests: tuple[str, ...], ranges: tuple[str, ...]
) -> None:
    """Add files to a job, all or none.  [bitsadmin /addfile, /addfileset]

    REMOTE is an http://, https:// or file:// URL, or an absolute path (its file:// URL);
    LOCAL a path (made absolute against the
    current directory; its directory must exist). Prints the job.

    \b
    With --sha256, ferryd checks each file once it has it all; a mismatch discards the
    data and fails the job (BG_E_VALIDATION_FAILED):
      ferry add nightly https://host/a.iso a.iso --sha256 9f86d0...
      ferry add nightly URL1 a URL2 b --sha256 - --sha256 9f86d0...   (only b checked)

    \b
    With --ranges (AddFileWithRanges), only those byte ranges are fetched; the local file
    gets the remote file's size, the rest of it holes:
      ferry add parts https://host/disk.img disk.img --ranges 0:512,1048576:eof"""
    c = _ctx()
    pairs = _pairs(names)
    files: list[tuple[str, str, str | None]] = [(r, loc, None) for r, loc in pairs]
    if digests:
        if len(digests) != len(pairs):
            raise click.UsageError(
                f"give --sha256 once per REMOTE LOCAL pair ({len(pairs)}), '-' for a file "
                f"not to check; got {len(digests)}"
            )
        files = [
            (r, loc, None if d == "-" else d)
            for (r, loc), d in zip(pairs, digests, strict=True)
        ]
    specs: list[tuple[str, str, str | None, str | None]] = [(*f, None) for f in files]
    if ranges:
        if len(ranges) != len(pairs):
            raise click.UsageError(
                f"give --ranges once per REMOTE LOCAL pair ({len(pairs)}), '-' for a whole "
                f"file; got {len(ranges)}"
            )
        specs = [(*f, None if r == "-" else r) for f, r in zip(files, ranges, strict=True)]
    j = c.client(transfer=True).get_job(job)
    j.add_files(specs)
    c.emit(j.data, lambda: click.echo(f"Added {len(pairs)} file(s) to job {_label(j)}."))


@cli.command(name="set-remote")
@click.argument("job")
@click.argument("index", type=click.IntRange(min=0), metavar="FILE_INDEX")
@click.argument("url")
def set_remote(job: str, index: int, url: str) -> None:
    """Give file FILE_INDEX (0-based, as `ferry files` lists them) a new remote name.
    [bitsadmin /setremotename; IBackgroundCopyFile2::SetRemoteName]

    For a download job's files not yet transferred, e.g. to swap an expired signed URL. A
    transfer in progress stops and goes back to the queue; the file keeps its partial data
    if the new server has the same size and validator (ETag or Last-Modified), and starts
    over otherwise. Prints the job."""
    c = _ctx()
    j = c.client().get_job(job)
    j.set_remote_name(index, url)
    c.emit(j.data, lambda: click.echo(f"File {index} of job {_label(j)} now comes from {url}."))


@cli.command(name="replace-remote-prefix")
@click.argument("job")
@click.argument("old")
@click.argument("new")
def replace_remote_prefix(job: str, old: str, new: str) -> None:
    """Every remote name of the job that starts with OLD starts with NEW instead.
    [bitsadmin /replaceremoteprefix; IBackgroundCopyJob3::ReplaceRemotePrefix]

    \b
    Case-sensitive, on every file of a download job, all or none (each new name must be a
    valid URL). Transferred files keep their data; the others keep their partial data if
    the new server has the same size and validator, and start over otherwise. The result is
    S_FALSE (still exit 0) when no name matched. JSON output: {"result": {"code",
    "hresult"}, "job": JOB}.
      ferry replace-remote-prefix nightly http://old-mirror/ https://new-mirror/"""
    c = _ctx()
    j = c.client().get_job(job)
    code = j.replace_remote_prefix(old, new)
    doc = {"result": {"code": code, "hresult": f"0x{hresult_of(code):08X}"}, "job": j.data}

    def human() -> None:
        if code == "S_FALSE":
            click.echo(f"No remote name of job {_label(j)} starts with {old} (S_FALSE).")
        else:
            click.echo(f"Remote names of job {_label(j)} starting with {old} now start with {new}.")

    c.emit(doc, human)


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
        from .table import print_jobs  # not rich: `ferry list` is called in loops

        print_jobs(docs, show_owner=all_users)

    c.emit(docs, human)


def _label(j: Job) -> str:
    return f"{j.display_name} ({j.id})"


# How each contract action reads on the command line; an action missing here still gets a
# command, described by the contract's summary.
_ACTION_TEXT: dict[str, tuple[str, str]] = {
    "resume": ("resumed", "Queue a job for transfer (from SUSPENDED, ERROR or TRANSIENT_ERROR)."),
    "suspend": ("suspended", "Stop a job's transfers."),
    "cancel": (
        "cancelled",
        "Cancel a job: temporary files are deleted, local files are never touched.",
    ),
    "take-ownership": ("taken over", "Make yourself the job's owner (owner or administrator)."),
}
# Actions that ask for a transfer, so they may start a user daemon.
_TRANSFER_ACTIONS = frozenset({"resume"})


def _simple_action(name: str, bitsadmin: str, summary: str) -> None:
    verb, doc = _ACTION_TEXT.get(name, ("done", summary + "."))

    @cli.command(name=name, help=f"{doc}  [bitsadmin {bitsadmin}]\n\nPrints the job.")
    @click.argument("job")
    def command(job: str) -> None:
        c = _ctx()
        j = c.client(transfer=name in _TRANSFER_ACTIONS).get_job(job)
        getattr(j, name.replace("-", "_"))()
        c.emit(j.data, lambda: click.echo(f"Job {_label(j)} {verb}; it is now {j.state.value}."))


for _action in ACTIONS:
    if _action.name != "complete":  # its own command below: it reports a result code
        _simple_action(_action.name, _action.bitsadmin, _action.summary)


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
        if code == "BG_S_PARTIAL_COMPLETE":
            click.echo(partial_complete_text(j.data), err=True)

    c.emit(doc, human)


def _property_option(p: Property) -> Callable[[Any], Any]:
    """``ferry set``'s option for a contract property: a switch for a boolean, a choice for
    an enumeration, else text that the contract's ``parse`` reads (in ``set_``, so that an
    empty value, which clears a command line, is still told apart from no option)."""
    help_text = p.cli.help or p.description
    if p.switch:
        negative = "--no-" + p.cli.flag.removeprefix("--")
        return click.option(f"{p.cli.flag}/{negative}", p.name, default=None, help=help_text)
    if p.choices is not None:
        choice = click.Choice(p.choices, case_sensitive=False)
        return click.option(p.cli.flag, p.name, type=choice, help=help_text)
    return click.option(p.cli.flag, p.name, metavar=p.cli.metavar, help=help_text)


def _property_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for p in reversed(PROPERTIES):
        f = _property_option(p)(f)
    return f


@cli.command(name="set")
@click.argument("job")
@_property_options
@network.options
@uploads.reply_file_option
def set_(job: str, reply_file: str | None = None, **options: Any) -> None:
    """Change job properties (one request: all or none); prints the job."""
    if reply_file is not None:
        uploads.set_reply_file(job, reply_file, bool(options and any(
            options.get(p.name) is not None for p in PROPERTIES)))
    props: dict[str, Any] = {}
    for p in PROPERTIES:
        value = options.get(p.name)
        if value is None:
            continue
        if isinstance(value, str):
            try:
                value = p.cli.parse(value)
            except ValueError as e:
                raise click.BadParameter(str(e), param_hint=p.cli.flag) from None
        props[p.name] = value
    props.update(network.collect(options))
    http_options = network.collect_http(options)
    if not props and not http_options and reply_file is not None:
        return
    if not props and not http_options:
        raise click.UsageError("nothing to set: give at least one option")
    c = _ctx()
    j = c.client().get_job(job)
    if http_options:
        # A request of its own (PATCH /v1/jobs/JOB/http-options), sent first: refused HTTP
        # options leave the job's properties unchanged too.
        j.set_http_options(**http_options)
    if props:
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
@click.option(
    "--retry-delay", type=click.IntRange(min=5), metavar="SEC",
    help="Wait SEC seconds after a transient error before trying again (the job's "
    "min_retry_delay, at least 5; ferryd's default is 600).",
)  # fmt: skip
@click.option(
    "--timeout", type=click.IntRange(min=0), metavar="SEC",
    help="Give up (ERROR) after SEC seconds without progress in transient errors (the job's "
    "no_progress_timeout).",
)  # fmt: skip
@click.argument("names", nargs=-1, required=True, metavar="REMOTE LOCAL [REMOTE LOCAL]...")
def transfer(
    priority: str,
    name: str | None,
    retry_delay: int | None,
    timeout: int | None,
    names: tuple[str, ...],
) -> None:
    """Transfer files now, with a progress bar, and complete the job.  [bitsadmin /transfer]

    Creates a job, adds the files, resumes it and follows it. On success the files are in
    place (JSON: {"result", "job"}); on ERROR the job is kept for `ferry resume` and the exit
    status is 1; Ctrl-C cancels the job (exit 130). A transient error is retried by ferryd:
    the bar (or, when stderr is not a terminal, one line per state change) says which try
    comes next and when."""
    import os.path

    from .transfer import run_transfer

    pairs = _pairs(names)
    c = _ctx()
    label = name or os.path.basename(pairs[0][1].rstrip("/")) or "ferry transfer"
    props: dict[str, Any] = {}
    if retry_delay is not None:
        props["min_retry_delay"] = retry_delay
    if timeout is not None:
        props["no_progress_timeout"] = timeout
    code = run_transfer(
        c.client(transfer=True), pairs, label, Priority(priority.lower()), c.json, props
    )
    if code:
        click.get_current_context().exit(code)


@cli.command()
def shutdown() -> None:
    """Stop the daemon ferry talks to, as SIGTERM would: transfers stop at a checkpoint
    and resume when ferryd starts again. Allowed for the daemon's own user (user mode) and
    for administrators (the system daemon); anyone else gets E_ACCESSDENIED. Never starts
    a daemon."""
    c = _ctx()
    answer = c.client().shutdown()
    c.emit(answer, lambda: click.echo(f"ferryd at {c.choice.path} is stopping."))


@cli.command()
@click.argument("job", required=False)
@click.option("--all-users", is_flag=True, help="Every user's jobs (administrators only).")
@click.option(
    "--all-events/--callback", "all_events", default=True,
    help="--all-events (the default): every change of every job, whatever its notify flags "
    "(observer). --callback: only what the jobs' notify flags ask for (callback view).",
)  # fmt: skip
def events(job: str | None, all_users: bool, all_events: bool) -> None:
    """Follow job events (a job's, or all of yours) until Ctrl-C.

    Each job is first reported as job-snapshot. By default every change follows
    (job-modification for create, resume, suspend, progress, a retry…; job-transferred,
    job-error, file-transferred, job-removed), whatever the job's notify flags: what
    happens to a job, as an observer sees it.

    \b
    --callback shows instead what the job's callback gets, as its notify flags ask:
    job-transferred (JOB_TRANSFERRED), job-error (JOB_ERROR), file-transferred
    (FILE_TRANSFERRED), job-modification (JOB_MODIFICATION), job-removed; DISABLE
    silences the job. With the default flags (JOB_TRANSFERRED | JOB_ERROR) that is
    only the end of a transfer.

    --json: one JSON object per line ({"type", "job_id", "job"})."""
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


# Every JOB argument completes job ids and names from the daemon (cli/completion.py).
completion.install(cli)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="ferry")
    except BrokenPipeError:
        # `ferry list | head`: the reader left; that is not an error worth a traceback.
        sys.stderr.close()
        sys.exit(EXIT_ERROR)


if __name__ == "__main__":
    main()
