"""The synchronous client: HTTP/1.1 over an AF_UNIX socket.

Not built on the asyncio client, so a plain script pays no event loop, no thread hop and no
aiohttp import per call: one kept-alive connection (framed by ``wire``) is reused for every
request, which is what makes thousands of calls per second possible; event streams are
framed by ``wire`` too, on a connection of their own. The request logic itself lives in
``_ops``, the event-stream parser in ``sse`` and the job and file views in ``views``; this
module only moves bytes.
"""

from __future__ import annotations

import contextlib
import os
import socket as _socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from ..errors import FerryError
from ..model.types import JobState, JobType, Priority, TokenFlags
from . import _ops, sse, views, wire
from ._ops import DaemonUnavailable, JSONObj
from .impersonation import Identity, connect_as
from .impersonation import current as current_impersonation
from .sockets import resolve_socket
from .sse import Event
from .views import FileInfo, JobView

T = TypeVar("T")

DEFAULT_TIMEOUT = 60.0
# How long wait() keeps trying to re-subscribe when ferryd goes away mid-wait (a restart).
RECONNECT_GRACE = 15.0


def _connect(path: str, timeout: float | None) -> _socket.socket:
    """A socket connected to ``path``, translating "nobody there" into the errors a user
    can act on. (A plain socket: the kept-alive calls need no ``http.client``, whose import
    — with ``ssl`` and ``email`` — would cost every ``ferry`` command tens of ms.)"""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError) as e:
        sock.close()
        raise DaemonUnavailable(path, e.strerror or "") from None
    except PermissionError:
        sock.close()
        raise FerryError("E_ACCESSDENIED", f"not allowed to connect to ferryd at {path}") from None
    except OSError as e:
        sock.close()
        raise DaemonUnavailable(path, e.strerror or str(e)) from None
    except BaseException:
        sock.close()
        raise
    return sock


def _open(path: str, timeout: float | None) -> wire.Connection:
    """A kept-alive connection for request/response calls."""
    return wire.Connection(_connect(path, timeout))


def one_shot_request(
    identity: Identity, path: str, timeout: float | None, call: _ops.Call[Any]
) -> tuple[int, bytes]:
    """One request over a connection made as ``identity`` (see ``ferry.impersonate``)."""
    imp = connect_as(identity, path, timeout)
    conn = wire.Connection(imp.sock)
    try:
        resp = conn.request(call.method, call.target, call.body, call.headers)
        return resp.status, resp.body
    finally:
        imp.close()


