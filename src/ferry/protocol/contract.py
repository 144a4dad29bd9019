"""The API contract, written once: what clients may set, do and send. With ``schemas.py``
(the JSON objects) and ``routes.py`` (the operations) it is ``ferry.protocol``; ferryd's
routes and request bodies, the OpenAPI document (``openapi.py``), the clients' requests and
the ``ferry`` command's options all derive from these tables, so none of them can drift
from another.

Adding a job property is one ``Property`` entry in ``PROPERTIES`` (its wire schema, an
example, how ``ferry set`` spells and parses it) plus its behaviour in the domain
(``Job.set_properties`` validates its meaning, ``Job`` keeps it). The PATCH body, the job
object's schema and view, ``Job.set(...)`` of both clients and ``ferry set --OPTION`` follow.

Kept light to import (the CLI's start-up time matters): the standard library,
``ferry.errors`` and ``ferry.model.types`` only; no aiohttp, click or rich, nothing of the
daemon. The same holds for the whole package.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..model.network import COST_PRESETS, parse_rate
from ..model.types import NotifyFlags, Priority

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

_PLAIN = frozenset({str, int, float, bool})


def wire_value(value: Any) -> Any:
    """Enums travel as their wire spelling, IntFlags as plain ints."""
    if value is None or type(value) in _PLAIN:  # most values: no attribute lookups
        return value
    if isinstance(value, Enum):
        return value._value_  # what ``.value`` returns, without the enum's descriptor
    to_json = getattr(value, "to_json", None)
    if callable(to_json) and not isinstance(value, type):
        return to_json()
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


def parse_max_rate(text: str) -> int | None:
    """``ferry set --max-rate``: bytes/s (``500000``, ``500k``, ``2M``); ``none`` or ``0``
    removes the cap."""
    if text.strip().lower() in ("none", "0", "off", "unlimited"):
        return None
    return parse_rate(text, "--max-rate")


def format_rate(value: Any) -> str:
    return "none" if value is None else f"{value} B/s"


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

# ---- network properties (SPEC §8) ------------------------------------------------------------

PROXY_USAGES: tuple[str, ...] = ("PRECONFIG", "NO_PROXY", "OVERRIDE", "AUTODETECT")
_STR_LIST_OR_NULL: Mapping[str, Any] = {"type": ["array", "null"], "items": _STR}
PROXY_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "required": ["usage", "list", "bypass"],
    "properties": {
        "usage": {"type": "string", "enum": list(PROXY_USAGES)},
        "list": _STR_LIST_OR_NULL,
        "bypass": _STR_LIST_OR_NULL,
    },
    "additionalProperties": False,
}


def proxy_wire(value: Any) -> Any:
    """A proxy setting as the wire wants it: ProxySettings-like objects by their JSON, a
    usage given alone as a string, lists given as one string split at blanks and commas."""
    value = wire_value(value)
    if isinstance(value, str):
        return {"usage": value.upper(), "list": None, "bypass": None}
    if isinstance(value, Mapping):
        out = dict(value)
        usage = out.get("usage")
        if isinstance(usage, Enum):
            usage = usage.value
        if isinstance(usage, str):
            out["usage"] = usage.upper()
        for key in ("list", "bypass"):
            item = out.get(key)
            if isinstance(item, str):
                out[key] = [p for p in item.replace(",", " ").split() if p] or None
            elif isinstance(item, list | tuple):
                out[key] = list(item) or None
        out.setdefault("list", None)
        out.setdefault("bypass", None)
        return out
    return value


def parse_json_object(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None


NETWORK_PROPERTIES: tuple[Property, ...] = (
    Property(
        "proxy",
        PROXY_SCHEMA,
        "How the job reaches HTTP servers (SetProxySettings): usage PRECONFIG (ferryd's "
        "configured proxy, else its http_proxy/https_proxy/no_proxy), NO_PROXY, OVERRIDE "
        "(list: proxies tried in order; bypass: host, .suffix, IP, CIDR, <local>) or "
        "AUTODETECT (PAC, else PRECONFIG). list and bypass only with OVERRIDE.",
        {
            "usage": "OVERRIDE",
            "list": ["http://proxy.example:3128"],
            "bypass": ["<local>", ".internal.example", "10.0.0.0/8"],
        },
        CliOption(
            _opt("proxy"),
            "JSON",
            "All proxy settings as one JSON object {usage, list, bypass} (or use "
            "--proxy-usage, --proxy-list, --proxy-bypass).",
            parse_json_object,
            lambda v: json.dumps(v),
        ),
        to_wire=proxy_wire,
    ),
)
PROPERTIES = PROPERTIES + NETWORK_PROPERTIES
# SPEC §10: bandwidth and network conditions.
PROPERTIES += (
    Property(
        "max_rate",
        {"type": ["integer", "null"], "minimum": 1},
        "The job's own bandwidth cap in bytes per second, at every priority; null: none "
        "(the daemon's [bandwidth] policy still applies to background jobs).",
        1_000_000,
        CliOption(
            _opt("max_rate"),
            "BYTES",
            "Cap this job at BYTES per second (500000, 500k, 2M; 'none' removes the cap).",
            parse_max_rate,
            format_rate,
        ),
    ),
    Property(
        "max_download_time",
        {"type": "integer", "minimum": 0},
        "Seconds the job may spend connecting and transferring before it fails with "
        "BG_E_MAXDOWNLOAD_TIMEOUT; resume starts the count again; 0: no limit "
        "(BITS_JOB_PROPERTY_MAX_DOWNLOAD_TIME, default 7776000 = 90 days).",
        86_400,
        CliOption(
            _opt("max_download_time"),
            "SEC",
            "Fail with BG_E_MAXDOWNLOAD_TIMEOUT after SEC seconds of transferring (0: never). "
            "[BITS_JOB_PROPERTY_MAX_DOWNLOAD_TIME]",
            parse_int,
        ),
    ),
    Property(
        "cost_flags",
        {"type": ["string", "integer"]},
        "The network costs the job may transfer on (BITS_JOB_PROPERTY_ID_COST_FLAGS): a preset "
        f"({', '.join(COST_PRESETS)}) or BITS_COST_STATE names joined by |; read back as the "
        "preset's name when it is one. Default TRANSFER_STANDARD (not roaming, not over cap).",
        "TRANSFER_UNRESTRICTED",
        CliOption(
            _opt("cost_flags"),
            "FLAGS",
            "TRANSFER_STANDARD, TRANSFER_NO_SURCHARGE, TRANSFER_NOT_ROAMING, "
            "TRANSFER_UNRESTRICTED, TRANSFER_ALWAYS, or names such as UNRESTRICTED|USAGE_BASED. "
            "[BITS_JOB_PROPERTY_ID_COST_FLAGS]",
            lambda text: text.strip().upper(),
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


# One byte range of AddFileWithRanges (model/ranges.py): offset and length, or "eof".
RANGE_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "required": ["offset", "length"],
    "properties": {
        "offset": {"type": "integer", "minimum": 0},
        "length": {"oneOf": [{"type": "integer", "minimum": 1}, {"const": "eof"}]},
    },
    "additionalProperties": False,
}


@dataclass(frozen=True, slots=True)
class FileField:
    """A field of one entry of POST /v1/jobs/JOB/files."""

    name: str
    schema: Mapping[str, Any]
    required: bool
    description: str


FILE_FIELDS: tuple[FileField, ...] = (
    FileField(
        "remote_name", _STR, True,
        "http://, https:// or file:// URL; a plain absolute path means its file:// URL",
    ),
    FileField("local_name", _STR, True, "absolute path; its directory must exist"),
    FileField(
        "sha256",
        {"type": ["string", "null"], "pattern": SHA256_PATTERN},
        False,
        "expected SHA-256 of the whole file (64 hex digits); a mismatch fails the job with "
        "BG_E_VALIDATION_FAILED",
    ),
    FileField(
        "ranges",
        {"type": ["array", "null"], "minItems": 1, "items": RANGE_SCHEMA},
        False,
        "AddFileWithRanges: only these byte ranges of the remote file, each written into the "
        "local file at its own offset (the rest are holes); length 'eof' means to the end. "
        "Overlaps: BG_E_OVERLAPPING_RANGES; a zero length or bad offset: BG_E_INVALID_RANGE "
        "(also when the server's file is shorter); a server without ranges fails the job "
        "with BG_E_INSUFFICIENT_RANGE_SUPPORT. Not with sha256.",
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
