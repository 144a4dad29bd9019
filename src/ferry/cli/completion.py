"""Shell completion for ``ferry`` (bash, zsh, fish) on click's completion machinery, with job
ids and display names completed from the daemon.

``ferry completion SHELL`` prints the script to source (or install: ``make install`` and
``pip install`` put the generated ones where each shell looks, see ``completions/``). At
completion time the shell runs ``ferry`` with ``_FERRY_COMPLETE`` set; every ``JOB``
argument then asks the daemon for the caller's jobs, briefly (a short timeout, never
starting a daemon, and silently nothing when none answers), so a Tab never hangs.
"""

from __future__ import annotations

from typing import Any

import click
from click.shell_completion import CompletionItem, get_completion_class

PROG = "ferry"
COMPLETE_VAR = "_FERRY_COMPLETE"
SHELLS = ("bash", "zsh", "fish")
# A Tab must answer at once: a daemon that does not answer in this time gives no candidates.
TIMEOUT = 2.0


def complete_jobs(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Job ids and display names of the caller's jobs that start with ``incomplete``; the
    other one is the candidate's description (shown by zsh and fish)."""
    from ..client import Client, locate_socket

    root = ctx.find_root()
    try:
        with Client(locate_socket(root.params.get("socket")).path, timeout=TIMEOUT) as client:
            jobs = [j.data for j in client.jobs()]
    except Exception:  # no daemon, no access, anything: no candidates, never a traceback
        return []
    items: list[CompletionItem] = []
    names = [str(j.get("display_name", "")) for j in jobs]
    for j, name in zip(jobs, names, strict=True):
        if str(j["id"]).startswith(incomplete):
            items.append(CompletionItem(j["id"], help=name))
    for j, name in zip(jobs, names, strict=True):
        # A name that two jobs share does not name a job (the daemon refuses it).
        if name and name.startswith(incomplete) and names.count(name) == 1:
            items.append(CompletionItem(name, help=f"{j['state']} {str(j['id'])[:8]}"))
    return items


def install(group: click.Group) -> None:
    """Give every ``JOB`` argument of ``group`` (and of its subgroups) job completion."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            install(command)
        for param in command.params:
            if isinstance(param, click.Argument) and param.name == "job":
                param._custom_shell_complete = complete_jobs


def script(root: click.Command, shell: str) -> str:
    """The completion script click generates for ``shell``."""
    cls = get_completion_class(shell)
    if cls is None:
        raise click.BadParameter(f"no completion for {shell!r}")
    return cls(root, {}, PROG, COMPLETE_VAR).source()


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the shell completion script for SHELL (bash, zsh or fish).

    \b
    Job ids and names are completed from the daemon. Load it now, or install it:
      eval "$(ferry completion bash)"        # ~/.bashrc
      eval "$(ferry completion zsh)"         # ~/.zshrc
      ferry completion fish > ~/.config/fish/completions/ferry.fish
    (make install and pip install put the scripts where the shells look.)"""
    click.echo(script(ctx.find_root().command, shell), nl=False)
