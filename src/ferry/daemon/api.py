"""The HTTP/JSON API over the Unix socket (SPEC §5).

One route table drives both the aiohttp router and the OpenAPI document, so the document
cannot drift from what is served. Every request carries the caller's token, captured from
the connection by SO_PEERCRED; every failure is the error body of SPEC §5.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .._version import __version__
from ..errors import FerryError
from ..model.token import Token
from ..model.types import JobType, Priority
from ..protocol.views import file_view, job_view
from ..security.handles import Interface
from ..security.peer import token_from_socket, user_name
from ..service import events as ev
from ..service.events import EventBus
from ..service.handles import Handles
from ..service.logon import Logon
from ..service.manager import QueueManager

log = logging.getLogger("ferry.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY = 16 * 1024 * 1024
SSE_KEEPALIVE = 15.0

# ---- schemas (JSON Schema fragments, also used for request validation) -----------------

JOB_SCHEMA: dict[str, Any] = {"$ref": "#/components/schemas/Job"}
FILE_SCHEMA: dict[str, Any] = {"$ref": "#/components/schemas/File"}
RESULT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "result": {
            "type": "object",
            "properties": {"code": {"type": "string"}, "hresult": {"type": "string"}},
        },
        "job": JOB_SCHEMA,
    },
}


@dataclass(frozen=True)
class Field:
    kind: type | tuple[type, ...]
    required: bool = False
    schema: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    name: str
    summary: str
    handler: str
    body: dict[str, Field] | None = None
    query: dict[str, str] = field(default_factory=dict)
    response: dict[str, Any] = field(default_factory=dict)
    status: int = 200
    stream: bool = False


_STR = {"type": "string"}
HANDLE_PATH = "/v1/handles/{handle}"
HANDLE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "handle": {"type": "string"},
        "interface": {"type": "string"},
        "job_id": {"type": "string"},
        "expires_in": {"type": ["integer", "null"]},
        "job": {"$ref": "#/components/schemas/Job"},
    },
}
HELPER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "flags": {"type": "array", "items": {"type": "string"}},
        "flags_value": {"type": "integer"},
        "sid": {"type": ["string", "null"]},
    },
}
_INT = {"type": "integer"}
JOB_PATH = "/v1/jobs/{job}"

ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/openapi.json", "openapi", "This document", "openapi"),
    Route("GET", "/v1/status", "status", "Daemon status and the caller's identity", "status"),
    Route(
        "GET",
        "/v1/jobs",
        "list_jobs",
        "List the caller's jobs (admins: all users')",
        "list_jobs",
        query={"all_users": "boolean"},
        response={"type": "object", "properties": {"jobs": {"type": "array", "items": JOB_SCHEMA}}},
    ),
    Route(
        "POST",
        "/v1/jobs",
        "create_job",
        "Create a job (it starts SUSPENDED)",
        "create_job",
        body={
            "display_name": Field(str, True, _STR),
            "type": Field(str, False, {"enum": [t.value for t in JobType]}),
            "priority": Field(str, False, {"enum": [p.value for p in Priority]}),
            "description": Field(str, False, _STR),
        },
        response=JOB_SCHEMA,
        status=201,
    ),
    Route("GET", JOB_PATH, "get_job", "One job", "get_job", response=JOB_SCHEMA),
    Route(
        "PATCH",
        JOB_PATH,
        "set_job",
        "Change job properties",
        "set_job",
        body={
            "display_name": Field(str, False, _STR),
            "description": Field(str, False, _STR),
            "priority": Field(str, False, {"enum": [p.value for p in Priority]}),
            "min_retry_delay": Field(int, False, _INT),
            "no_progress_timeout": Field(int, False, _INT),
            "notify_flags": Field(int, False, _INT),
            "notify_cmdline": Field(
                (list, type(None)), False, {"type": ["array", "null"], "items": _STR}
            ),
            "dynamic_content": Field(bool, False, {"type": "boolean"}),
        },
        response=JOB_SCHEMA,
    ),
    Route(
        "GET",
        JOB_PATH + "/files",
        "list_files",
        "The job's files",
        "list_files",
        response={
            "type": "object",
            "properties": {"files": {"type": "array", "items": FILE_SCHEMA}},
        },
    ),
    Route(
        "POST",
        JOB_PATH + "/files",
        "add_files",
        "Add files (all or none)",
        "add_files",
        body={
            "files": Field(
                list,
                True,
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["remote_name", "local_name"],
                        "properties": {
                            "remote_name": _STR,
                            "local_name": _STR,
                            "sha256": {
                                "type": ["string", "null"],
                                "pattern": "^[0-9a-fA-F]{64}$",
                                "description": "expected SHA-256 of the whole file",
                            },
                        },
                        "additionalProperties": False,
                    },
                },
            )
        },
        response=JOB_SCHEMA,
    ),
    *(
        Route(
            "POST",
            f"{JOB_PATH}/{action}",
            action.replace("-", "_"),
            summary,
            "action",
            body={},
            response=RESULT_SCHEMA,
        )
        for action, summary in (
            ("resume", "Queue the job for transfer"),
            ("suspend", "Stop transferring"),
            ("cancel", "Delete temporary files; the job becomes CANCELLED"),
            ("complete", "Publish transferred files; the job becomes ACKNOWLEDGED"),
            ("take-ownership", "Make the caller the owner"),
        )
    ),
    Route(
        "POST",
        JOB_PATH + "/handles",
        "open_handle",
        "Open the job for an interface: the access check happens now",
        "open_handle",
        body={
            "interface": Field(str, True, {"enum": [i.value for i in Interface]}),
            "ttl": Field(int, False, {"type": "integer", "minimum": 1, "maximum": 3600}),
        },
        response=HANDLE_SCHEMA,
        status=201,
    ),
    Route(
        "GET", HANDLE_PATH, "get_handle", "The handle's job", "get_handle", response=HANDLE_SCHEMA
    ),
    Route("DELETE", HANDLE_PATH, "release_handle", "Release a handle", "release_handle"),
    *(
        Route(
            "POST",
            f"{HANDLE_PATH}/{action}",
            "handle_" + action,
            f"{action} through a job handle (no new access check)",
            "handle_action",
            body={},
            response=RESULT_SCHEMA,
        )
        for action in ("resume", "suspend", "cancel", "complete")
    ),
    *(
        r
        for base, prefix in ((JOB_PATH, "job"), (HANDLE_PATH, "handle"))
        for r in (
            Route(
                "GET",
                base + "/helper-token",
                f"{prefix}_get_helper_token",
                "GetHelperTokenFlags and GetHelperTokenSid",
                "get_helper_token",
                response=HELPER_SCHEMA,
            ),
            Route(
                "PUT",
                base + "/helper-token",
                f"{prefix}_set_helper_token",
                "SetHelperToken: the identity of this connection becomes the helper token",
                "set_helper_token",
                body={},
                response=HELPER_SCHEMA,
            ),
            Route(
                "DELETE",
                base + "/helper-token",
                f"{prefix}_clear_helper_token",
                "ClearHelperToken",
                "clear_helper_token",
                response=HELPER_SCHEMA,
            ),
            Route(
                "PUT",
                base + "/helper-token/flags",
                f"{prefix}_set_helper_token_flags",
                "SetHelperTokenFlags (LOCAL_FILE 0x1, NETWORK 0x2; 0 clears)",
                "set_helper_flags",
                body={"flags": Field(int, True, {"type": "integer", "minimum": 0, "maximum": 3})},
                response=HELPER_SCHEMA,
            ),
        )
    ),
    Route(
        "POST",
        "/v1/logoff",
        "logoff",
        "Declare a user or a session logged off now (administrators)",
        "logoff",
        body={
            "user": Field((str, int), False, {"type": ["string", "integer"]}),
            "session": Field(int, False, _INT),
        },
    ),
    Route(
        "GET",
        "/v1/events",
        "events",
        "Server-Sent Events of job changes (notify_flags apply unless all_events=true)",
        "events",
        query={"job": "string", "all_users": "boolean", "all_events": "boolean"},
        stream=True,
    ),
)

_FILE_ITEM_KEYS = frozenset({"remote_name", "local_name", "sha256"})
_JOB_COMPONENT: dict[str, Any] = {
    "type": "object",
    "required": [
        "id",
        "display_name",
        "description",
        "type",
        "state",
        "priority",
        "owner",
        "progress",
        "times",
        "error",
        "error_count",
        "min_retry_delay",
        "no_progress_timeout",
        "notify_flags",
        "notify_cmdline",
        "helper_token",
    ],
    "properties": {
        "id": _STR,
        "display_name": _STR,
        "description": _STR,
        "type": {"enum": [t.value for t in JobType]},
        "state": _STR,
        "priority": {"enum": [p.value for p in Priority]},
        "owner": {"type": "object"},
        "progress": {"type": "object"},
        "times": {"type": "object"},
        "error": {"type": ["object", "null"]},
        "error_count": _INT,
        "min_retry_delay": _INT,
        "no_progress_timeout": _INT,
        "notify_flags": _INT,
        "notify_cmdline": {"type": ["array", "null"]},
        "helper_token": {"type": ["object", "null"]},
        "notification": {"type": ["object", "null"]},
        "dynamic_content": {"type": "boolean"},
        "retry_at": {"type": ["string", "null"], "description": "next retry (TRANSIENT_ERROR)"},
    },
}
_FILE_COMPONENT: dict[str, Any] = {
    "type": "object",
    "required": ["remote_name", "local_name", "bytes_total", "bytes_transferred", "completed"],
    "properties": {
        "remote_name": _STR,
        "local_name": _STR,
        "bytes_total": {"type": ["integer", "null"]},
        "bytes_transferred": _INT,
        "completed": {"type": "boolean"},
        "final_url": {"type": ["string", "null"]},
        "sha256": {"type": ["string", "null"]},
    },
}
_ERROR_COMPONENT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "hresult", "message"],
            "properties": {"code": _STR, "hresult": _STR, "message": _STR},
        }
    },
}


def openapi_document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for r in ROUTES:
        op: dict[str, Any] = {"operationId": r.name, "summary": r.summary}
        params = [
            {"name": q, "in": "query", "required": False, "schema": {"type": t}}
            for q, t in r.query.items()
        ]
        if "{handle}" in r.path:
            params.insert(0, {"name": "handle", "in": "path", "required": True, "schema": _STR})
        if "{job}" in r.path:
            params.insert(
                0,
                {
                    "name": "job",
                    "in": "path",
                    "required": True,
                    "schema": _STR,
                    "description": "job id, or a display name unique among the caller's jobs",
                },
            )
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = {
                "required": r.method == "POST" and any(f.required for f in r.body.values()),
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": [k for k, f in r.body.items() if f.required],
                            "properties": {k: f.schema for k, f in r.body.items()},
                        }
                    }
                },
            }
        ok_type = "text/event-stream" if r.stream else "application/json"
        op["responses"] = {
            str(r.status): {
                "description": "success",
                "content": {ok_type: {"schema": r.response or {"type": "object"}}},
            },
            "default": {
                "description": "a BITS error",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            },
        }
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "ferryd API", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": {"Job": _JOB_COMPONENT, "File": _FILE_COMPONENT, "Error": _ERROR_COMPONENT}
        },
    }


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
    ) -> None:
        self.manager = manager
        self.handles = handles
        self.logon = logon
        self.bus = bus
        self.admin_groups = admin_groups
        self.mode = mode
        self.only_uid = only_uid
        self._tokens: weakref.WeakKeyDictionary[Any, Token] = weakref.WeakKeyDictionary()
        self._openapi = json.dumps(openapi_document())
        self._streams: set[web.StreamResponse] = set()
        self.closing = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_BODY)
        for r in ROUTES:
            app.router.add_route(r.method, r.path, self._bind(r), name=r.name)
        return app

    def _bind(self, route: Route) -> Handler:
        method = getattr(self, "h_" + route.handler)

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
        assert route.body is not None
        raw = await request.read()
        if not raw.strip():
            data: Any = {}
        else:
            try:
                data = json.loads(raw)
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                raise FerryError(
                    "E_INVALIDARG", f"the request body is not valid JSON: {exc}"
                ) from None
        if not isinstance(data, dict):
            raise FerryError("E_INVALIDARG", "the request body must be a JSON object")
        for key, value in data.items():
            spec = route.body.get(key)
            if spec is None:
                raise FerryError("E_INVALIDARG", f"unknown field {key!r}")
            if not isinstance(value, spec.kind) or (
                isinstance(value, bool) and spec.kind in (int, (int, float))
            ):
                raise FerryError("E_INVALIDARG", f"field {key!r} has the wrong type")
        for key, spec in route.body.items():
            if spec.required and key not in data:
                raise FerryError("E_INVALIDARG", f"missing field {key!r}")
        return data

    # ---- handlers ------------------------------------------------------------------

    async def h_openapi(self, request: web.Request) -> web.Response:
        return web.Response(text=self._openapi, content_type="application/json")

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
        job = await self.manager.create_job(
            request["token"], body["display_name"], jtype, priority, body.get("description", "")
        )
        return web.json_response(job_view(job), status=201)

    async def h_get_job(self, request: web.Request) -> web.Response:
        job = self.manager.resolve(request["token"], request.match_info["job"])
        return web.json_response(job_view(job))

    async def h_set_job(self, request: web.Request) -> web.Response:
        body = await self.body(request)
        job = await self.manager.set_properties(request["token"], request.match_info["job"], body)
        return web.json_response(job_view(job))

    async def h_list_files(self, request: web.Request) -> web.Response:
        job = self.manager.resolve(request["token"], request.match_info["job"])
        return web.json_response({"files": [file_view(f) for f in job.files]})

    async def h_add_files(self, request: web.Request) -> web.Response:
        body = await self.body(request)
        pairs: list[tuple[str, str]] = []
        digests: list[str | None] = []
        for item in body["files"]:
            if (
                not isinstance(item, dict)
                or not {"remote_name", "local_name"} <= set(item) <= _FILE_ITEM_KEYS
                or not isinstance(item["remote_name"], str)
                or not isinstance(item["local_name"], str)
            ):
                raise FerryError(
                    "E_INVALIDARG",
                    "each file must be an object with string remote_name and local_name "
                    "(and optionally sha256) only",
                )
            pairs.append((item["remote_name"], item["local_name"]))
            digests.append(item.get("sha256"))  # validated by the manager
        job = await self.manager.add_files(
            request["token"], request.match_info["job"], pairs, digests
        )
        return web.json_response(job_view(job))

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
            self._streams.add(resp)
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
            with contextlib.suppress(NameError):
                self._streams.discard(resp)

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
        await self.body(request)
        opener, job = self._token_options_target(request)
        await self.handles.set_helper_token(opener, job, request["token"])
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