class Client:
    """A connection to ferryd (SPEC §7). Not meant to be shared between threads for
    throughput, but safe if it is: requests are serialized on one connection."""

    def __init__(self, socket: str | None = None, *, timeout: float | None = DEFAULT_TIMEOUT):
        self.socket = resolve_socket(socket)
        self.timeout = timeout
        self._conn: wire.Connection | None = None
        self._lock = threading.Lock()

    # ---- transport ----------------------------------------------------------------

    def _call(self, call: _ops.Call[T]) -> T:
        identity = current_impersonation()
        if identity is not None:
            status, raw = one_shot_request(identity, self.socket, self.timeout, call)
        else:
            status, raw = self._send(call.method, call.target, call.body, call.headers)
        return call.finish(status, raw)

    def _send(
        self, method: str, target: str, body: bytes | None, headers: Mapping[str, str]
    ) -> tuple[int, bytes]:
        with self._lock:
            for attempt in (0, 1):
                conn = self._conn
                fresh = conn is None
                if conn is None:
                    conn = self._conn = _open(self.socket, self.timeout)
                try:
                    resp = conn.request(method, target, body, headers)
                except ConnectionError as e:  # wire.ConnectionLost too
                    self._drop()
                    # A kept-alive connection the daemon closed while idle (or a restarted
                    # daemon) fails on first use: reconnect once. A fresh one failing means
                    # ferryd died under us; do not repeat the request blindly.
                    if fresh or attempt:
                        raise DaemonUnavailable(self.socket, f"connection lost: {e}") from None
                    continue
                except TimeoutError:
                    self._drop()
                    raise FerryError(
                        "E_FAIL", f"ferryd at {self.socket} did not answer within {self.timeout} s"
                    ) from None
                except BaseException:
                    # Interrupted mid-request (Ctrl-C): the connection is out of step with
                    # its response; drop it so the next call (say, a cancel) starts clean.
                    self._drop()
                    raise
                if resp.will_close:
                    self._drop()
                return resp.status, resp.body
        raise AssertionError("unreachable")  # pragma: no cover

    def connect(self) -> None:
        """Open the kept-alive connection now, without a request: DaemonUnavailable (or
        E_ACCESSDENIED) when nobody may be reached at the socket. The next call uses it.
        (The ``ferry`` command's autostart check: a ``status`` call would cost ferryd a
        request for nothing.)"""
        with self._lock:
            if self._conn is None:
                self._conn = _open(self.socket, self.timeout)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ferry.Client {self.socket}>"

    # ---- API ------------------------------------------------------------------------

    def status(self) -> JSONObj:
        """GET /v1/status: daemon version, mode, and the caller's token as ferryd sees it."""
        return self._call(_ops.status())

    def metrics(self) -> str:
        """GET /v1/metrics: ferryd's Prometheus metrics, in the text exposition format."""
        return self._call(_ops.metrics())

    def create_job(
        self,
        display_name: str,
        type: JobType | str = JobType.DOWNLOAD,
        priority: Priority | str = Priority.NORMAL,
        description: str = "",
    ) -> Job:
        return Job(
            self,
            self._call(
                _ops.create_job(display_name, type, priority, description, _ops.default_ccache())
            ),
        )

    def get_job(self, job_id_or_name: str) -> Job:
        return Job(self, self._call(_ops.get_job(job_id_or_name)))

    def jobs(self, all_users: bool = False) -> list[Job]:
        return [Job(self, d) for d in self._call(_ops.list_jobs(all_users))]

    def open(self, job_id_or_name: str, interface: str = "job", ttl: int | None = None) -> str:
        """Open a job for an interface (``job`` or ``token-options``): ferryd checks access
        now, as this connection's identity, and returns an unguessable handle. Without a
        TTL the handle lives as long as this client's connection."""
        return str(self._call(_ops.open_handle(job_id_or_name, interface, ttl))["handle"])

    def token_options(self, handle: str) -> TokenOptions:
        """IBitsTokenOptions through a handle someone opened (possibly another process)."""
        return TokenOptions(self, handle=handle)

    def release(self, handle: str) -> None:
        self._call(_ops.release_handle(handle))

    def logoff(self, user: str | int | None = None, session: int | None = None) -> JSONObj:
        """Declare a user or a login session logged off now (administrators; what the PAM
        close-session hook calls)."""
        return self._call(_ops.logoff(user, session))

    def network(self) -> JSONObj:
        """What ferryd sees of the network: cost, routes, limits in force, measured use."""
        return self._call(_ops.get_network())

    def set_network_cost(self, cost: str) -> JSONObj:
        """``unrestricted``, ``metered``, ``roaming`` or ``auto`` (administrators)."""
        return self._call(_ops.set_network_cost(cost))

    def reload(self) -> JSONObj:
        """Re-read ferryd's config file and apply its bandwidth and network sections, as
        SIGHUP does (administrators; the daemon's own user in user mode)."""
        return self._call(_ops.reload())

    def shutdown(self) -> JSONObj:
        """Stop the daemon this client talks to, as SIGTERM would (``{"stopping": true}``):
        its own user may in user mode, administrators may; anyone else E_ACCESSDENIED."""
        return self._call(_ops.shutdown())

    def fleet(self) -> JSONObj:
        """Fleet mode (docs/fleet.md): ``{"worker", "lease_seconds", "workers": [...],
        "leases": [...]}`` — every worker sharing the queue with its last heartbeat, and every
        job lease. Administrators only; E_NOTIMPL from a single-machine ferryd."""
        return self._call(_ops.fleet())

    def events(
        self, job_id: str | None = None, all_users: bool = False, all_events: bool = False
    ) -> EventStream:
        """Subscribe now (so nothing after this call is missed); iterate to receive.
        Each matching job is first reported as a ``job-snapshot`` event; then the events
        each job's ``notify_flags`` ask for (the callback interface), or with ``all_events``
        every change whatever the flags."""
        return EventStream(
            self.socket, _ops.events_target(job_id, all_users, all_events), self.timeout
        )


