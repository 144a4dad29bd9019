"""The API's operations: method, path, operation name, request body and answer of each. ferryd
binds a handler to every one by its name (daemon/api.py) and checks bodies with
``Route.parse_body``; the clients build their requests from them (client/_ops.py); the
OpenAPI document lists them (openapi.py)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from ..errors import FerryError
from ..model.network import COST_CHOICES
from ..model.types import JobType
from .contract import (
    ACTIONS,
    API_PREFIX,
    FILE_FIELDS,
    INTERFACES,
    MAX_HANDLE_TTL,
    PROPERTIES,
    PROPERTY_BY_NAME,
    REQUIRED_FILE_FIELDS,
)
from .schemas import HELPER_SCHEMA, closed, ref

_INT: Mapping[str, Any] = {"type": "integer"}


@dataclass(frozen=True, slots=True)
class BodyField:
    schema: Mapping[str, Any]
    required: bool = False


HTTP_OPTIONS_BODY: Mapping[str, BodyField] = {
    "custom_headers": BodyField(
        {"type": ["array", "null", "string"], "items": {"type": "string"},
         "description": "'Name: value' lines (or one string of CRLF-separated lines); null "
                        "clears; at most 16,384 characters; no Host, Range, If-Range, "
                        "Content-Length, Authorization, Proxy-Authorization"}),
    "custom_headers_write_only": BodyField(
        {"type": "boolean", "description": "true: the headers are never returned again"}),
    "client_certificate": BodyField(
        {"type": ["object", "null"],
         "properties": {"cert": {"type": "string"}, "key": {"type": ["string", "null"]}},
         "required": ["cert"], "additionalProperties": False,
         "description": "absolute PEM paths read as the owner at each transfer; null clears"}),
    "security_flags": BodyField(
        {"type": ["array", "string", "null"], "items": {"type": "string"},
         "description": "names (see the Job schema); [] or null clears"}),
    "http_method": BodyField({"type": "string", "description": "default GET"}),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Route:
    """One operation. ``name`` is its operationId: ferryd binds a handler to it by that
    name (daemon/api.py) and the clients find their request's method and path by it."""

    method: str
    path: str
    name: str
    summary: str
    body: Mapping[str, BodyField] | None = None
    query: Mapping[str, str] = field(default_factory=dict)
    response: Mapping[str, Any] = field(default_factory=dict)
    status: int = 200
    stream: bool = False
    # The answer's media type when it is not JSON (or an event stream), e.g. the metrics.
    media: str | None = None

    def parse_body(self, raw: bytes) -> dict[str, Any]:
        """A request body as this route takes it: a JSON object (empty means ``{}``) with
        only this route's fields, each of its JSON type, the required ones present. What a
        value means is the domain's to judge."""
        assert self.body is not None, f"{self.name} takes no body"
        data: Any = {}
        if raw.strip():
            try:
                data = json.loads(raw)
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                raise FerryError(
                    "E_INVALIDARG", f"the request body is not valid JSON: {exc}"
                ) from None
        if not isinstance(data, dict):
            raise FerryError("E_INVALIDARG", "the request body must be a JSON object")
        for key, value in data.items():
            spec = self.body.get(key)
            if spec is None:
                raise FerryError("E_INVALIDARG", f"unknown field {key!r}")
            if not json_type_matches(value, spec.schema):
                raise FerryError("E_INVALIDARG", f"field {key!r} has the wrong type")
        for key, spec in self.body.items():
            if spec.required and key not in data:
                raise FerryError("E_INVALIDARG", f"missing field {key!r}")
        return data

    def target(self, **params: str) -> str:
        """The path with ``{job}`` / ``{handle}`` filled in, each quoted whole (so a job's
        display name may hold spaces, slashes or ``?``)."""
        path = self.path
        for key, value in params.items():
            path = path.replace("{" + key + "}", quote(value, safe=""))
        return path


JOB_PATH = f"{API_PREFIX}/jobs/{{job}}"
HANDLE_PATH = f"{API_PREFIX}/handles/{{handle}}"


def _list_of(key: str, item: Mapping[str, Any]) -> dict[str, Any]:
    return closed({key: {"type": "array", "items": item}})


# The caller's Kerberos credential cache (its KRB5CCNAME, FILE: caches only), for implicit
# NEGOTIATE credentials (SPEC §8.2); read by ferryd as the caller, never as root.
_KRB5CCNAME = BodyField({"type": ["string", "null"], "maxLength": 4096})


