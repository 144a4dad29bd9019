"""The aiohttp application: BITS_POST (the BITS Upload Protocol, server side), the reply
URLs of upload-reply sessions, and GET/HEAD of the files under the root.

Strict in what it sends (IIS-like): every BITS answer is ``BITS-Packet-Type: Ack`` with an
empty body and ``Content-Length: 0``, session ids in ``{GUID}`` form, errors as
``BITS-Error-Code`` + ``BITS-Error-Context``. Lenient in what it accepts: packet types in any
case, protocol lists separated by commas or spaces, session ids with or without braces,
overlapping fragments (only the new bytes are written), ``POST`` with
``X-Http-Method-Override: BITS_POST``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import stat
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import HttpVersion11, web
from yarl import URL

from ..errors import CODES, format_hresult, hresult_of
from .config import ServerConfig
from .notify import Backend, BackendFailed
from .paths import PathRefused, UrlPath, open_file, open_parent, parse_url_path
from .sessions import Session, SessionStore, new_session_id, normalize_session_id

log = logging.getLogger("ferry.server")

PROTOCOL_GUID = "{7df0354d-249b-430f-820d-3d2a9bef4931}"
MAX_HEADER_VALUE = 4096
CTX_SERVER = 0x5
# Disk full as [MC-BUP] and the reference summary write it (ferry's own ERROR_DISK_FULL,
# HRESULT_FROM_WIN32(112), is 0x80070070; a client should read both)
DISK_FULL = 0x80070112
CTX_APPLICATION = 0x7
CHUNK = 1 << 20
LOCK_WAIT = 60.0  # seconds a request waits for another one on the same session
PACKET_TYPES = {
    "ping": "Ping",
    "create-session": "Create-Session",
    "fragment": "Fragment",
    "close-session": "Close-Session",
    "cancel-session": "Cancel-Session",
}
_RANGE_RE = re.compile(r"^\s*bytes\s+(?:(\d+)\s*-\s*(-1|\d+)|\*)\s*/\s*(\d+)\s*$", re.I)
_TEMP_PREFIX = ".ferry-upload-"


class BitsError(Exception):
    """An error Ack: HTTP ``status`` with ``code`` (a name from ferry.errors, or an HRESULT)
    and context."""

    def __init__(
        self,
        status: int,
        code: str | int,
        context: int = CTX_SERVER,
        headers: Mapping[str, str] | None = None,
        reason: str = "",
    ) -> None:
        super().__init__(reason or str(code))
        self.status = status
        self.hresult = code if isinstance(code, int) else hresult_of(code)
        self.context = context
        self.headers = dict(headers or {})
        self.reason = reason


@dataclass
class State:
    """What one application keeps while it runs."""

    config: ServerConfig
    root: str
    store: SessionStore
    backend: Backend | None


CONFIG_KEY = web.AppKey("ferry_server_config", ServerConfig)
STATE_KEY = web.AppKey("ferry_server_state", State)


def _ack(status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    h = {"BITS-Packet-Type": "Ack", "Content-Length": "0"}
    h.update(headers or {})
    return web.Response(status=status, headers=h)


def _error_ack(err: BitsError, session_id: str | None) -> web.Response:
    h = {
        "BITS-Error-Code": format_hresult(err.hresult),
        "BITS-Error-Context": f"0x{err.context:X}",
    }
    if session_id:
        h["BITS-Session-Id"] = session_id
    h.update(err.headers)
    return _ack(err.status, h)


def _invalid(reason: str) -> BitsError:
    return BitsError(400, "E_INVALIDARG", reason=reason)


def _not_found() -> BitsError:
    return BitsError(500, "BG_E_SESSION_NOT_FOUND", reason="unknown session")


# -- the BITS_POST entry point --------------------------------------------------------------


def _is_bits_post(request: web.Request) -> bool:
    if request.method == "BITS_POST":
        return True
    override = request.headers.get("X-Http-Method-Override", "")
    return request.method == "POST" and override.strip().upper() == "BITS_POST"


async def handle(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    if _is_bits_post(request):
        return await _bits_post(state, request)
    if request.method in ("GET", "HEAD"):
        return await _get(state, request)
    raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD", "BITS_POST"])


async def _bits_post(state: State, request: web.Request) -> web.StreamResponse:
    raw_sid = request.headers.get("BITS-Session-Id")
    sid = normalize_session_id(raw_sid) if raw_sid else None
    try:
        for name, value in request.headers.items():
            if len(value) > MAX_HEADER_VALUE:
                raise _invalid(f"header {name} too long")
        ptype = PACKET_TYPES.get(request.headers.get("BITS-Packet-Type", "").strip().lower())
        if ptype is None:
            raise _invalid("missing or unknown BITS-Packet-Type")
        path = _url_path(request)
        if "Content-Length" not in request.headers:
            raise _invalid("no Content-Length")
        try:
            length = int(request.headers["Content-Length"])
        except ValueError as exc:
            raise _invalid("bad Content-Length") from exc
        if ptype == "Ping":
            if length:
                raise _invalid("Ping with a body")
            return _ack(200, {"BITS-Session-Id": sid} if sid else None)
        if ptype == "Create-Session":
            return await _create(state, request, path, length)
        if raw_sid is None:
            raise _invalid(f"{ptype} without BITS-Session-Id")
        if sid is None:
            raise _not_found()
        if ptype == "Fragment":
            return await _fragment(state, request, path, sid, length)
        if length:
            raise _invalid(f"{ptype} with a body")
        if ptype == "Close-Session":
            return await _close(state, path, sid)
        return await _cancel(state, sid)
    except BitsError as err:
        if err.status >= 500 or err.context == CTX_APPLICATION:
            log.info("%s %r: %s %s", request.method, request.path, err.status, err)
        return _error_ack(err, sid)
    except OSError as exc:  # the state directory failed us: a BITS answer all the same
        log.warning("%s %r: %s", request.method, request.path, exc)
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        return _error_ack(BitsError(500, DISK_FULL if full else "E_FAIL"), sid)


def _url_path(request: web.Request) -> UrlPath:
    """The checked destination of a request: its raw path relative to where the application
    is mounted (a sub-application's prefix removed)."""
    raw = request.raw_path.split("?", 1)[0]
    prefix = _mount_prefix(request)
    if prefix and raw.startswith(prefix):
        raw = raw[len(prefix) :]
    try:
        return parse_url_path(raw)
    except PathRefused as exc:
        raise _path_error(exc) from exc


def _mount_prefix(request: web.Request) -> str:
    resource = request.match_info.route.resource
    canonical = resource.canonical if resource is not None else ""
    return canonical.rsplit("/{", 1)[0] if "/{" in canonical else ""


def _path_error(exc: PathRefused) -> BitsError:
    if exc.status == 404:
        return BitsError(404, "BG_E_HTTP_ERROR_404", reason=exc.reason)
    code = "E_INVALIDARG" if exc.status == 400 else "E_ACCESSDENIED"
    return BitsError(exc.status, code, reason=exc.reason)


# -- Create-Session -------------------------------------------------------------------------


def _protocols(value: str) -> list[str]:
    out = []
    for item in re.split(r"[\s,;]+", value.strip()):
        if item:
            out.append("{" + item.strip("{}").lower() + "}")
    return out


async def _create(
    state: State, request: web.Request, path: UrlPath, length: int
) -> web.StreamResponse:
    if length:
        raise _invalid("Create-Session with a body")
    offered = request.headers.get("BITS-Supported-Protocols")
    if offered is None:
        raise _invalid("no BITS-Supported-Protocols")
    if PROTOCOL_GUID not in _protocols(offered):
        raise _invalid("no protocol in common")
    _check_destination(state, path)
    session = Session(
        id=new_session_id(),
        path=list(path.segments),
        created=time.time(),
        host_id=state.config.host_id,
    )
    await asyncio.to_thread(state.store.create, session)
    log.info("session %s created for %s", session.id, path)
    headers = {
        "BITS-Protocol": PROTOCOL_GUID,
        "BITS-Session-Id": session.id,
        "Accept-Encoding": "identity",
    }
    if state.config.host_id is not None:
        headers["BITS-Host-Id"] = state.config.host_id
        if state.config.host_id_fallback_timeout is not None:
            headers["BITS-Host-Id-Fallback-Timeout"] = str(state.config.host_id_fallback_timeout)
    return _ack(200, headers)


def _check_destination(state: State, path: UrlPath) -> None:
    """The destination's directory exists under the root (reached without symbolic links)
    and the destination is either absent or (with overwrite allowed) a regular file."""
    try:
        pfd = open_parent(state.root, path)
    except PathRefused as exc:
        raise _path_error(exc) from exc
    try:
        st = os.stat(path.name, dir_fd=pfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    finally:
        os.close(pfd)
    if not stat.S_ISREG(st.st_mode):
        raise BitsError(403, "E_ACCESSDENIED", reason="destination is not a regular file")
    if not state.config.allow_overwrite:
        raise BitsError(403, "E_ACCESSDENIED", reason="destination exists")


# -- sessions: lookup and lock --------------------------------------------------------------


@contextlib.asynccontextmanager
async def _locked(state: State, sid: str) -> AsyncIterator[Session]:
    """The session, loaded and locked against every other request (in any process)."""
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fd = state.store.try_lock(sid)
        except (FileNotFoundError, NotADirectoryError):
            raise _not_found() from None
        if fd is not None:
            break
        if time.monotonic() > deadline:
            raise BitsError(503, "BG_E_HTTP_ERROR_503", reason="session busy")
        await asyncio.sleep(0.01)
    try:
        session = state.store.load(sid)
        if session is None:
            raise _not_found()
        if _expired(state, sid):
            state.store.delete(sid)
            raise _not_found()
        yield session
    finally:
        os.close(fd)


def _expired(state: State, sid: str) -> bool:
    last = state.store.last_used(sid)
    return last is None or time.time() - last > state.config.session_timeout


def _same_path(session: Session, path: UrlPath) -> None:
    if tuple(session.path) != path.segments:
        raise BitsError(400, "E_INVALIDARG", reason="session belongs to another URL")


# -- Fragment -------------------------------------------------------------------------------


def _parse_range(value: str | None) -> tuple[int, int, int]:
    """(first, last, total) of ``bytes S-E/T`` (inclusive); ``bytes */0`` or ``bytes 0--1/0``
    for the one empty fragment of an empty upload: (0, -1, 0)."""
    if value is None:
        raise _invalid("Fragment without Content-Range")
    m = _RANGE_RE.match(value)
    if m is None:
        raise _invalid("malformed Content-Range")
    total = int(m.group(3))
    if m.group(1) is None or m.group(2) == "-1":
        if total != 0 or (m.group(1) not in (None, "0")):
            raise _invalid("malformed Content-Range")
        return 0, -1, 0
    first, last = int(m.group(1)), int(m.group(2))
    if first > last or last >= total:
        raise _invalid("Content-Range out of order or beyond its total")
    return first, last, total


async def _fragment(
    state: State, request: web.Request, path: UrlPath, sid: str, length: int
) -> web.StreamResponse:
    first, last, total = _parse_range(request.headers.get("Content-Range"))
    if length != last - first + 1:
        raise _invalid("Content-Length does not match Content-Range")
    enc = request.headers.get("Content-Encoding", "identity").strip().lower()
    if enc not in ("", "identity"):
        raise _invalid("only the identity encoding is accepted")
    cfg = state.config
    if cfg.max_fragment_size is not None and length > cfg.max_fragment_size:
        raise BitsError(413, "BG_E_TOO_LARGE", reason="fragment too large")
    async with _locked(state, sid) as session:
        _same_path(session, path)
        if session.closed:
            raise _not_found()
        if cfg.max_upload_size is not None and total > cfg.max_upload_size:
            raise BitsError(500, "BG_E_TOO_LARGE", reason="upload larger than allowed")
        if session.total is None:
            session.total = total
            await asyncio.to_thread(state.store.save, session)
        elif session.total != total:
            raise _invalid("the total size changed")
        received = state.store.received(sid)
        if first > received:
            raise BitsError(
                416,
                "BG_E_HTTP_ERROR_416",
                headers={"BITS-Received-Content-Range": str(received)},
                reason="gap",
            )
        if last + 1 > received:
            received = await _write(state, request, sid, first, received, last + 1)
        state.store.touch(sid)
        headers = {"BITS-Session-Id": sid, "BITS-Received-Content-Range": str(received)}
        if received == total and state.backend is not None:
            headers["BITS-Reply-URL"] = await _reply_url(state, request, session)
            state.store.touch(sid)
        return _ack(200, headers)


async def _write(
    state: State, request: web.Request, sid: str, first: int, received: int, end: int
) -> int:
    """Write the bytes [received, end) of a fragment starting at ``first`` (those before
    ``received`` are already stored: read and dropped), fsync, and return the new size. A
    body cut short keeps (and fsyncs) what arrived; the client learns it on its next try."""
    skip = received - first
    pos = received
    idle = state.config.idle_timeout
    fd = os.open(state.store.data_path(sid), os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            # A body that stalls for about idle_timeout (between half of it and all of it:
            # the deadline is pushed back only when half of it is spent, so the timer costs
            # nothing per chunk) counts as cut off: what arrived is kept
            loop = asyncio.get_running_loop()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(loop.time() + idle) as deadline:
                    while pos < end:
                        now = loop.time()
                        if (deadline.when() or now) - now < idle / 2:
                            deadline.reschedule(now + idle)
                        try:
                            chunk = await request.content.readany()
                        except ConnectionError:
                            break  # the client went away: what arrived is kept
                        if not chunk:
                            break
                        if skip:
                            if len(chunk) <= skip:
                                skip -= len(chunk)
                                continue
                            chunk = chunk[skip:]
                            skip = 0
                        chunk = chunk[: end - pos]
                        view = memoryview(chunk)
                        while view:
                            n = os.pwrite(fd, view, pos)
                            pos += n
                            view = view[n:]
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                os.ftruncate(fd, pos)
                raise BitsError(500, DISK_FULL, reason="disk full") from exc
            raise
        finally:
            await asyncio.to_thread(os.fdatasync, fd)  # the size too: it is what counts
    finally:
        os.close(fd)
    if pos < end:
        raise _invalid("fragment body shorter than its Content-Length")
    return pos


# -- upload-reply ---------------------------------------------------------------------------


async def _reply_url(state: State, request: web.Request, session: Session) -> str:
    """The reply of a whole upload: ask the back end once (again after a failure), keep its
    answer in the session, and give its URL."""
    assert state.backend is not None
    if session.reply is None:
        try:
            session.reply = await state.backend.notify(
                request, state.store.data_path(session.id), state.store.reply_path(session.id)
            )
        except BackendFailed as exc:
            raise BitsError(
                exc.status,
                exc.hresult,
                context=CTX_APPLICATION,
                headers={"BITS-Received-Content-Range": str(session.total)},
                reason=str(exc),
            ) from exc
        await asyncio.to_thread(state.store.save, session)
    url = session.reply.get("url")
    if url:
        return str(url)
    rel = request.app.router["ferry-reply"].url_for(session=session.id.strip("{}"))
    return str(_origin(request).join(rel))


def _origin(request: web.Request) -> URL:
    scheme = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip()
    host = request.headers.get("X-Forwarded-Host", request.host).split(",")[0].strip()
    return URL.build(scheme=scheme if scheme in ("http", "https") else "http", authority=host)


async def reply(request: web.Request) -> web.StreamResponse:
    """GET/HEAD of an upload-reply's reply (the session id in the URL is the capability)."""
    state = request.app[STATE_KEY]
    sid = normalize_session_id(request.match_info["session"])
    if sid is None:
        raise web.HTTPNotFound()
    session = state.store.load(sid)
    if session is None or session.closed or _expired(state, sid):
        raise web.HTTPNotFound()
    try:
        fd = os.open(state.store.reply_path(sid), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise web.HTTPNotFound() from None
    return await _serve_fd(request, fd)


# -- Close-Session and Cancel-Session -------------------------------------------------------


async def _close(state: State, path: UrlPath, sid: str) -> web.StreamResponse:
    async with _locked(state, sid) as session:
        _same_path(session, path)
        if session.closed:  # a repeated Close (its first answer lost): done already
            return _ack(200, {"BITS-Session-Id": sid})
        received = state.store.received(sid)
        total = session.total if session.total is not None else 0
        if received != total:
            await asyncio.to_thread(state.store.delete, sid)
            raise _invalid("Close-Session before the whole upload arrived: upload deleted")
        keep = state.backend is None or bool((session.reply or {}).get("copy"))
        # Logged before the commit too: a kill between the commit and "closed" leaves a trace
        # (the torture run counts the sessions that commit each destination from these lines).
        log.info("session %s closing: %s", sid, path)
        if keep:
            await asyncio.to_thread(_commit, state, path, sid)
        session.closed = True
        session.reply = None
        await asyncio.to_thread(_finish, state, session)
        log.info("session %s closed: %s %s", sid, path, "stored" if keep else "handed over")
        return _ack(200, {"BITS-Session-Id": sid})


def _finish(state: State, session: Session) -> None:
    """A closed session keeps only its meta (a tombstone, so a repeated Close succeeds),
    until it expires."""
    state.store.save(session)
    state.store.drop_data(session.id)


def _commit(state: State, path: UrlPath, sid: str) -> None:
    """Make the upload appear at its destination in one step, the session's data file staying
    where it is (so a Close repeated after a crash here finds it and does the same again):

    * no overwrite: a hard link at the destination name, refused if the name is taken — by
      anything but this very upload (a link made just before a crash);
    * overwrite: a hard link at a hidden temporary name beside the destination, renamed
      over it.

    Across file systems the link is replaced by a copy to a hidden O_EXCL|O_NOFOLLOW
    temporary file beside the destination (fsynced). The directory is fsynced after.

    The hidden name is the session's own (``_stage_name``): a crash between staging and
    publishing leaves it behind, and the Close repeated after the restart (or a Cancel, or
    the session's expiry: ``_unstage``) removes it rather than staging beside it again."""
    try:
        pfd = open_parent(state.root, path)
    except PathRefused as exc:
        raise _path_error(exc) from exc
    src = str(state.store.data_path(sid))
    try:
        tmp = _stage_beside(src, pfd, _stage_name(sid))
        try:
            if state.config.allow_overwrite:
                os.rename(tmp, path.name, src_dir_fd=pfd, dst_dir_fd=pfd)
            else:
                try:
                    os.link(tmp, path.name, src_dir_fd=pfd, dst_dir_fd=pfd, follow_symlinks=False)
                except FileExistsError:
                    if not _same_upload(src, pfd, path.name):
                        raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=pfd)
        os.fsync(pfd)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.EISDIR, errno.ENOTDIR, errno.EACCES, errno.EPERM):
            raise BitsError(403, "E_ACCESSDENIED", reason=f"cannot store: {exc}") from exc
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise BitsError(500, DISK_FULL, reason="disk full") from exc
        raise
    finally:
        os.close(pfd)


def _stage_name(sid: str) -> str:
    """The hidden name a session's upload is staged under beside its destination (clients
    cannot name ``.ferry-upload-*`` files: paths.py refuses them)."""
    return f"{_TEMP_PREFIX}{sid.strip('{}').lower()}.tmp"


def _unstage(state: State, session: Session) -> None:
    """Remove what a crash mid-commit may have left staged beside the session's destination
    (before the session is deleted: cancelled or expired)."""
    try:
        pfd = open_parent(state.root, UrlPath(tuple(session.path)))
    except (PathRefused, OSError, ValueError):
        return
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_stage_name(session.id), dir_fd=pfd)
    except OSError as exc:
        log.warning("session %s: cannot remove its staged upload: %s", session.id, exc)
    finally:
        os.close(pfd)


def _stage_beside(src: str, pfd: int, name: str) -> str:
    """The upload under the hidden temporary ``name`` in the destination's directory (a
    leftover of a crash replaced): a hard link to the session's data, or (across file
    systems) a copy."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=pfd)
    try:
        os.link(src, name, dst_dir_fd=pfd, follow_symlinks=False)
        return name
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
    return _copy_beside(src, pfd, name)


def _same_upload(src: str, pfd: int, name: str) -> bool:
    """Whether the regular file ``name`` is this upload already (the same file, or, across
    file systems, the same bytes): a Close repeated after a crash that followed the link."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
    except OSError:
        return False
    try:
        a, b = os.stat(src), os.fstat(fd)
        if not stat.S_ISREG(b.st_mode) or a.st_size != b.st_size:
            return False
        if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
            return True
        with open(src, "rb") as f, os.fdopen(os.dup(fd), "rb") as g:
            while True:
                x, y = f.read(CHUNK), g.read(CHUNK)
                if x != y:
                    return False
                if not x:
                    return True
    finally:
        os.close(fd)


def _copy_beside(src: str, pfd: int, name: str) -> str:
    out = os.open(
        name,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o644,
        dir_fd=pfd,
    )
    try:
        with open(src, "rb") as f:
            while block := f.read(CHUNK):
                os.write(out, block)
        os.fsync(out)
    except BaseException:
        os.close(out)
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=pfd)
        raise
    os.close(out)
    return name


