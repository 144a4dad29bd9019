"""The HTTP/JSON API over the Unix socket (SPEC §5).

The routes, their request bodies and the OpenAPI document are the contract's
(``ferry.protocol``); this module binds a handler to each route by its operation name and
refuses to start when a route has no handler or a handler no route. Every request carries
the caller's token, captured from the connection by SO_PEERCRED; every failure is the error
body of SPEC §5.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from .._version import __version__
from ..errors import FerryError, hresult_of
from ..model.ranges import ranges_from_wire
from ..model.token import Token
from ..model.types import JobType, Priority
from ..protocol import ACTIONS, FILE_FIELD_NAMES, REQUIRED_FILE_FIELDS, ROUTES, Route
from ..protocol.contract import API_PREFIX
from ..protocol.openapi import openapi_document
from ..protocol.views import file_view, job_view
from ..security.handles import Interface
from ..security.peer import token_from_socket, user_name
from ..service import events as ev
from ..service.credentials import Credentials
from ..service.events import EventBus
from ..service.handles import Handles
from ..service.httpoptions import HttpOptions
from ..service.logon import Logon
from ..service.manager import QueueManager
from ..service.metrics import Metrics
from ..service.network import NetworkState

log = logging.getLogger("ferry.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY = 16 * 1024 * 1024
SSE_KEEPALIVE = 15.0

# ---- the application ------------------------------------------------------------------


def _error_response(exc: FerryError, status: int | None = None) -> web.Response:
    return web.json_response(exc.to_json(), status=status or exc.api_status)


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false").lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no", ""):
        return False
    raise FerryError("E_INVALIDARG", f"query parameter {name} must be true or false")


# Operations that share a handler; any other operation's handler is ``Api.h_<operation>``.
SHARED_HANDLERS: dict[str, str] = {
    **{a.operation: "action" for a in ACTIONS},
    **{a.handle_operation: "handle_action" for a in ACTIONS if a.via_handle},
    **{
        f"{who}_{op}": op.replace("_token_flags", "_flags")
        for who in ("job", "handle")
        for op in ("get_helper_token", "set_helper_token", "clear_helper_token",
                   "set_helper_token_flags")
    },
}  # fmt: skip


def handler_names() -> dict[str, str]:
    """The ``Api`` method that handles each contract route. A route without a handler, or a
    handler without a route, is a programming error refused at start-up (not a 404)."""
    bound = {r.name: "h_" + SHARED_HANDLERS.get(r.name, r.name) for r in ROUTES}
    methods = {n for n in dir(Api) if n.startswith("h_")}
    missing = sorted(set(bound.values()) - methods)
    unbound = sorted(methods - set(bound.values()))
    stale = sorted(set(SHARED_HANDLERS) - set(bound))
    if missing or unbound or stale:
        raise RuntimeError(
            f"the API does not match its contract: no handler {missing}, "
            f"no route for {unbound}, unknown operations {stale}"
        )
    return bound


class Api:
    def __init__(
        self,
        manager: QueueManager,
        handles: Handles,
        logon: Logon,
        bus: EventBus,
        admin_groups: frozenset[int],
        mode: str,
        only_uid: int | None,
        request_stop: Callable[[], None],
        credentials: Credentials | None = None,
        fleet: FleetStatus | None = None,
        *,
        network: NetworkState | None = None,
        reload: Callable[[], dict[str, Any]] | None = None,
        http_options: HttpOptions | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.credentials = credentials
        self.fleet = fleet  # fleet mode (service/fleet.py), else None
        self.network = network
        self.reload = reload
        self.http_options = http_options
        self.metrics = metrics
        self.manager = manager
        self.handles = handles
        self.logon = logon
        self.bus = bus
        self.admin_groups = admin_groups
        self.mode = mode
        self.only_uid = only_uid
        self.request_stop = request_stop
        self._tokens: weakref.WeakKeyDictionary[Any, Token] = weakref.WeakKeyDictionary()
        self._openapi = json.dumps(openapi_document())
        self.closing = asyncio.Event()

    def app(self) -> web.Application:
        handlers = handler_names()
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_BODY)
        for r in ROUTES:
            app.router.add_route(r.method, r.path, self._bind(r, handlers[r.name]), name=r.name)
        return app

    def _bind(self, route: Route, name: str) -> Handler:
        method = getattr(self, name)

        async def handler(request: web.Request) -> web.StreamResponse:
            request["route"] = route
            result: web.StreamResponse = await method(request)
            return result

        return handler

    # ---- identity and errors ----------------------------------------------------

    def token(self, request: web.Request) -> Token:
        """The caller's token, captured once per connection."""
        transport = request.transport
        if transport is None:
            raise FerryError("E_ACCESSDENIED", "the connection is gone")
        try:
            cached = self._tokens.get(transport)
        except TypeError:
            cached = None
        if cached is not None:
            return cached
        sock = transport.get_extra_info("socket")
        if sock is None:
            raise FerryError("E_ACCESSDENIED", "cannot identify the caller")
        token = token_from_socket(sock, self.admin_groups)
        with contextlib.suppress(TypeError):
            self._tokens[transport] = token
        self.logon.note(token)
        return token

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            token = self.token(request)
            if self.only_uid is not None and token.uid != self.only_uid:
                raise FerryError(
                    "E_ACCESSDENIED", "this is a per-user ferryd; only its own user may connect"
                )
            request["token"] = token
            return await handler(request)
        except FerryError as exc:
            return _error_response(exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = "BG_E_NOT_FOUND" if exc.status == 404 else "E_INVALIDARG"
            return _error_response(
                FerryError(code, f"{request.method} {request.path}: {exc.reason}"), exc.status
            )
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as exc:
            log.exception("internal error in %s %s", request.method, request.path)
            return _error_response(FerryError("E_FAIL", f"internal error: {exc!r}"), 500)

    async def body(self, request: web.Request) -> dict[str, Any]:
        route: Route = request["route"]
        return route.parse_body(await request.read())

    # ---- handlers ------------------------------------------------------------------

    async def h_openapi(self, request: web.Request) -> web.Response:
        return web.Response(text=self._openapi, content_type="application/json")

    async def h_metrics(self, request: web.Request) -> web.Response:
        """Anyone who may connect may read them: counts and codes, no names or URLs."""
        if self.metrics is None:
            raise FerryError("E_NOTIMPL", "this ferryd keeps no metrics")
        return metrics_response(self.metrics, request)

    async def h_status(self, request: web.Request) -> web.Response:
        token: Token = request["token"]
        caller = token.to_json() | {"sid": token.sid}
        return web.json_response(
            {
                "version": __version__,
                "mode": self.mode,
                "pid": os.getpid(),
                "jobs": self.manager.job_count(),
                "caller": caller,
            }
        )

    async def h_list_jobs(self, request: web.Request) -> web.Response:
        jobs = self.manager.list_jobs(request["token"], _flag(request, "all_users"))
        return web.json_response({"jobs": [job_view(j) for j in jobs]})

    async def h_create_job(self, request: web.Request) -> web.Response:
        body = await self.body(request)
        try:
            jtype = JobType(body.get("type", JobType.DOWNLOAD.value))
            priority = Priority(body.get("priority", Priority.NORMAL.value))
        except ValueError as exc:
            raise FerryError("E_INVALIDARG", str(exc)) from None
        ccache = None
        if body.get("krb5ccname") and self.credentials is not None:
            ccache = await self.credentials.vet_ccache(request["token"], body["krb5ccname"])
        job = await self.manager.create_job(
            request["token"], body["display_name"], jtype, priority, body.get("description", ""),
            ccache=ccache,
        )
        return web.json_response(job_view(job), status=201)

    async def h_get_job(self, request: web.Request) -> web.Response:
        job = self.manager.resolve(request["token"], request.match_info["job"])
        return web.json_response(job_view(job))

    async def h_set_job(self, request: web.Request) -> web.Response:
        body = await self.body(request)
        job = await self.manager.set_properties(request["token"], request.match_info["job"], body)
        return web.json_response(job_view(job))

    async def h_set_http_options(self, request: web.Request) -> web.Response:
        body = await self.body(request)
        if self.http_options is None:
            raise FerryError("E_NOTIMPL", "HTTP options are not available")
        job = await self.http_options.set(request["token"], request.match_info["job"], body)
        return web.json_response(job_view(job))

    async def h_list_files(self, request: web.Request) -> web.Response:
        job = self.manager.resolve(request["token"], request.match_info["job"])
        return web.json_response({"files": [file_view(f) for f in job.files]})

    async def h_add_files(self, request: web.Request) -> web.Response:
        body = await self.body(request)
        pairs: list[tuple[str, str]] = []
        digests: list[str | None] = []
        ranges: list[list[tuple[int, int | None]] | None] = []
        for item in body["files"]:
            if (
                not isinstance(item, dict)
                or not REQUIRED_FILE_FIELDS <= set(item) <= FILE_FIELD_NAMES
                or not isinstance(item["remote_name"], str)
                or not isinstance(item["local_name"], str)
            ):
                raise FerryError(
                    "E_INVALIDARG",
                    "each file must be an object with string remote_name and local_name "
                    "(and optionally sha256, ranges) only",
                )
            pairs.append((item["remote_name"], item["local_name"]))
            digests.append(item.get("sha256"))  # validated by the manager
            ranges.append(ranges_from_wire(item.get("ranges")))  # checked by the manager
        job = await self.manager.add_files(
            request["token"], request.match_info["job"], pairs, digests, ranges
        )
        return web.json_response(job_view(job))

    async def h_set_remote_name(self, request: web.Request) -> web.Response:
        body = await self.body(request)
        raw = request.match_info["index"]
        if not raw.isdigit() or not raw.isascii():
            raise FerryError("E_INVALIDARG", f"file index {raw!r} is not a number")
        job = await self.manager.set_remote_name(
            request["token"], request.match_info["job"], int(raw), body["remote_name"]
        )
        return web.json_response(job_view(job))

    async def h_set_reply_file(self, request: web.Request) -> web.Response:
        body = await self.body(request)
        job = await self.manager.set_reply_file(
            request["token"], request.match_info["job"], body["reply_file"]
        )
        return web.json_response(job_view(job))

    async def h_get_reply(self, request: web.Request) -> web.Response:
        data = await self.manager.reply_data(request["token"], request.match_info["job"])
        return web.json_response(
            {"size": len(data), "data": base64.b64encode(data).decode("ascii")}
        )

    async def h_replace_remote_prefix(self, request: web.Request) -> web.Response:
        body = await self.body(request)
        job, result = await self.manager.replace_remote_prefix(
            request["token"], request.match_info["job"], body["old"], body["new"]
        )
        return web.json_response(
            {"result": {"code": result, "hresult": f"0x{hresult_of(result):08X}"},
             "job": job_view(job)}
        )  # fmt: skip

    async def h_action(self, request: web.Request) -> web.Response:
        await self.body(request)
        return await self._do_action(
            request["token"], request.match_info["job"], request.path.rsplit("/", 1)[1]
        )

    async def _do_action(self, token: Token, ref: str, action: str) -> web.Response:
        result = "S_OK"
        if action == "resume":
            job = await self.manager.resume(token, ref)
        elif action == "suspend":
            job = await self.manager.suspend(token, ref)
        elif action == "cancel":
            job, result = await self.manager.cancel(token, ref)
        elif action == "complete":
            job, result = await self.manager.complete(token, ref)
        else:
            job = await self.manager.take_ownership(token, ref)
        err = FerryError(result)
        return web.json_response(
            {"result": {"code": result, "hresult": f"0x{err.hresult:08X}"}, "job": job_view(job)}
        )

    async def h_events(self, request: web.Request) -> web.StreamResponse:
        """The callback interface: the access check is made once, when subscribing (as
        when a handle is opened). ``all_events`` makes the subscriber an observer that
        receives every change whatever the job's notify_flags (service/events.py)."""
        token: Token = request["token"]
        job_ref = request.query.get("job")
        all_users = _flag(request, "all_users")
        all_events = _flag(request, "all_events")
        if job_ref:
            job = self.manager.resolve(token, job_ref)
            sub = self.bus.subscribe(job.id, None, all_events)
            initial = [job]
        else:
            initial = self.manager.list_jobs(token, all_users)
            sub = self.bus.subscribe(None, None if all_users else token.uid, all_events)
        try:
            resp = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            await resp.prepare(request)
            for j in initial:
                if not self.manager.has_job(j.id):
                    continue  # removed meanwhile; its job-removed event is queued
                snapshot = self.manager.snapshot(j)
                sub.sent_snapshot(snapshot)
                await _send(resp, snapshot)
            await resp.write(b": ready\n\n")
            while not self.closing.is_set():
                try:
                    event = await sub.get(SSE_KEEPALIVE)
                except TimeoutError:
                    await resp.write(b": keepalive\n\n")
                    continue
                if event is None:
                    break
                await _send(resp, event)
            return resp
        except ConnectionResetError:
            # The subscriber went away (a finished `ferry wait`, Ctrl-C): nothing to report.
            log.debug("event subscriber disconnected")
            raise asyncio.CancelledError() from None
        finally:
            self.bus.unsubscribe(sub)

    # ---- handles, token options, logoff ----------------------------------------------

    async def h_open_handle(self, request: web.Request) -> web.Response:
        body = await self.body(request)
        try:
            interface = Interface(body["interface"])
        except ValueError:
            raise FerryError("E_INVALIDARG", f"unknown interface {body['interface']!r}") from None
        ttl = body.get("ttl")
        transport = request.transport
        assert transport is not None

        def alive() -> bool:
            return not transport.is_closing()

        h = self.handles.open_handle(
            request["token"], request.match_info["job"], interface, ttl, alive
        )
        return web.json_response(
            {"handle": h.id, "interface": h.interface.value, "job_id": h.job_id, "expires_in": ttl},
            status=201,
        )

    async def h_get_handle(self, request: web.Request) -> web.Response:
        h, job = self.handles.handle_job(request.match_info["handle"])
        return web.json_response(
            {
                "handle": h.id,
                "interface": h.interface.value,
                "job_id": job.id,
                "job": job_view(job),
            }
        )

    async def h_release_handle(self, request: web.Request) -> web.Response:
        self.handles.release_handle(request.match_info["handle"])
        return web.json_response({"released": True})

    async def h_handle_action(self, request: web.Request) -> web.Response:
        await self.body(request)
        opener, job_id = self.handles.as_opener(request.match_info["handle"])
        return await self._do_action(opener, job_id, request.path.rsplit("/", 1)[1])

    def _token_options_target(self, request: web.Request) -> tuple[Token, Any]:
        return self.handles.token_options(
            request["token"], request.match_info.get("job"), request.match_info.get("handle")
        )

    async def h_get_helper_token(self, request: web.Request) -> web.Response:
        opener, job = self._token_options_target(request)
        return web.json_response(self.handles.get_helper_token(opener, job))

    async def h_set_helper_token(self, request: web.Request) -> web.Response:
        body = await self.body(request)
        opener, job = self._token_options_target(request)
        ccache = None
        if body.get("krb5ccname") and self.credentials is not None:
            # The helper's own cache, checked as the helper (this connection's identity).
            ccache = await self.credentials.vet_ccache(request["token"], body["krb5ccname"])
        await self.handles.set_helper_token(opener, job, request["token"], ccache=ccache)
        return web.json_response(self.handles.get_helper_token(opener, job))

    async def h_clear_helper_token(self, request: web.Request) -> web.Response:
        opener, job = self._token_options_target(request)
        await self.handles.clear_helper_token(opener, job)
        return web.json_response(self.handles.get_helper_token(opener, job))

    async def h_set_helper_flags(self, request: web.Request) -> web.Response:
        body = await self.body(request)
        opener, job = self._token_options_target(request)
        await self.handles.set_helper_flags(opener, job, body["flags"])
        return web.json_response(self.handles.get_helper_token(opener, job))

    # ---- credentials (SPEC §8.2) ------------------------------------------------------

    def _credentials(self) -> Credentials:
        if self.credentials is None:
            raise FerryError("E_NOTIMPL", "this ferryd was started without credential support")
        return self.credentials

    async def h_list_credentials(self, request: web.Request) -> web.Response:
        creds = self._credentials().list(request["token"], request.match_info["job"])
        return web.json_response({"credentials": creds})

    async def h_set_credentials(self, request: web.Request) -> web.Response:
        body = await self.body(request)
        job = await self._credentials().set(
            request["token"],
            request.match_info["job"],
            body["target"],
            body["scheme"],
            body.get("user"),
            body.get("password"),
            body.get("krb5ccname"),
        )
        return web.json_response(job_view(job))

    async def h_remove_credentials(self, request: web.Request) -> web.Response:
        job, removed = await self._credentials().remove(
            request["token"],
            request.match_info["job"],
            request.match_info["target"],
            request.match_info["scheme"],
        )
        code = "S_OK" if removed else "S_FALSE"
        return web.json_response(
            {"result": {"code": code, "hresult": f"0x{hresult_of(code):08X}"},
             "job": job_view(job)}
        )

    async def h_logoff(self, request: web.Request) -> web.Response:
        body = await self.body(request)
        token: Token = request["token"]
        if not token.admin:
            raise FerryError("E_ACCESSDENIED", "only administrators may declare a logoff")
        if ("user" in body) == ("session" in body):
            raise FerryError("E_INVALIDARG", "give exactly one of user and session")
        if "session" in body:
            ended = await self.logon.logoff(session=body["session"])
            what: dict[str, Any] = {"session": body["session"]}
        else:
            uid = resolve_uid(body["user"])
            ended = await self.logon.logoff(user=uid)
            what = {"uid": uid, "name": user_name(uid)}
        return web.json_response({"logged_off": what, "ended_sessions": sorted(ended)})

    async def h_shutdown(self, request: web.Request) -> web.StreamResponse:
        """Stop as on SIGTERM. The daemon's own user (user mode) or an administrator: a
        system daemon serves everyone, and one user must not stop everyone's transfers.
        The answer is written out before the stop is asked for, so the caller gets it."""
        await self.body(request)
        token: Token = request["token"]
        if not (token.admin or (self.only_uid is not None and token.uid == self.only_uid)):
            raise FerryError("E_ACCESSDENIED", "only administrators may stop the system ferryd")
        log.info("shutdown asked by uid %d", token.uid)
        response = web.json_response({"stopping": True})
        await response.prepare(request)
        await response.write_eof()
        self.request_stop()
        return response

    async def h_fleet(self, request: web.Request) -> web.Response:
        """The fleet's workers and leases (docs/fleet.md): administrators only."""
        token: Token = request["token"]
        if not token.admin:
            raise FerryError("E_ACCESSDENIED", "only administrators may look at the fleet")
        if self.fleet is None:
            raise FerryError(
                "E_NOTIMPL", "this ferryd is not in fleet mode (no [store] url in its config)"
            )
        return web.json_response(await self.fleet.status())

    # ---- SPEC §10: the network and the bandwidth policy ------------------------------------

    def _network(self) -> NetworkState:
        if self.network is None:
            raise FerryError("E_NOTIMPL", "this ferryd does not watch the network")
        return self.network

    async def h_get_network(self, request: web.Request) -> web.Response:
        return web.json_response(self._network().snapshot())

    async def h_set_network_cost(self, request: web.Request) -> web.Response:
        body = await self.body(request)
        token: Token = request["token"]
        if not (token.admin or (self.only_uid is not None and token.uid == self.only_uid)):
            raise FerryError("E_ACCESSDENIED", "only administrators may set the network cost")
        network = self._network()
        try:
            network.set_override(body["cost"])
        except ValueError:
            raise FerryError("E_INVALIDARG", f"unknown network cost {body['cost']!r}") from None
        log.info("network cost set to %s by uid %d", body["cost"], token.uid)
        return web.json_response(network.snapshot())

    async def h_reload(self, request: web.Request) -> web.Response:
        await self.body(request)
        token: Token = request["token"]
        if not (token.admin or (self.only_uid is not None and token.uid == self.only_uid)):
            raise FerryError("E_ACCESSDENIED", "only administrators may reload ferryd's config")
        if self.reload is None:
            raise FerryError("E_NOTIMPL", "this ferryd cannot reload its config")
        return web.json_response(self.reload())


class FleetStatus(Protocol):
    async def status(self) -> dict[str, Any]: ...


def resolve_uid(user: str | int) -> int:
    if isinstance(user, int):
        if user < 0:
            raise FerryError("E_INVALIDARG", "a uid is not negative")
        return user
    if user.isdigit():
        return int(user)
    import pwd

    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise FerryError("E_INVALIDARG", f"no user named {user!r}") from None


async def _send(resp: web.StreamResponse, event: ev.Event) -> None:
    data = json.dumps(event.to_json(), separators=(",", ":"))
    await resp.write(f"event: {event.type}\ndata: {data}\n\n".encode())


def metrics_response(metrics: Metrics, request: web.Request) -> web.Response:
    """The exposition in the format the scraper's Accept header asks for."""
    body, content_type = metrics.render(request.headers.get("Accept"))
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = content_type
    return resp


def metrics_app(metrics: Metrics) -> web.Application:
    """The TCP metrics listener (``[daemon] metrics_listen``): GET /metrics and /v1/metrics,
    nothing else: no job can be read or changed through it."""

    async def handler(request: web.Request) -> web.Response:
        return metrics_response(metrics, request)

    app = web.Application()
    app.router.add_get("/metrics", handler)
    app.router.add_get(f"{API_PREFIX}/metrics", handler)
    return app