def _credential_routes() -> tuple[Route, ...]:
    return (
        Route("GET", JOB_PATH + "/credentials", "list_credentials",
              "The job's credentials (never their passwords)",
              response=_list_of("credentials", ref("Credential"))),
        Route("PUT", JOB_PATH + "/credentials", "set_credentials",
              "SetCredentials: add or replace the (target, scheme) entry; no user and no "
              "password = implicit (NTLM/NEGOTIATE: the acting identity's Kerberos "
              "credentials). The password is write-only.",
              body={
                  "target": BodyField({"type": "string"}, True),
                  "scheme": BodyField({"type": "string"}, True),
                  "user": BodyField({"type": ["string", "null"]}),
                  "password": BodyField({"type": ["string", "null"], "writeOnly": True}),
                  "krb5ccname": _KRB5CCNAME,
              },
              response=ref("Job")),
        Route("DELETE", JOB_PATH + "/credentials/{target}/{scheme}", "remove_credentials",
              "RemoveCredentials (S_FALSE when there was no such entry)",
              response=ref("ActionResult")),
    )  # fmt: skip


def _helper_routes(base: str, prefix: str) -> tuple[Route, ...]:
    helper = ref("HelperToken")
    return (
        Route("GET", base + "/helper-token", f"{prefix}_get_helper_token",
              "GetHelperTokenFlags and GetHelperTokenSid", response=helper),
        Route("PUT", base + "/helper-token", f"{prefix}_set_helper_token",
              "SetHelperToken: the identity of this connection becomes the helper token",
              body={"krb5ccname": _KRB5CCNAME}, response=helper),
        Route("DELETE", base + "/helper-token", f"{prefix}_clear_helper_token",
              "ClearHelperToken", response=helper),
        Route("PUT", base + "/helper-token/flags", f"{prefix}_set_helper_token_flags",
              "SetHelperTokenFlags (LOCAL_FILE 0x1, NETWORK 0x2; 0 clears)",
              body={"flags": BodyField(HELPER_SCHEMA["properties"]["flags_value"], True)},
              response=helper),
    )  # fmt: skip