async def _cancel(state: State, sid: str) -> web.StreamResponse:
    async with _locked(state, sid) as session:
        if not session.closed:
            await asyncio.to_thread(_unstage, state, session)
            await asyncio.to_thread(state.store.delete, sid)
            log.info("session %s cancelled", sid)
        return _ack(200, {"BITS-Session-Id": sid})


# -- GET / HEAD -----------------------------------------------------------------------------


async def _get(state: State, request: web.Request) -> web.StreamResponse:
    raw = request.raw_path.split("?", 1)[0]
    prefix = _mount_prefix(request)
    if prefix and raw.startswith(prefix):
        raw = raw[len(prefix) :]
    try:
        fd = open_file(state.root, parse_url_path(raw))
    except PathRefused as exc:
        raise {400: web.HTTPBadRequest, 403: web.HTTPForbidden}.get(exc.status, web.HTTPNotFound)(
            text=exc.reason
        ) from None
    return await _serve_fd(request, fd)


class _OpenFileResponse(web.FileResponse):
    """aiohttp's FileResponse of an already open file, served once.

    aiohttp prepares the response a handler returns even when the handler prepared it
    already, and FileResponse.prepare is not idempotent: it opens and stats its path again.
    Our path is ``/proc/self/fd/N``, closed by then — or, worse, N reused by another open
    file (a session's data, say), whose bytes would follow the answer. So a second prepare
    is a no-op here."""

    async def prepare(self, request: web.BaseRequest) -> Any:
        if self.prepared:
            return None
        return await super().prepare(request)


