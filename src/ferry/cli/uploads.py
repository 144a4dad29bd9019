"""``ferry reply`` and ``ferry set --reply-file``: the upload-reply side of the command line
(SPEC §9). ``main`` adds these to the ``ferry`` group."""

from __future__ import annotations

import base64
import sys
from collections.abc import Callable
from typing import Any

import click

from .context import current as _ctx


def reply_file_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--reply-file",
        "reply_file",
        metavar="PATH",
        type=click.Path(dir_okay=False),
        help="Upload-reply jobs: where complete puts the reply (default: the local name "
        "plus .reply).  [bitsadmin /setreplyfilename]",
    )(f)


def set_reply_file(job: str, path: str, more: bool) -> None:
    """``ferry set JOB --reply-file PATH`` (with ``more``, other options follow and print
    the job)."""
    c = _ctx()
    j = c.client().get_job(job)
    j.set_reply_file(path)
    if not more:
        c.emit(j.data, lambda: click.echo(f"Job {j.display_name} ({j.id}) updated."))


@click.command()
@click.argument("job")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True),
    metavar="FILE",
    help="Write the reply to FILE instead of stdout.",
)
def reply(job: str, output: str | None) -> None:
    """Print the reply of a TRANSFERRED upload-reply job (at most 1 MiB; after complete
    it is in the reply file). JSON: {"size", "data" (base64)}.  [bitsadmin /getreplydata]"""
    c = _ctx()
    data = c.client().get_job(job).reply_data()
    if c.json:
        c.emit({"size": len(data), "data": base64.b64encode(data).decode("ascii")}, lambda: None)
        return
    if output is not None:
        with open(output, "wb") as fh:
            fh.write(data)
        return
    sys.stdout.buffer.write(data)
    sys.stdout.flush()
