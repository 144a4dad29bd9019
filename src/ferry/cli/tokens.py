"""``ferry open``, ``ferry helper-token`` and ``ferry logoff``: IBitsTokenOptions and logon
sessions from the command line (SPEC §4.3-4.5, §6). ``main`` adds these commands to the
``ferry`` group.

``helper-token set`` makes the identity running the command the helper token, which is how
another user delegates: the owner runs ``ferry open JOB --interface token-options`` and hands
the printed handle to the helper, who runs ``ferry helper-token set --handle H``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from ..model.types import TokenFlags
from ..protocol import INTERFACES, MAX_HANDLE_TTL
from .context import current as _ctx

if TYPE_CHECKING:
    from ..client.sync import TokenOptions

FLAG_NAMES = {"local-file": TokenFlags.LOCAL_FILE, "network": TokenFlags.NETWORK, "none": 0}
CLI_DEFAULT_TTL = 600


@click.command(name="open")
@click.argument("job")
@click.option("--interface", type=click.Choice(INTERFACES), default="job", show_default=True)
@click.option(
    "--ttl",
    type=click.IntRange(1, MAX_HANDLE_TTL),
    default=CLI_DEFAULT_TTL,
    show_default=True,
    metavar="SEC",
    help="Lifetime of the handle. This command's own connection ends when it exits, so a "
    "handle opened here lives by its TTL.",
)
def open_(job: str, interface: str, ttl: int) -> None:
    """Open JOB for an interface and print the handle (QueryInterface).

    The access check happens now, with your identity; calls made later with the handle are
    not checked against whoever carries them."""
    c = _ctx()
    handle = c.client().open(job, interface, ttl)
    c.emit(
        {"handle": handle, "interface": interface, "ttl": ttl},
        lambda: click.echo(handle),
    )


@click.group(name="helper-token")
def helper_token() -> None:
    """IBitsTokenOptions: the second identity a job uses for local files or the network.

    \b
    Address the job directly (JOB: the check is made now, as you) or through a
    token-options handle from `ferry open JOB --interface token-options` (--handle H:
    the check was made when the handle was opened)."""


def _options(job: str | None, handle: str | None) -> TokenOptions:
    if (job is None) == (handle is None):
        raise click.UsageError("give JOB or --handle H (one of them)")
    from ..client.sync import TokenOptions

    return TokenOptions(_ctx().client(), handle=handle, job=job)


def _show(opts: TokenOptions) -> None:
    c = _ctx()
    flags = opts.helper_token_flags()
    sid = opts.helper_token_sid()
    doc: dict[str, Any] = {"flags": flags.names(), "flags_value": int(flags), "sid": sid}
    c.emit(
        doc,
        lambda: click.echo(
            f"helper token: {sid or '(none)'}\nflags: {', '.join(flags.names()) or '(none)'}"
        ),
    )


_job_arg = click.argument("job", required=False)
_handle_opt = click.option("--handle", metavar="H", help="A token-options handle.")


@helper_token.command(name="set")
@_job_arg
@_handle_opt
def ht_set(job: str | None, handle: str | None) -> None:
    """Make the identity running this command the job's helper token (SetHelperToken)."""
    opts = _options(job, handle)
    opts.set_helper_token()
    _show(opts)


@helper_token.command(name="flags")
@click.argument("args", nargs=-1, required=True, metavar="(JOB | --handle H) FLAG...")
@_handle_opt
def ht_flags(args: tuple[str, ...], handle: str | None) -> None:
    """Set the helper token flags: local-file, network (both allowed) or none.

    \b
    local-file: temporary files and the final rename act as the helper token.
    network:    file:// sources (and implicit HTTP credentials) act as the helper token."""
    words = list(args)
    job = None
    if handle is None:
        if not words:
            raise click.UsageError("give JOB or --handle H")
        job = words.pop(0)
    if not words:
        raise click.UsageError("give at least one flag: local-file, network or none")
    flags = 0
    for w in words:
        value = FLAG_NAMES.get(w.lower())
        if value is None:
            raise click.UsageError(f"unknown flag {w!r}: use local-file, network or none")
        flags |= int(value)
    if "none" in (w.lower() for w in words) and flags:
        raise click.UsageError("'none' cannot be combined with other flags")
    opts = _options(job, handle)
    opts.set_helper_token_flags(flags)
    _show(opts)


@helper_token.command(name="show")
@_job_arg
@_handle_opt
def ht_show(job: str | None, handle: str | None) -> None:
    """Print the helper token flags and the helper token's SID (GetHelperTokenSid)."""
    _show(_options(job, handle))


@helper_token.command(name="clear")
@_job_arg
@_handle_opt
def ht_clear(job: str | None, handle: str | None) -> None:
    """Discard the helper token (ClearHelperToken); the flags stay."""
    opts = _options(job, handle)
    opts.clear_helper_token()
    _show(opts)


@click.command()
@click.option("--user", metavar="UID|NAME", help="Every session of this user.")
@click.option("--session", type=click.IntRange(0), metavar="ID", help="One audit session id.")
def logoff(user: str | None, session: int | None) -> None:
    """Declare a user or a login session logged off now (administrators).

    Helper tokens from that session, and of that user's jobs, are discarded at once; see
    docs/security.md for the PAM close-session hook that calls this."""
    if (user is None) == (session is None):
        raise click.UsageError("give exactly one of --user and --session")
    c = _ctx()
    who: str | int | None = int(user) if user is not None and user.isdigit() else user
    doc = c.client().logoff(user=who, session=session)
    c.emit(doc, lambda: click.echo(f"logged off: {doc.get('logged_off')}"))