async def _serve_fd(request: web.Request, fd: int) -> web.StreamResponse:
    """Serve an open file with aiohttp's FileResponse (ranges, If-Range, ETag, Last-Modified)
    through /proc/self/fd: the file opened without following links is the one served."""
    try:
        st = os.fstat(fd)
        if_range = request.headers.get("If-Range", "").strip()
        if "Range" in request.headers and if_range.startswith(('"', "W/")):
            # aiohttp reads If-Range as a date only; an entity tag must match exactly (strong
            # comparison), else the whole file is sent (RFC 9110 §13.1.5)
            etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
            if if_range != etag:
                headers = request.headers.copy()
                del headers["Range"]
                del headers["If-Range"]
                request = request.clone(headers=headers)
        resp = _OpenFileResponse(f"/proc/self/fd/{fd}")
        await resp.prepare(request)
        return resp
    finally:
        os.close(fd)


# -- expiry ---------------------------------------------------------------------------------


def sweep(state: State) -> int:
    """Delete the sessions idle for longer than the timeout (skipping those in use)."""
    gone = 0
    state.store.sweep_leftovers()
    for sid in state.store.ids():
        if not _expired(state, sid):
            continue
        try:
            fd = state.store.try_lock(sid)
        except FileNotFoundError:
            continue
        if fd is None:
            continue
        try:
            if _expired(state, sid):
                session = state.store.load(sid)
                if session is not None and not session.closed:
                    _unstage(state, session)
                state.store.delete(sid)
                gone += 1
        finally:
            os.close(fd)
    return gone


