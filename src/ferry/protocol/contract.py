"""The API contract, written once: ferryd's routes and request bodies, the OpenAPI document
(``protocol/openapi.py``), the clients' requests and the ``ferry`` command's options all
derive from the tables here, so none of them can drift from another.

Adding a job property is one ``Property`` entry in ``PROPERTIES`` (its wire schema, an
example, how ``ferry set`` spells and parses it) plus its behaviour in the domain
(``Job.set_properties`` validates its meaning, ``Job`` keeps it). The PATCH body, the job
object's schema and view, ``Job.set(...)`` of both clients and ``ferry set --OPTION`` follow.

Kept light to import (the CLI's start-up time matters): the standard library,
``ferry.errors`` and ``ferry.model.types`` only; no aiohttp, click or rich, nothing of the
daemon.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from urllib.parse import quote

from ..errors import FerryError
from ..model.types import ErrorContext, JobState, JobType, NotifyFlags, Priority, TokenFlags

API_VERSION = 1
API_PREFIX = f"/v{API_VERSION}"

# ---- default paths (SPEC §1) -------------------------------------------------------------

SYSTEM_SOCKET = "/run/ferry/ferryd.sock"
SYSTEM_STATE_DIR = "/var/lib/ferry"


def default_socket(system: bool, environ: Mapping[str, str] | None = None) -> str:
    """Where ferryd listens by default: ``/run/ferry/ferryd.sock`` for the system daemon,
    ``$XDG_RUNTIME_DIR/ferry/ferryd.sock`` for a user's (``/run/user/UID`` when the variable
    is unset, where pam_systemd would have put it)."""
    if system:
        return SYSTEM_SOCKET
    env = os.environ if environ is None else environ
    runtime = env.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return os.path.join(runtime, "ferry", "ferryd.sock")


def default_state_dir(system: bool, environ: Mapping[str, str] | None = None) -> str:
    """Where ferryd keeps its store by default: ``/var/lib/ferry``, or for a user daemon
    ``$XDG_STATE_HOME/ferry`` (``~/.local/state/ferry``), also where an autostarted user
    daemon logs."""
    if system:
        return SYSTEM_STATE_DIR
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME") or os.path.join(
        env.get("HOME") or os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "ferry")


# ---- values: the client's conveniences and the CLI's text ------------------------------------


def wire_value(value: Any) -> Any:
    """Enums travel as their wire spelling, IntFlags as plain ints."""
    if isinstance(value, Enum):
        return value.value
    return value


def argv_value(value: Any) -> Any:
    """A command line given as one string is split like a shell would; an empty one (or
    None) clears it. Anything else is passed on for the daemon to judge."""
    if value is None:
        return None
    if isinstance(value, str):
        return shlex.split(value) or None
    if isinstance(value, list | tuple):
        return [str(a) for a in value] or None
    return value


def parse_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None


def parse_choice(text: str) -> str:
    return text.strip().lower()


def parse_notify_flags(text: str) -> int:
    """``3``, ``0x3`` or ``JOB_TRANSFERRED,JOB_ERROR`` (names as in BG_NOTIFY_*)."""
    text = text.strip()
    try:
        return int(text, 0)
    except ValueError:
        pass
    flags = 0
    for part in text.replace("|", ",").split(","):
        name = part.strip().upper().removeprefix("BG_NOTIFY_")
        if not name:
            continue
        try:
            flags |= NotifyFlags[name]
        except KeyError:
            known = ", ".join(f.name or "" for f in NotifyFlags)
            raise ValueError(f"{part!r} is not a number or one of {known}") from None
    return flags


def format_argv(value: Any) -> str:
    return "" if value is None else shlex.join(value)


@dataclass(frozen=True, slots=True)
class CliOption:
    """How ``ferry set`` offers a property. A boolean property is a switch (``--x`` /
    ``--no-x``) and an enumerated one a choice; every other takes text that ``parse`` turns
    into the wire value (a ValueError is a usage error), and ``format`` turns back."""

    flag: str
    metavar: str = ""
    help: str = ""
    parse: Callable[[str], Any] = str
    format: Callable[[Any], str] = str


@dataclass(frozen=True, slots=True)
class Property:
    """A job property clients may change (PATCH /v1/jobs/JOB) and read back (the job
    object). ``name`` is the JSON field and the keyword of ``Job.set`` in both clients;
    ``schema`` its JSON Schema, for reading and writing; ``example`` a valid value that
    differs from the default (the OpenAPI document shows it; the tests set it through every
    client); ``to_wire`` the client's conversion of a Python value (enums, flags, a command
    line as one string)."""

    name: str
    schema: Mapping[str, Any]
    description: str
    example: Any
    cli: CliOption
    to_wire: Callable[[Any], Any] = wire_value

    @property
    def keyword(self) -> str:
        return self.name

    @property
    def switch(self) -> bool:
        return self.schema.get("type") == "boolean"

    @property
    def choices(self) -> tuple[str, ...] | None:
        enum = self.schema.get("enum")
        return tuple(enum) if enum is not None else None


def _opt(name: str) -> str:
    return "--" + name.replace("_", "-")


_STR: Mapping[str, Any] = {"type": "string"}
_INT: Mapping[str, Any] = {"type": "integer"}
_ARGV: Mapping[str, Any] = {"type": ["array", "null"], "items": _STR}

PROPERTIES: tuple[Property, ...] = (
    Property(
        "display_name",
        {"type": "string", "minLength": 1},
        "The job's name; unique names can stand for the id (SetDisplayName).",
        "renamed job",
        CliOption(_opt("display_name"), "S", "[bitsadmin /setdisplayname]"),
    ),
    Property(
        "description",
        _STR,
        "Free text (SetDescription).",
        "set by every client",
        CliOption(_opt("description"), "S", "[bitsadmin /setdescription]"),
    ),
    Property(
        "priority",
        {"type": "string", "enum": [p.value for p in Priority]},
        "foreground starts at once; background jobs run high > normal > low (SetPriority).",
        Priority.LOW.value,
        CliOption(_opt("priority"), "P", "[bitsadmin /setpriority]", parse_choice),
    ),
    Property(
        "min_retry_delay",
        {"type": "integer", "minimum": 5},
        "Seconds to wait after a transient error before retrying, at least 5 "
        "(SetMinimumRetryDelay).",
        60,
        CliOption(
            _opt("min_retry_delay"),
            "SEC",
            "Wait after a transient error before retrying (min 5). [/setminretrydelay]",
            parse_int,
        ),
    ),
    Property(
        "no_progress_timeout",
        {"type": "integer", "minimum": 0},
        "Seconds without progress after which a transient error becomes ERROR; 0: no "
        "retries (SetNoProgressTimeout).",
        3600,
        CliOption(
            _opt("no_progress_timeout"),
            "SEC",
            "Give up (ERROR) after this long without progress; 0: no retries. "
            "[/setnoprogresstimeout]",
            parse_int,
        ),
    ),
    Property(
        "notify_flags",
        {"type": "integer", "minimum": 0, "maximum": int(NotifyFlags.all())},
        "BG_NOTIFY_*: JOB_TRANSFERRED 0x1, JOB_ERROR 0x2, DISABLE 0x4, JOB_MODIFICATION 0x8, "
        "FILE_TRANSFERRED 0x10 (SetNotifyFlags).",
        int(NotifyFlags.JOB_TRANSFERRED | NotifyFlags.JOB_MODIFICATION),
        CliOption(
            _opt("notify_flags"),
            "FLAGS",
            "A number (0x3) or names joined by commas: JOB_TRANSFERRED, JOB_ERROR, DISABLE, "
            "JOB_MODIFICATION, FILE_TRANSFERRED. [/setnotifyflags]",
            parse_notify_flags,
        ),
        to_wire=lambda v: int(v) if isinstance(v, int) and not isinstance(v, bool) else v,
    ),
    Property(
        "notify_cmdline",
        _ARGV,
        "Program (absolute path) and arguments run as the owner on notification; null or [] "
        "clears (SetNotifyCmdLine).",
        ["/bin/echo", "two words"],
        CliOption(
            _opt("notify_cmdline"),
            "'PROGRAM ARGS...'",
            "Run as the job owner on notification (split like a shell; '' clears). "
            "[/setnotifycmdline]",
            lambda text: shlex.split(text) or None,
            format_argv,
        ),
        to_wire=argv_value,
    ),
    Property(
        "dynamic_content",
        {"type": "boolean"},
        "The server's content is generated: no Content-Length needed, never resumed "
        "(BITS_JOB_PROPERTY_DYNAMIC_CONTENT).",
        True,
        CliOption(
            _opt("dynamic_content"),
            help="Content without a size (no Content-Length), fetched whole, never resumed. "
            "[BITS_JOB_PROPERTY_DYNAMIC_CONTENT]",
        ),
    ),
)

PROPERTY_BY_NAME: Mapping[str, Property] = {p.name: p for p in PROPERTIES}
SETTABLE_PROPERTIES = frozenset(PROPERTY_BY_NAME)


# ---- actions, interfaces, files -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Action:
    """A state change: POST /v1/jobs/JOB/NAME (and, ``via_handle``, /v1/handles/H/NAME).
    Answers ``{"result": {"code", "hresult"}, "job"}``."""

    name: str
    summary: str
    bitsadmin: str
    via_handle: bool = True

    @property
    def operation(self) -> str:
        return self.name.replace("-", "_")

    @property
    def handle_operation(self) -> str:
        return "handle_" + self.operation


ACTIONS: tuple[Action, ...] = (
    Action("resume", "Queue the job for transfer", "/resume"),
    Action("suspend", "Stop transferring", "/suspend"),
    Action("cancel", "Delete temporary files; the job becomes CANCELLED", "/cancel"),
    Action("complete", "Publish transferred files; the job becomes ACKNOWLEDGED", "/complete"),
    Action("take-ownership", "Make the caller the owner", "/takeownership", via_handle=False),
)
ACTION_BY_NAME: Mapping[str, Action] = {a.name: a for a in ACTIONS}

# What a handle may be opened for (QueryInterface, SPEC §4.3).
INTERFACES: tuple[str, ...] = ("job", "token-options")
MAX_HANDLE_TTL = 3600

SHA256_PATTERN = "^[0-9a-fA-F]{64}$"


@dataclass(frozen=True, slots=True)
class FileField:
    """A field of one entry of POST /v1/jobs/JOB/files."""

    name: str
    schema: Mapping[str, Any]
    required: bool
    description: str


FILE_FIELDS: tuple[FileField, ...] = (
    FileField("remote_name", _STR, True, "http://, https:// or file:// URL"),
    FileField("local_name", _STR, True, "absolute path; its directory must exist"),
    FileField(
        "sha256",
        {"type": ["string", "null"], "pattern": SHA256_PATTERN},
        False,
        "expected SHA-256 of the whole file (64 hex digits); a mismatch fails the job with "
        "BG_E_VALIDATION_FAILED",
    ),
)
FILE_FIELD_NAMES = frozenset(f.name for f in FILE_FIELDS)
REQUIRED_FILE_FIELDS = frozenset(f.name for f in FILE_FIELDS if f.required)

# The event stream's event names (the callback interface, docs/architecture.md).
EVENT_TYPES: tuple[str, ...] = (
    "job-snapshot",
    "job-modification",
    "job-transferred",
    "job-error",
    "file-transferred",
    "job-removed",
)


# ---- the JSON objects (what protocol/views.py produces) --------------------------------


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(props: Mapping[str, Any], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """A closed object: every property required (but ``optional``), no others allowed, so a
    field the views add without the contract knowing fails the schema tests."""
    return {
        "type": "object",
        "required": [k for k in props if k not in optional],
        "properties": dict(props),
        "additionalProperties": False,
    }


_NULLABLE_INT = {"type": ["integer", "null"], "minimum": 0}
_COUNT = {"type": "integer", "minimum": 0}
_TIME = {"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$"}
_NULLABLE_TIME = {"type": ["string", "null"], "pattern": _TIME["pattern"]}
_HRESULT = {"type": "string", "pattern": "^0x[0-9A-F]{8}$"}
_CONTEXT = {"type": "string", "enum": [c.value for c in ErrorContext]}
_SID = {"type": "string", "pattern": r"^S-1-22-1-\d+$"}
_NAMES_PAIR = _obj({"remote_name": _STR, "local_name": _STR})

JOB_SCHEMA: dict[str, Any] = _obj(
    {
        "id": {"type": "string", "format": "uuid"},
        **{p.name: dict(p.schema) for p in PROPERTIES},
        "type": {"type": "string", "enum": [t.value for t in JobType]},
        "state": {"type": "string", "enum": [s.value for s in JobState]},
        "owner": _obj({"sid": _SID, "uid": _COUNT, "name": {"type": ["string", "null"]}}),
        "progress": _obj(
            {
                "bytes_total": _NULLABLE_INT,
                "bytes_transferred": _COUNT,
                "files_total": _COUNT,
                "files_transferred": _COUNT,
            }
        ),
        "times": _obj(
            {"created": _TIME, "modified": _TIME, "transfer_completed": _NULLABLE_TIME}
        ),
        "error": {
            "oneOf": [
                {"type": "null"},
                _obj(
                    {
                        "code": _STR,
                        "hresult": _HRESULT,
                        "context": _CONTEXT,
                        "description": _STR,
                        "file": {"oneOf": [{"type": "null"}, _NAMES_PAIR]},
                    }
                ),
            ]
        },
        "error_count": _COUNT,
        "helper_token": {
            "oneOf": [
                {"type": "null"},
                _obj(
                    {
                        "sid": {"type": ["string", "null"], "pattern": _SID["pattern"]},
                        "flags": {
                            "type": "array",
                            "items": {"enum": [f.name for f in TokenFlags]},
                        },
                    }
                ),
            ]
        },
        "notification": {
            "description": "how the last notify_cmdline run went",
            "oneOf": [
                {"type": "null"},
                _obj(
                    {
                        "last_event": {"enum": ["JOB_TRANSFERRED", "JOB_ERROR"]},
                        "state": {"enum": ["PENDING", "DELIVERED", "FAILED"]},
                        "attempts": _COUNT,
                        "error": {
                            "oneOf": [
                                {"type": "null"},
                                _obj(
                                    {
                                        "code": _STR,
                                        "hresult": _HRESULT,
                                        "context": _CONTEXT,
                                        "description": _STR,
                                    }
                                ),
                            ]
                        },
                    }
                ),
            ],
        },
        "retry_at": dict(_NULLABLE_TIME, description="next retry (TRANSIENT_ERROR)"),
    }
)

FILE_SCHEMA: dict[str, Any] = _obj(
    {
        "remote_name": _STR,
        "local_name": _STR,
        "bytes_total": _NULLABLE_INT,
        "bytes_transferred": _COUNT,
        "completed": {"type": "boolean"},
        "final_url": {"type": ["string", "null"], "description": "after redirects"},
        "sha256": {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$"},
    }
)

ERROR_SCHEMA: dict[str, Any] = _obj(
    {"error": _obj({"code": _STR, "hresult": _HRESULT, "message": _STR})}
)

EVENT_SCHEMA: dict[str, Any] = _obj(
    {
        "type": {"enum": list(EVENT_TYPES)},
        "job_id": _STR,
        "job": _ref("Job"),
    }
)

RESULT_SCHEMA: dict[str, Any] = _obj(
    {"result": _obj({"code": _STR, "hresult": _HRESULT}), "job": _ref("Job")}
)
HANDLE_SCHEMA: dict[str, Any] = _obj(
    {
        "handle": _STR,
        "interface": {"enum": list(INTERFACES)},
        "job_id": _STR,
        "expires_in": {"type": ["integer", "null"]},
        "job": _ref("Job"),
    },
    optional=("expires_in", "job"),
)
HELPER_SCHEMA: dict[str, Any] = _obj(
    {
        "flags": {"type": "array", "items": {"enum": [f.name for f in TokenFlags]}},
        "flags_value": {"type": "integer", "minimum": 0, "maximum": int(TokenFlags.all())},
        "sid": {"type": ["string", "null"]},
    }
)
STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["version", "mode", "pid", "caller"],
    "properties": {
        "version": _STR,
        "mode": {"enum": ["system", "user"]},
        "pid": _INT,
        "jobs": _COUNT,
        "caller": {"type": "object", "required": ["sid", "uid"]},
    },
}

SCHEMAS: Mapping[str, Mapping[str, Any]] = {
    "Job": JOB_SCHEMA,
    "File": FILE_SCHEMA,
    "Error": ERROR_SCHEMA,
    "Event": EVENT_SCHEMA,
    "ActionResult": RESULT_SCHEMA,
    "Handle": HANDLE_SCHEMA,
    "HelperToken": HELPER_SCHEMA,
    "Status": STATUS_SCHEMA,
}


# ---- routes ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BodyField:
    schema: Mapping[str, Any]
    required: bool = False


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
    return _obj({key: {"type": "array", "items": item}})


def _helper_routes(base: str, prefix: str) -> tuple[Route, ...]:
    helper = _ref("HelperToken")
    return (
        Route("GET", base + "/helper-token", f"{prefix}_get_helper_token",
              "GetHelperTokenFlags and GetHelperTokenSid", response=helper),
        Route("PUT", base + "/helper-token", f"{prefix}_set_helper_token",
              "SetHelperToken: the identity of this connection becomes the helper token",
              body={}, response=helper),
        Route("DELETE", base + "/helper-token", f"{prefix}_clear_helper_token",
              "ClearHelperToken", response=helper),
        Route("PUT", base + "/helper-token/flags", f"{prefix}_set_helper_token_flags",
              "SetHelperTokenFlags (LOCAL_FILE 0x1, NETWORK 0x2; 0 clears)",
              body={"flags": BodyField(HELPER_SCHEMA["properties"]["flags_value"], True)},
              response=helper),
    )  # fmt: skip


ROUTES: tuple[Route, ...] = (
    Route("GET", f"{API_PREFIX}/openapi.json", "openapi", "This document"),
    Route("GET", f"{API_PREFIX}/status", "status", "Daemon status and the caller's identity",
          response=_ref("Status")),
    Route("GET", f"{API_PREFIX}/jobs", "list_jobs", "List the caller's jobs (admins: all users')",
          query={"all_users": "boolean"}, response=_list_of("jobs", _ref("Job"))),
    Route("POST", f"{API_PREFIX}/jobs", "create_job", "Create a job (it starts SUSPENDED)",
          body={
              "display_name": BodyField(PROPERTY_BY_NAME["display_name"].schema, True),
              "type": BodyField({"type": "string", "enum": [t.value for t in JobType]}),
              "priority": BodyField(PROPERTY_BY_NAME["priority"].schema),
              "description": BodyField(PROPERTY_BY_NAME["description"].schema),
          },
          response=_ref("Job"), status=201),
    Route("GET", JOB_PATH, "get_job", "One job", response=_ref("Job")),
    Route("PATCH", JOB_PATH, "set_job", "Change job properties",
          body={p.name: BodyField(p.schema) for p in PROPERTIES}, response=_ref("Job")),
    Route("GET", JOB_PATH + "/files", "list_files", "The job's files",
          response=_list_of("files", _ref("File"))),
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
          response=_ref("Job")),
    *(Route("POST", f"{JOB_PATH}/{a.name}", a.operation, a.summary, body={},
            response=_ref("ActionResult")) for a in ACTIONS),
    Route("POST", JOB_PATH + "/handles", "open_handle",
          "Open the job for an interface: the access check happens now",
          body={
              "interface": BodyField({"type": "string", "enum": list(INTERFACES)}, True),
              "ttl": BodyField({"type": "integer", "minimum": 1, "maximum": MAX_HANDLE_TTL}),
          },
          response=_ref("Handle"), status=201),
    Route("GET", HANDLE_PATH, "get_handle", "The handle's job", response=_ref("Handle")),
    Route("DELETE", HANDLE_PATH, "release_handle", "Release a handle",
          response=_obj({"released": {"const": True}})),
    *(Route("POST", f"{HANDLE_PATH}/{a.name}", a.handle_operation,
            f"{a.name} through a job handle (no new access check)", body={},
            response=_ref("ActionResult")) for a in ACTIONS if a.via_handle),
    *_helper_routes(JOB_PATH, "job"),
    *_helper_routes(HANDLE_PATH, "handle"),
    Route("POST", f"{API_PREFIX}/logoff", "logoff",
          "Declare a user or a login session logged off now (administrators)",
          body={
              "user": BodyField({"type": ["string", "integer"]}),
              "session": BodyField(_INT),
          },
          response={"type": "object", "required": ["logged_off", "ended_sessions"]}),
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