class EventStream:
    """An open ``GET /v1/events`` stream on its own connection (the main connection stays
    free for calls made while following events). Iterate it; close it when done."""

    def __init__(self, path: str, target: str, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        # The timeout bounds connecting and the response head; reads of the stream itself
        # wait as long as ``next`` is told to (events may be hours apart). Framed by
        # ``wire`` like every other call: http.client (with ssl and email) would cost a
        # `ferry transfer` or `ferry wait` ~40 ms of imports before its first event.
        self._sock: _socket.socket | None = _connect(path, timeout)
        self._conn = wire.Connection(self._sock)
        self._parser = sse.SSEParser()
        self._pending: list[Event] = []
        try:
            answer = self._conn.open_stream(target, _ops.SSE_HEADERS)
        except TimeoutError:
            self.close()
            raise FerryError(
                "E_FAIL", f"ferryd at {path} did not answer within {timeout} s"
            ) from None
        except ConnectionError as e:  # wire.ConnectionLost too
            self.close()
            raise DaemonUnavailable(path, f"connection lost: {e}") from None
        except BaseException:
            self.close()
            raise
        if answer is not None:
            self.close()
            _ops.Call("GET", target, None, lambda d: d).finish(answer.status, answer.body)
            raise DaemonUnavailable(path, f"unexpected answer {answer.status}")

    def next(self, timeout: float | None = None) -> Event | None:
        """The next event, or None when the stream ended. With a timeout, raises
        TimeoutError when nothing arrives in time; the stream is closed afterwards, which
        suits ``wait``. The timeout bounds the whole call: keep-alive comments do not
        extend it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._pending:
            sock = self._sock
            if sock is None:
                return None
            remaining = None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.close()
                    raise TimeoutError("no event within the timeout")
            try:
                sock.settimeout(remaining)
                data = self._conn.read_some()
            except TimeoutError:
                self.close()
                raise
            except (OSError, ValueError):
                data = b""  # the daemon went away mid-stream: that is the end of it
            if not data:
                self.close()
                return None
            for msg in self._parser.feed(data):
                ev = Event.from_message(msg)
                if ev is not None:
                    self._pending.append(ev)
        return self._pending.pop(0)

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        ev = self.next()
        if ev is None:
            raise StopIteration
        return ev

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Job(JobView):
    """A job handle: methods are the BITS IBackgroundCopyJob calls; ``data`` is refreshed
    from every answer, so ``job.state`` after ``job.resume()`` is what ferryd just said."""

    __slots__ = ("client",)

    def __init__(self, client: Client, data: JSONObj) -> None:
        super().__init__(data)
        self.client = client

    def _act(self, name: str) -> str:
        code, data = self.client._call(_ops.action(self.id, name))
        self._update(data)
        return code

    def add_file(
        self, remote: str, local: str, sha256: str | None = None, ranges: Any = None
    ) -> None:
        """AddFile. With ``sha256`` (64 hex digits) ferryd checks the whole file before it
        counts as transferred; a mismatch fails the job with BG_E_VALIDATION_FAILED.
        With ``ranges`` (AddFileWithRanges: ``"0:1024,4096:eof"`` or ``[(0, 1024), (4096,
        None)]``) only those byte ranges are fetched, each into the local file at its own
        offset (the rest of the file is holes); not with ``sha256``."""
        self.add_files([(remote, local, sha256, ranges)])

    def add_files(self, files: Iterable[_ops.FileSpec]) -> None:
        """All or none (AddFileSet): ``(remote, local)`` or ``(remote, local, sha256)``
        tuples. Local names are made absolute against this process's working directory."""
        self._update(self.client._call(_ops.add_files(self.id, files)))

    def set_remote_name(self, index: int, url: str) -> None:
        """SetRemoteName: file ``index`` (0-based, not yet transferred) of a download job
        comes from ``url`` from now on. A transfer in progress stops and goes back to the
        queue; the file keeps its partial data if the new server has the same size and
        validator (ETag or Last-Modified), and starts over otherwise."""
        self._update(self.client._call(_ops.set_remote_name(self.id, index, url)))

    def set_reply_file(self, path: str | os.PathLike[str]) -> None:
        """SetReplyFileName (upload-reply jobs): where ``complete`` puts the reply; by
        default the uploaded file's local name plus ``.reply``. Not once the reply is being
        fetched."""
        self._update(self.client._call(_ops.set_reply_file(self.id, path)))

    def reply_data(self) -> bytes:
        """GetReplyData: the server application's reply to an upload-reply job, once it is
        TRANSFERRED (BG_E_INVALID_STATE before; after ``complete`` the reply is in
        ``reply_file``). At most 1 MiB: a longer reply raises BG_E_TOO_LARGE."""
        return self.client._call(_ops.reply_data(self.id))

    def replace_remote_prefix(self, old: str, new: str) -> str:
        """ReplaceRemotePrefix: every remote name starting with ``old`` (case-sensitive, all
        files; transferred ones keep their data) starts with ``new`` instead, all or none.
        Returns ``S_OK``, or ``S_FALSE`` when no name matched. As ``set_remote_name`` for
        partial data and a transfer in progress."""
        code, data = self.client._call(_ops.replace_remote_prefix(self.id, old, new))
        self._update(data)
        return code

    def files(self) -> list[FileInfo]:
        return [FileInfo(d) for d in self.client._call(_ops.list_files(self.id))]

    def info(self) -> Job:
        """Refresh ``data`` from ferryd; returns self for chaining."""
        self._update(self.client._call(_ops.get_job(self.id)))
        return self

    def resume(self) -> None:
        self._act("resume")

    def suspend(self) -> None:
        self._act("suspend")

    def cancel(self) -> None:
        self._act("cancel")

    def complete(self) -> str:
        """Returns ``S_OK``, or ``BG_S_PARTIAL_COMPLETE`` when some files were not
        transferred (their temporary files are gone, the others are in place)."""
        return self._act("complete")

    def take_ownership(self) -> None:
        self._act("take-ownership")

    def set(self, **props: Any) -> None:
        self._update(self.client._call(_ops.set_job(self.id, props)))

    set.__doc__ = _ops.set_doc("SetDisplayName, SetPriority, ...; one PATCH, all or none")

    def set_credentials(
        self, target: str, scheme: str, user: str | None = None, password: str | None = None
    ) -> None:
        """SetCredentials (SPEC §8.2): ``target`` SERVER|PROXY, ``scheme`` BASIC|DIGEST|NTLM|
        NEGOTIATE; no user and no password = implicit (NTLM/NEGOTIATE answered with the
        acting identity's Kerberos ticket; this process's credential cache is named)."""
        call = _ops.set_credentials(
            self.id, target, scheme, user, password, _ops.default_ccache()
        )
        self._update(self.client._call(call))

    def remove_credentials(self, target: str, scheme: str) -> bool:
        """RemoveCredentials; False (S_FALSE) when the job had no such entry."""
        doc = self.client._call(_ops.remove_credentials(self.id, target, scheme))
        self._update(doc["job"])
        return bool(doc["result"]["code"] == "S_OK")

    def credentials(self) -> list[dict[str, Any]]:
        """The job's credentials: target, scheme, user, implicit (never a password)."""
        return self.client._call(_ops.list_credentials(self.id))
    def set_http_options(self, **opts: Any) -> None:
        """IBackgroundCopyJobHttpOptions (SPEC §8.3), one request, all or none:
        ``custom_headers`` ("Name: value" lines; None clears), ``custom_headers_write_only``
        (True: never readable again), ``client_certificate`` ({"cert", "key"} paths; None
        clears), ``security_flags`` (names; [] clears), ``http_method`` (not GET: FOREGROUND,
        no resume)."""
        self._update(self.client._call(_ops.set_http_options(self.id, opts)))

    def set_custom_headers(self, headers: Sequence[str] | None) -> None:
        """SetCustomHeaders ("Name: value" lines; None clears)."""
        self.set_http_options(custom_headers=None if headers is None else list(headers))

    def make_custom_headers_write_only(self) -> None:
        """MakeCustomHeadersWriteOnly: the headers are sent but never returned again."""
        self.set_http_options(custom_headers_write_only=True)

    def set_proxy_settings(
        self,
        usage: str,
        proxy_list: str | Sequence[str] | None = None,
        bypass_list: str | Sequence[str] | None = None,
    ) -> None:
        """SetProxySettings (SPEC §8.1): ``usage`` is PRECONFIG, NO_PROXY, OVERRIDE or
        AUTODETECT; with OVERRIDE, ``proxy_list`` (proxies tried in order, a list or one
        string separated by blanks) and ``bypass_list`` (host, .suffix, IP, CIDR, <local>).
        BG_E_INVALID_PROXY_INFO for a bad value; nothing changes then."""
        self.set(proxy={"usage": usage, "list": proxy_list, "bypass": bypass_list})

    def token_options(self, ttl: int | None = None) -> TokenOptions:
        """Open a token-options handle (SPEC §4.3): the access check happens now, with this
        client's identity; calls through it are not checked again."""
        return TokenOptions(self.client, handle=self.client.open(self.id, "token-options", ttl))

    def follow(self, timeout: float | None = None) -> Iterator[Event]:
        """Events about this job as they happen, starting with a snapshot; a daemon restart
        is ridden out by re-subscribing (the new snapshot closes any gap). Ends when the
        caller stops iterating; raises FerryError(BG_E_WATCHDOG_TIMEOUT) after ``timeout``
        seconds. ``data`` is updated before each event is yielded."""
        deadline = None if timeout is None else time.monotonic() + timeout
        lost_since: float | None = None
        while True:
            try:
                # An observer, not a callback: wait() must work whatever the notify_flags.
                stream = self.client.events(self.id, all_events=True)
            except DaemonUnavailable:
                now = time.monotonic()
                lost_since = lost_since if lost_since is not None else now
                if now - lost_since > RECONNECT_GRACE:
                    raise
                if deadline is not None and now >= deadline:
                    raise views.timeout_error(self.id, timeout or 0.0) from None
                time.sleep(0.1)
                continue
            lost_since = None
            with stream:
                while True:
                    remaining = None
                    if deadline is not None:
                        remaining = max(deadline - time.monotonic(), 0.01)
                    try:
                        ev = stream.next(remaining)
                    except TimeoutError:
                        raise views.timeout_error(self.id, timeout or 0.0) from None
                    if ev is None:
                        break  # ferryd went away: re-subscribe
                    if ev.job is not None:
                        self._update(ev.job)
                    yield ev
                    if deadline is not None and time.monotonic() >= deadline:
                        raise views.timeout_error(self.id, timeout or 0.0)

    def wait(self, timeout: float | None = None) -> JobState:
        """Block until the job is TRANSFERRED, ERROR, ACKNOWLEDGED or CANCELLED, following
        the event stream (no polling), riding out a daemon restart. Raises
        FerryError(BG_E_WATCHDOG_TIMEOUT) when ``timeout`` seconds pass first."""
        for ev in self.follow(timeout):
            done = self._observe(ev)
            if done is not None:
                return done
        raise AssertionError("unreachable")  # pragma: no cover


class TokenOptions:
    """IBitsTokenOptions. Calls made inside ``with ferry.impersonate(...)`` connect as that
    identity, which is how the helper token is chosen (SetHelperToken takes the identity of
    the connection that carries it)."""

    def __init__(self, client: Client, *, handle: str | None = None, job: str | None = None):
        self.client = client
        self.handle = handle
        self.job = job

    def _call(self, call: _ops.Call[JSONObj]) -> JSONObj:
        return self.client._call(call)

    def set_helper_token(self) -> None:
        self._call(_ops.set_helper_token(self.job, self.handle, _ops.default_ccache()))

    def set_helper_token_flags(self, flags: int) -> None:
        self._call(_ops.set_helper_token_flags(int(flags), self.job, self.handle))

    def helper_token_flags(self) -> TokenFlags:
        return TokenFlags(
            int(self._call(_ops.get_helper_token(self.job, self.handle))["flags_value"])
        )

    def helper_token_sid(self) -> str | None:
        sid = self._call(_ops.get_helper_token(self.job, self.handle)).get("sid")
        return None if sid is None else str(sid)

    def clear_helper_token(self) -> None:
        self._call(_ops.clear_helper_token(self.job, self.handle))

    def release(self) -> None:
        if self.handle is not None:
            self.client.release(self.handle)
            self.handle = None

    def __enter__(self) -> TokenOptions:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(FerryError):
            self.release()