ROUTES: tuple[Route, ...] = (
    Route("GET", f"{API_PREFIX}/openapi.json", "openapi", "This document"),
    Route("GET", f"{API_PREFIX}/metrics", "metrics",
          "Prometheus metrics (text exposition format; OpenMetrics when the Accept header "
          "asks for it): jobs by state and priority, bytes, errors, retries, connections, "
          "store commit latency, notification runs",
          response={"type": "string"}, media="text/plain; version=0.0.4"),
    Route("GET", f"{API_PREFIX}/status", "status", "Daemon status and the caller's identity",
          response=ref("Status")),
    Route("GET", f"{API_PREFIX}/jobs", "list_jobs", "List the caller's jobs (admins: all users')",
          query={"all_users": "boolean"}, response=_list_of("jobs", ref("Job"))),
    Route("POST", f"{API_PREFIX}/jobs", "create_job", "Create a job (it starts SUSPENDED)",
          body={
              "krb5ccname": _KRB5CCNAME,
              "display_name": BodyField(PROPERTY_BY_NAME["display_name"].schema, True),
              "type": BodyField({"type": "string", "enum": [t.value for t in JobType]}),
              "priority": BodyField(PROPERTY_BY_NAME["priority"].schema),
              "description": BodyField(PROPERTY_BY_NAME["description"].schema),
          },
          response=ref("Job"), status=201),
    Route("GET", JOB_PATH, "get_job", "One job", response=ref("Job")),
    Route("PATCH", JOB_PATH, "set_job", "Change job properties",
          body={p.name: BodyField(p.schema) for p in PROPERTIES}, response=ref("Job")),
    Route("GET", JOB_PATH + "/files", "list_files", "The job's files",
          response=_list_of("files", ref("File"))),
    Route("POST", JOB_PATH + "/files", "add_files", "Add files (all or none)",
          body={"files": BodyField(
              {"type": "array", "items": {
                  "type": "object",
                  "required": sorted(REQUIRED_FILE_FIELDS),
                  "properties": {f.name: dict(f.schema, description=f.description)
                                 for f in FILE_FIELDS},
                  "additionalProperties": False,
              }},
              True,
          )},
          response=ref("Job")),
    Route("PUT", JOB_PATH + "/files/{index}/remote-name", "set_remote_name",
          "SetRemoteName: a new URL for file {index} (0-based; downloads, not transferred "
          "files); partial data is kept if the new server has the same size and validator",
          body={"remote_name": BodyField(FILE_FIELDS[0].schema, True)},
          response=ref("Job")),
    Route("POST", JOB_PATH + "/replace-remote-prefix", "replace_remote_prefix",
          "ReplaceRemotePrefix: every remote name starting with old (case-sensitive, all "
          "files) starts with new instead; all or nothing; S_FALSE when none matched",
          body={"old": BodyField(FILE_FIELDS[0].schema, True),
                "new": BodyField(FILE_FIELDS[0].schema, True)},
          response=ref("ActionResult")),
    *(Route("POST", f"{JOB_PATH}/{a.name}", a.operation, a.summary, body={},
            response=ref("ActionResult")) for a in ACTIONS),
    Route("PUT", JOB_PATH + "/reply-file", "set_reply_file",
          "SetReplyFileName: where complete puts an upload-reply job's reply (absolute "
          "path; default: the local name plus .reply)",
          body={"reply_file": BodyField(FILE_FIELDS[1].schema, True)},
          response=ref("Job")),
    Route("GET", JOB_PATH + "/reply", "get_reply",
          "GetReplyData: the reply of a TRANSFERRED upload-reply job (at most 1 MiB, "
          "else BG_E_TOO_LARGE), base64-encoded",
          response=ref("Reply")),
    Route("PATCH", JOB_PATH + "/http-options", "set_http_options",
          "IBackgroundCopyJobHttpOptions: custom headers (custom_headers_write_only: true "
          "makes them unreadable for good), client certificate, security flags, HTTP method "
          "(not GET: FOREGROUND, no resume); all or none",
          body=HTTP_OPTIONS_BODY, response=ref("Job")),
    Route("POST", JOB_PATH + "/handles", "open_handle",
          "Open the job for an interface: the access check happens now",
          body={
              "interface": BodyField({"type": "string", "enum": list(INTERFACES)}, True),
              "ttl": BodyField({"type": "integer", "minimum": 1, "maximum": MAX_HANDLE_TTL}),
          },
          response=ref("Handle"), status=201),
    Route("GET", HANDLE_PATH, "get_handle", "The handle's job", response=ref("Handle")),
    Route("DELETE", HANDLE_PATH, "release_handle", "Release a handle",
          response=closed({"released": {"const": True}})),
    *(Route("POST", f"{HANDLE_PATH}/{a.name}", a.handle_operation,
            f"{a.name} through a job handle (no new access check)", body={},
            response=ref("ActionResult")) for a in ACTIONS if a.via_handle),
    *_helper_routes(JOB_PATH, "job"),
    *_credential_routes(),
    *_helper_routes(HANDLE_PATH, "handle"),
    Route("POST", f"{API_PREFIX}/logoff", "logoff",
          "Declare a user or a login session logged off now (administrators)",
          body={
              "user": BodyField({"type": ["string", "integer"]}),
              "session": BodyField(_INT),
          },
          response={"type": "object", "required": ["logged_off", "ended_sessions"]}),
    Route("POST", f"{API_PREFIX}/shutdown", "shutdown",
          "Stop ferryd as on SIGTERM (transfers stop at a checkpoint); its own user in user "
          "mode, administrators",
          body={}, response=ref("Shutdown")),
    Route("GET", f"{API_PREFIX}/fleet", "fleet",
          "Fleet mode: the workers sharing this queue, their last heartbeat and the leases "
          "they hold (administrators; E_NOTIMPL on a single-machine ferryd)",
          response=ref("Fleet")),
    # SPEC §10: bandwidth and network conditions.
    Route("GET", f"{API_PREFIX}/network", "get_network",
          "What ferryd sees of the network: cost and its source, NetworkManager, routes, the "
          "bandwidth limits in force and the measured use per priority",
          response=ref("Network")),
    Route("PUT", f"{API_PREFIX}/network/cost", "set_network_cost",
          "Set the network cost ferryd assumes (administrators); auto: NetworkManager or the "
          "config",
          body={"cost": BodyField({"type": "string", "enum": list(COST_CHOICES)}, True)},
          response=ref("Network")),
    Route("POST", f"{API_PREFIX}/reload", "reload",
          "Read the config file again and apply [bandwidth] and [network] cost (as SIGHUP); "
          "its own user in user mode, administrators",
          body={}, response=closed({"config_file": {"type": ["string", "null"]},
                                    "applied": {"type": "array", "items": {"type": "string"}}})),
    Route("GET", f"{API_PREFIX}/events", "events",
          "Server-Sent Events of job changes (notify_flags apply unless all_events=true); "
          "each event's data is an Event object",
          query={"job": "string", "all_users": "boolean", "all_events": "boolean"},
          stream=True),
)  # fmt: skip

ROUTE_BY_NAME: Mapping[str, Route] = {r.name: r for r in ROUTES}

_JSON_TYPES: Mapping[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


def python_types(schema: Mapping[str, Any]) -> tuple[type, ...]:
    """The Python types a JSON value of ``schema``'s ``type`` decodes to (json.loads),
    for the daemon's first, shape-only check of a request body."""
    kinds = schema.get("type", "string")
    out: tuple[type, ...] = ()
    for kind in [kinds] if isinstance(kinds, str) else kinds:
        out += _JSON_TYPES[kind]
    return out


def json_type_matches(value: Any, schema: Mapping[str, Any]) -> bool:
    """``value`` has the JSON type ``schema`` asks for; a bool is not an integer."""
    kinds = python_types(schema)
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds)
