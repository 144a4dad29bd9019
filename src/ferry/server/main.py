"""The ``ferry-server`` command."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import sys
from pathlib import Path

import click
from aiohttp import web

from .._version import __version__
from . import ServerConfig, make_app
from .config import IDLE_TIMEOUT, IIS_SESSION_TIMEOUT

HELP = """Receive uploads over the BITS Upload Protocol (the server side of ferry's upload
and upload-reply jobs, and of Windows BITS clients), and serve the files under DIR.

Uploading to /a/b creates the file DIR/a/b: nothing is visible there until the client's
Close-Session, then the file appears whole (one rename). Sessions and partial
data live in the state directory and survive a restart of the server; every acknowledged
byte is on disk. URL paths never leave DIR: "..", encoded dots or separators, NUL, overlong
names and symbolic links are refused (400 or 403). The directory of a destination must
exist. GET and HEAD serve the files under DIR, with ranges.

Several servers sharing one --state-dir (each with its own --host-id) form a farm: a client
pinned to a host by BITS-Host-Id keeps sending to it, and any server can take the session
over when the client falls back to the original URL.

With --notify-url, each finished upload is posted to a back-end application (by reference:
file names in the headers BITS-Request-DataFile-Name and BITS-Response-DataFile-Name; by
value: the upload as the body) and its answer becomes the reply of an upload-reply job; the
upload then reaches DIR only if the back end answers BITS-Copy-File-To-Destination: true.

ferry-server prints "listening on URL" once it accepts connections; SIGTERM or SIGINT stop
it (sessions stay in the state directory). Exit status: 0 after a stop, 2 on bad usage,
1 when it cannot start.
"""


class _QuietClientErrors(logging.Filter):
    """aiohttp logs every request its HTTP parser refuses (a line too long, a repeated
    Content-Length, garbage) at ERROR with a traceback: a client could fill the log with
    them. Such a refusal is the client's error, answered 400: one INFO line, no traceback
    (shown with -v only)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError) or not 400 <= (exc.code or 0) < 500:
            return True
        record.msg = f"{record.getMessage()}: {exc.code} {exc.message}"
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.INFO, "INFO"
        return logging.getLogger("ferry.server").isEnabledFor(logging.INFO)


def _bind(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise click.BadParameter("HOST:PORT, e.g. 0.0.0.0:8080 or [::1]:8080 (port 0: any)")
    return host.strip("[]"), int(port)


@click.command(name="ferry-server", help=HELP, context_settings={"max_content_width": 100})
@click.option(
    "--bind",
    "bind",
    required=True,
    metavar="HOST:PORT",
    help="Address and port to listen on (port 0: a free one, printed).",
)
@click.option(
    "--root",
    required=True,
    metavar="DIR",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Directory the URL paths map under.",
)
@click.option(
    "--state-dir",
    metavar="DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Sessions and partial uploads [default: DIR/.ferry-server]. Share it "
    "between the servers of a farm; best on the file system of --root.",
)
@click.option(
    "--max-upload-size",
    type=click.IntRange(min=0),
    metavar="BYTES",
    help="Refuse larger uploads (BG_E_TOO_LARGE) [default: no limit].",
)
@click.option(
    "--allow-overwrite",
    is_flag=True,
    help="Let an upload replace an existing file (refused otherwise: 403).",
)
@click.option(
    "--session-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=IIS_SESSION_TIMEOUT,
    show_default=True,
    metavar="SEC",
    help="A session idle this long expires (then BG_E_SESSION_NOT_FOUND).",
)
@click.option(
    "--host-id",
    metavar="NAME",
    help="This server's name or address in a farm, sent as BITS-Host-Id.",
)
@click.option(
    "--host-id-fallback-timeout",
    type=click.IntRange(min=0),
    metavar="SEC",
    help="BITS-Host-Id-Fallback-Timeout: how long a client keeps trying the host "
    "before it falls back to the original URL.",
)
@click.option(
    "--notify-url",
    metavar="URL",
    help="Back-end application that receives finished uploads (upload-reply).",
)
@click.option(
    "--notify-type",
    type=click.Choice(["by-reference", "by-value"]),
    default="by-reference",
    show_default=True,
    help="How the back end receives an upload.",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False),
    metavar="PEM",
    help="Serve HTTPS with this certificate chain (with --tls-key).",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False),
    metavar="PEM",
    help="The private key of --tls-cert.",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=IDLE_TIMEOUT,
    show_default=True,
    metavar="SEC",
    help="Close a connection that sends no whole request for this long; a fragment whose "
    "body stalls this long keeps what arrived and frees its session.",
)
@click.version_option(__version__, prog_name="ferry-server")
@click.option("-v", "--verbose", is_flag=True, help="Log every session event to stderr.")
def main(
    bind: str,
    root: Path,
    state_dir: Path | None,
    max_upload_size: int | None,
    allow_overwrite: bool,
    session_timeout: float,
    host_id: str | None,
    host_id_fallback_timeout: int | None,
    notify_url: str | None,
    notify_type: str,
    tls_cert: str | None,
    tls_key: str | None,
    idle_timeout: float,
    verbose: bool,
) -> None:
    host, port = _bind(bind)
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    try:
        config = ServerConfig(
            root=root,
            state_dir=state_dir,
            max_upload_size=max_upload_size,
            allow_overwrite=allow_overwrite,
            session_timeout=session_timeout,
            host_id=host_id,
            host_id_fallback_timeout=host_id_fallback_timeout,
            notify_url=notify_url,
            notify_type=notify_type,  # type: ignore[arg-type]
            idle_timeout=idle_timeout,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="ferry-server: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiohttp.server").addFilter(_QuietClientErrors())
    ctx = None
    if tls_cert is not None and tls_key is not None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(tls_cert, tls_key)
    try:
        asyncio.run(_serve(config, host, port, ctx))
    except OSError as exc:
        click.echo(f"ferry-server: {exc}", err=True)
        sys.exit(1)


async def _serve(config: ServerConfig, host: str, port: int, ctx: ssl.SSLContext | None) -> None:
    app = make_app(config)
    # keepalive_timeout: aiohttp's default keeps a connection that never sends a whole
    # request for an hour (slow or idle clients could hold every descriptor)
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, keepalive_timeout=config.idle_timeout
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ctx, backlog=256)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        sockname = sockets[0].getsockname() if sockets else (host, port)
        shown = f"[{sockname[0]}]" if ":" in sockname[0] else sockname[0]
        scheme = "https" if ctx is not None else "http"
        print(f"listening on {scheme}://{shown}:{sockname[1]}/", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    main()
