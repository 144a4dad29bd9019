"""``ferry credentials``: SetCredentials / RemoveCredentials from the command line (SPEC
§8.2). A password is read from standard input or a file, never from the command line
(where every user could see it in ``ps``). ``main`` adds the group to ``ferry``."""

from __future__ import annotations

import sys

import click

from .context import current as _ctx

_TARGETS = click.Choice(["server", "proxy"], case_sensitive=False)
_SCHEMES = click.Choice(["basic", "digest", "ntlm", "negotiate"], case_sensitive=False)


def _strip_newline(text: str) -> str:
    return text[:-1] if text.endswith("\n") else text


@click.group(name="credentials")
def credentials() -> None:
    """Credentials a job answers HTTP authentication with (SetCredentials).

    \b
    With --user and a password: that user name and password, sent only to the
    target (the server or the proxy) and only over the scheme given.
    Without --user (ntlm, negotiate): implicit credentials, the Kerberos ticket
    of the job's network identity (its NETWORK helper token, else its owner)."""


def _print(job: str) -> None:
    c = _ctx()
    creds = c.client().get_job(job).credentials()

    def human() -> None:
        if not creds:
            click.echo("no credentials")
        for cr in creds:
            who = (
                "(implicit: the network identity's Kerberos ticket)"
                if cr["implicit"]
                else cr["user"]
            )
            click.echo(f"{cr['target']:<6} {cr['scheme']:<9} {who}")

    c.emit({"credentials": creds}, human)


@credentials.command(name="set")
@click.argument("job")
@click.option("--target", required=True, type=_TARGETS, help="server or proxy")
@click.option("--scheme", required=True, type=_SCHEMES, help="basic, digest, ntlm or negotiate")
@click.option("--user", help="The user name (omit for implicit ntlm/negotiate).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option(
    "--password-file",
    type=click.Path(dir_okay=False, allow_dash=False),
    help="Read the password from this file (its first line).",
)
def cr_set(
    job: str,
    target: str,
    scheme: str,
    user: str | None,
    password_stdin: bool,
    password_file: str | None,
) -> None:
    """Add or replace the job's credentials for TARGET and SCHEME."""
    if password_stdin and password_file:
        raise click.UsageError("give --password-stdin or --password-file, not both")
    password: str | None = None
    if user is not None:
        if password_stdin:
            password = _strip_newline(sys.stdin.readline())
        elif password_file:
            try:
                with open(password_file, encoding="utf-8") as f:
                    password = _strip_newline(f.readline())
            except OSError as exc:
                raise click.UsageError(f"cannot read {password_file}: {exc.strerror}") from None
        else:
            raise click.UsageError("--user needs --password-stdin or --password-file")
    elif password_stdin or password_file:
        raise click.UsageError("a password needs --user")
    _ctx().client().get_job(job).set_credentials(target.upper(), scheme.upper(), user, password)
    _print(job)


@credentials.command(name="remove")
@click.argument("job")
@click.option("--target", required=True, type=_TARGETS)
@click.option("--scheme", required=True, type=_SCHEMES)
def cr_remove(job: str, target: str, scheme: str) -> None:
    """Remove the job's credentials for TARGET and SCHEME (RemoveCredentials)."""
    removed = _ctx().client().get_job(job).remove_credentials(target.upper(), scheme.upper())
    if not removed and not _ctx().json:
        click.echo(f"no {target.upper()} {scheme.upper()} credentials to remove", err=True)
    _print(job)


@credentials.command(name="list")
@click.argument("job")
def cr_list(job: str) -> None:
    """List the job's credentials (never a password)."""
    _print(job)