async def _sweeper(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE_KEY]
    every = min(max(state.config.session_timeout / 4, 0.5), 300.0)

    async def loop() -> None:
        while True:
            await asyncio.sleep(every)
            try:
                n = await asyncio.to_thread(sweep, state)
                if n:
                    log.info("%d expired session(s) deleted", n)
            except Exception:  # keep sweeping whatever one round met
                log.exception("session sweep failed")

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _backend_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE_KEY]
    if state.backend is not None:
        await state.backend.start()
    yield
    if state.backend is not None:
        await state.backend.close()


async def _expect_continue(request: web.Request) -> None:
    """aiohttp's answer to ``Expect: 100-continue`` (417 for another expectation), except
    that a client gone before the interim answer is written is no error (aiohttp's own
    handler let the reset escape: a traceback in the log for every such client)."""
    expect = request.headers.get("Expect", "")
    if request.version != HttpVersion11:
        return
    if expect.lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect}")
    with contextlib.suppress(ConnectionError):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer proper has not started


def build(config: ServerConfig) -> web.Application:
    root = Path(config.root).resolve()
    if not root.is_dir():
        raise ValueError(f"root {config.root} is not a directory")
    store = SessionStore(Path(config.states))
    backend = (
        Backend(config.notify_url, config.notify_type) if config.notify_url is not None else None
    )
    # auto_decompress off: BITS bodies are identity (a Fragment in another encoding is
    # refused), and aiohttp would otherwise inflate a "Content-Encoding: gzip" body — a
    # decompression bomb, or a traceback on a body that is not gzip — before we refuse it
    app = web.Application(client_max_size=1 << 20, handler_args={"auto_decompress": False})
    app[CONFIG_KEY] = config
    app[STATE_KEY] = State(config=config, root=str(root), store=store, backend=backend)
    app.router.add_get("/.ferry-reply/{session}", reply, name="ferry-reply")
    app.router.add_route("*", r"/{tail:[\s\S]*}", handle, expect_handler=_expect_continue)
    app.cleanup_ctx.append(_sweeper)
    app.cleanup_ctx.append(_backend_ctx)
    return app


__all__ = ["CODES", "PROTOCOL_GUID", "BitsError", "ServerConfig", "build", "sweep"]
