"""The asyncio client: aiohttp over the Unix socket, the same surface as the sync client
with ``async`` methods.

aiohttp is imported on first use, not at ``import ferry``: the CLI and sync scripts never
pay for it. The request logic (``_ops``), the event-stream parser (``sse``) and the job and
file views (``views``) are shared with the sync client.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import FerryError
from ..model.types import JobState, JobType, Priority, TokenFlags
from . import _ops, sse, views
from ._ops import DaemonUnavailable, JSONObj
from .impersonation import current as current_impersonation
from .sockets import resolve_socket
from .sse import Event
from .sync import DEFAULT_TIMEOUT, RECONNECT_GRACE, one_shot_request
from .views import FileInfo, JobView

if TYPE_CHECKING:
    import aiohttp

T = TypeVar("T")


def _aiohttp() -> Any:
    import aiohttp

    return aiohttp


class AsyncClient:
    """A connection pool to ferryd for asyncio programs. Create it anywhere; the aiohttp
    session is opened lazily inside the running loop, as aiohttp requires."""

    def __init__(self, socket: str | None = None, *, timeout: float | None = DEFAULT_TIMEOUT):
        self.socket = resolve_socket(socket)
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            ah = _aiohttp()
            self._session = ah.ClientSession(
                connector=ah.UnixConnector(path=self.socket),
                timeout=ah.ClientTimeout(total=self.timeout),
            )
        return self._session

    async def _call(self, call: _ops.Call[T]) -> T:
        identity = current_impersonation()
        if identity is not None:
            # Connecting as another identity forks; keep that off the event loop.
            import asyncio

            status, raw = await asyncio.to_thread(
                one_shot_request, identity, self.socket, self.timeout, call
            )
            return call.finish(status, raw)
        ah = _aiohttp()
        session = self._get_session()
        url = "http://localhost" + call.target
        for attempt in (0, 1):
            try:
                async with session.request(
                    call.method, url, data=call.body, headers=dict(call.headers)
                ) as resp:
                    raw = await resp.read()
                    status = resp.status
            except ah.ClientConnectorError as e:
                raise DaemonUnavailable(self.socket, str(e.os_error.strerror or e)) from None
            except (ah.ServerDisconnectedError, ah.ClientOSError, ah.ClientPayloadError) as e:
                # A pooled connection the daemon closed (idle, or a restart): retry once on a
                # new one, as the sync client does.
                if attempt:
                    raise DaemonUnavailable(self.socket, f"connection lost: {e}") from None
                continue
            except TimeoutError:
                raise FerryError(
                    "E_FAIL", f"ferryd at {self.socket} did not answer within {self.timeout} s"
                ) from None
            return call.finish(status, raw)
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<ferry.AsyncClient {self.socket}>"

    # ---- API ------------------------------------------------------------------------

    async def status(self) -> JSONObj:
        return await self._call(_ops.status())

    async def metrics(self) -> str:
        """See ``ferry.Client.metrics``."""
        return await self._call(_ops.metrics())

    async def open(
        self, job_id_or_name: str, interface: str = "job", ttl: int | None = None
    ) -> str:
        """See ``Client.open``. aiohttp pools connections and closes idle ones, so a handle
        opened without a TTL may die with a pooled connection: prefer a TTL here."""
        return str((await self._call(_ops.open_handle(job_id_or_name, interface, ttl)))["handle"])

    def token_options(self, handle: str) -> AsyncTokenOptions:
        return AsyncTokenOptions(self, handle=handle)

    async def release(self, handle: str) -> None:
        await self._call(_ops.release_handle(handle))

    async def logoff(self, user: str | int | None = None, session: int | None = None) -> JSONObj:
        return await self._call(_ops.logoff(user, session))

    async def network(self) -> JSONObj:
        """See ``Client.network``."""
        return await self._call(_ops.get_network())

    async def set_network_cost(self, cost: str) -> JSONObj:
        """See ``Client.set_network_cost``."""
        return await self._call(_ops.set_network_cost(cost))

    async def reload(self) -> JSONObj:
        """See ``Client.reload``."""
        return await self._call(_ops.reload())

    async def shutdown(self) -> JSONObj:
        """Stop the daemon, as SIGTERM would (see ``Client.shutdown``)."""
        return await self._call(_ops.shutdown())

    async def fleet(self) -> JSONObj:
        """Fleet mode: the workers, their heartbeats and leases (see ``Client.fleet``)."""
        return await self._call(_ops.fleet())

    async def create_job(
        self,
        display_name: str,
        type: JobType | str = JobType.DOWNLOAD,
        priority: Priority | str = Priority.NORMAL,
        description: str = "",
    ) -> AsyncJob:
        data = await self._call(
            _ops.create_job(display_name, type, priority, description, _ops.default_ccache())
        )
        return AsyncJob(self, data)

    async def get_job(self, job_id_or_name: str) -> AsyncJob:
        return AsyncJob(self, await self._call(_ops.get_job(job_id_or_name)))

    async def jobs(self, all_users: bool = False) -> list[AsyncJob]:
        return [AsyncJob(self, d) for d in await self._call(_ops.list_jobs(all_users))]

    def events(
        self, job_id: str | None = None, all_users: bool = False, all_events: bool = False
    ) -> AsyncEventStream:
        """``async for event in client.events(...)``; the subscription is made on the first
        iteration (or on ``await stream.open()`` to subscribe before doing something).
        ``all_events`` as for ``Client.events``."""
        return AsyncEventStream(self, _ops.events_target(job_id, all_users, all_events))


class AsyncEventStream:
    """An open ``GET /v1/events`` stream; iterate with ``async for``, then ``aclose()`` (or
    use ``async with``)."""

    def __init__(self, client: AsyncClient, target: str) -> None:
        self._client = client
        self._target = target
        self._resp: aiohttp.ClientResponse | None = None
        self._parser = sse.SSEParser()
        self._pending: list[Event] = []
        self._ended = False

    async def open(self) -> AsyncEventStream:
        if self._resp is not None or self._ended:
            return self
        ah = _aiohttp()
        client = self._client
        session = client._get_session()
        try:
            resp = await session.get(
                "http://localhost" + self._target,
                headers=dict(_ops.SSE_HEADERS),
                timeout=ah.ClientTimeout(total=None, sock_read=None),
            )
        except ah.ClientConnectorError as e:
            raise DaemonUnavailable(client.socket, str(e.os_error.strerror or e)) from None
        except ah.ClientError as e:
            raise DaemonUnavailable(client.socket, f"connection lost: {e}") from None
        if resp.status >= 400:
            raw = await resp.read()
            resp.release()
            _ops.Call("GET", self._target, None, lambda d: d).finish(resp.status, raw)
        self._resp = resp
        return self

    def __aiter__(self) -> AsyncEventStream:
        return self

    async def __anext__(self) -> Event:
        await self.open()
        while not self._pending:
            resp = self._resp
            if resp is None:
                raise StopAsyncIteration
            try:
                chunk = await resp.content.readany()
            except (_aiohttp().ClientError, OSError):
                chunk = b""  # the daemon went away mid-stream: that is the end of it
            if not chunk:
                await self.aclose()
                raise StopAsyncIteration
            self._pending.extend(sse.events_from(self._parser.feed(chunk)))
        return self._pending.pop(0)

    async def aclose(self) -> None:
        self._ended = True
        resp, self._resp = self._resp, None
        if resp is not None:
            # close(), not release(): the stream never ends on its own, so the connection
            # cannot go back to the pool.
            resp.close()

    async def __aenter__(self) -> AsyncEventStream:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class AsyncJob(JobView):
    """The asyncio twin of ``ferry.Job``."""

    __slots__ = ("client",)

    def __init__(self, client: AsyncClient, data: JSONObj) -> None:
        super().__init__(data)
        self.client = client

    async def token_options(self, ttl: int | None = 3600) -> AsyncTokenOptions:
        """Open a token-options handle; the default TTL keeps it alive across aiohttp's
        connection pooling (see ``AsyncClient.open``)."""
        handle = await self.client.open(self.id, "token-options", ttl)
        return AsyncTokenOptions(self.client, handle=handle)

    async def _act(self, name: str) -> str:
        code, data = await self.client._call(_ops.action(self.id, name))
        self._update(data)
        return code

    async def add_file(
        self, remote: str, local: str, sha256: str | None = None, ranges: Any = None
    ) -> None:
        """See ``ferry.Job.add_file``."""
        await self.add_files([(remote, local, sha256, ranges)])

    async def add_files(self, files: Iterable[_ops.FileSpec]) -> None:
        """See ``ferry.Job.add_files``."""
        self._update(await self.client._call(_ops.add_files(self.id, files)))

    async def set_remote_name(self, index: int, url: str) -> None:
        """See ``ferry.Job.set_remote_name``."""
        self._update(await self.client._call(_ops.set_remote_name(self.id, index, url)))

    async def set_reply_file(self, path: str | os.PathLike[str]) -> None:
        """See ``ferry.Job.set_reply_file``."""
        self._update(await self.client._call(_ops.set_reply_file(self.id, path)))

    async def reply_data(self) -> bytes:
        """See ``ferry.Job.reply_data``."""
        return await self.client._call(_ops.reply_data(self.id))

    async def replace_remote_prefix(self, old: str, new: str) -> str:
        """See ``ferry.Job.replace_remote_prefix``."""
        code, data = await self.client._call(_ops.replace_remote_prefix(self.id, old, new))
        self._update(data)
        return code

    async def files(self) -> list[FileInfo]:
        return [FileInfo(d) for d in await self.client._call(_ops.list_files(self.id))]

    async def info(self) -> AsyncJob:
        self._update(await self.client._call(_ops.get_job(self.id)))
        return self

    async def resume(self) -> None:
        await self._act("resume")

    async def suspend(self) -> None:
        await self._act("suspend")

    async def cancel(self) -> None:
        await self._act("cancel")

    async def complete(self) -> str:
        return await self._act("complete")

    async def take_ownership(self) -> None:
        await self._act("take-ownership")

    async def set(self, **props: Any) -> None:
        self._update(await self.client._call(_ops.set_job(self.id, props)))

    set.__doc__ = _ops.set_doc("as ``ferry.Job.set``")

    async def set_credentials(
        self, target: str, scheme: str, user: str | None = None, password: str | None = None
    ) -> None:
        """See ``ferry.Job.set_credentials``."""
        call = _ops.set_credentials(
            self.id, target, scheme, user, password, _ops.default_ccache()
        )
        self._update(await self.client._call(call))

    async def remove_credentials(self, target: str, scheme: str) -> bool:
        """See ``ferry.Job.remove_credentials``."""
        doc = await self.client._call(_ops.remove_credentials(self.id, target, scheme))
        self._update(doc["job"])
        return bool(doc["result"]["code"] == "S_OK")

    async def credentials(self) -> list[dict[str, Any]]:
        """See ``ferry.Job.credentials``."""
        return await self.client._call(_ops.list_credentials(self.id))
    async def set_http_options(self, **opts: Any) -> None:
        """IBackgroundCopyJobHttpOptions (SPEC §8.3), one request, all or none:
        ``custom_headers`` ("Name: value" lines; None clears), ``custom_headers_write_only``
        (True: never readable again), ``client_certificate`` ({"cert", "key"} paths; None
        clears), ``security_flags`` (names; [] clears), ``http_method`` (not GET: FOREGROUND,
        no resume)."""
        self._update(await self.client._call(_ops.set_http_options(self.id, opts)))

    async def set_custom_headers(self, headers: Sequence[str] | None) -> None:
        """SetCustomHeaders ("Name: value" lines; None clears)."""
        await self.set_http_options(custom_headers=None if headers is None else list(headers))

    async def make_custom_headers_write_only(self) -> None:
        """MakeCustomHeadersWriteOnly: the headers are sent but never returned again."""
        await self.set_http_options(custom_headers_write_only=True)

    async def set_proxy_settings(
        self,
        usage: str,
        proxy_list: str | Sequence[str] | None = None,
        bypass_list: str | Sequence[str] | None = None,
    ) -> None:
        """SetProxySettings (SPEC §8.1): ``usage`` is PRECONFIG, NO_PROXY, OVERRIDE or
        AUTODETECT; with OVERRIDE, ``proxy_list`` (proxies tried in order, a list or one
        string separated by blanks) and ``bypass_list`` (host, .suffix, IP, CIDR, <local>).
        BG_E_INVALID_PROXY_INFO for a bad value; nothing changes then."""
        await self.set(proxy={"usage": usage, "list": proxy_list, "bypass": bypass_list})

    async def follow(self) -> AsyncGenerator[Event, None]:
        """See ``ferry.Job.follow``; bound it with ``asyncio.timeout`` if needed."""
        import asyncio

        loop = asyncio.get_running_loop()
        lost_since: float | None = None
        while True:
            stream = self.client.events(self.id, all_events=True)
            try:
                await stream.open()
            except DaemonUnavailable:
                now = loop.time()
                lost_since = lost_since if lost_since is not None else now
                if now - lost_since > RECONNECT_GRACE:
                    raise
                await asyncio.sleep(0.1)
                continue
            lost_since = None
            async with stream:
                async for ev in stream:
                    if ev.job is not None:
                        self._update(ev.job)
                    yield ev

    async def wait(self, timeout: float | None = None) -> JobState:
        """See ``ferry.Job.wait``: event-driven, rides out a daemon restart, raises
        FerryError(BG_E_WATCHDOG_TIMEOUT) on timeout."""
        import asyncio

        try:
            async with asyncio.timeout(timeout):
                events = self.follow()
                try:
                    async for ev in events:
                        done = self._observe(ev)
                        if done is not None:
                            return done
                finally:
                    await events.aclose()
        except TimeoutError:
            raise views.timeout_error(self.id, timeout or 0.0) from None
        raise AssertionError("unreachable")  # pragma: no cover


class AsyncTokenOptions:
    """The asyncio twin of ``ferry.TokenOptions``."""

    def __init__(
        self, client: AsyncClient, *, handle: str | None = None, job: str | None = None
    ) -> None:
        self.client = client
        self.handle = handle
        self.job = job

    async def set_helper_token(self) -> None:
        await self.client._call(
            _ops.set_helper_token(self.job, self.handle, _ops.default_ccache())
        )

    async def set_helper_token_flags(self, flags: int) -> None:
        await self.client._call(_ops.set_helper_token_flags(int(flags), self.job, self.handle))

    async def helper_token_flags(self) -> TokenFlags:
        doc = await self.client._call(_ops.get_helper_token(self.job, self.handle))
        return TokenFlags(int(doc["flags_value"]))

    async def helper_token_sid(self) -> str | None:
        sid = (await self.client._call(_ops.get_helper_token(self.job, self.handle))).get("sid")
        return None if sid is None else str(sid)

    async def clear_helper_token(self) -> None:
        await self.client._call(_ops.clear_helper_token(self.job, self.handle))

    async def release(self) -> None:
        if self.handle is not None:
            await self.client.release(self.handle)
            self.handle = None
