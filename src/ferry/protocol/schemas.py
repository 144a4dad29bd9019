"""The JSON objects of the API (SPEC §6 and beyond): the job, file, event, error and answer
schemas that ``protocol/views.py`` produces, the OpenAPI document publishes as components,
and the tests validate every answer against. Closed objects: a field the views add without
the contract knowing fails the tests. The settable properties' schemas are the contract's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..model.httpopts import SECURITY_FLAGS
from ..model.types import ErrorContext, JobState, JobType, TokenFlags
from .contract import EVENT_TYPES, INTERFACES, PROPERTIES, RANGE_SCHEMA

_STR: Mapping[str, Any] = {"type": "string"}
_INT: Mapping[str, Any] = {"type": "integer"}


def ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def closed(props: Mapping[str, Any], optional: tuple[str, ...] = ()) -> dict[str, Any]:
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
_NAMES_PAIR = closed({"remote_name": _STR, "local_name": _STR})

# IBackgroundCopyJobHttpOptions (SPEC §8.3): read in the job object, set through
# PATCH /v1/jobs/JOB/http-options (routes.py).
HTTP_OPTIONS_FIELDS: dict[str, Any] = {
    "custom_headers": {
        "description": "'Name: value' lines; null when none; \"(write-only)\" once made "
        "write-only (never returned again)",
        "oneOf": [
            {"type": "array", "items": _STR},
            {"type": "null"},
            {"type": "string", "const": "(write-only)"},
        ],
    },
    "custom_headers_write_only": {"type": "boolean"},
    "client_certificate": {
        "oneOf": [
            {"type": "null"},
            closed({"cert": _STR, "key": {"type": ["string", "null"]}}),
        ],
        "description": "PEM paths, read as the owner when a transfer starts",
    },
    "security_flags": {"type": "array", "items": {"type": "string", "enum": list(SECURITY_FLAGS)}},
    "http_method": {"type": "string", "minLength": 1},
}

JOB_SCHEMA: dict[str, Any] = closed(
    {
        "id": {"type": "string", "format": "uuid"},
        **{p.name: dict(p.schema) for p in PROPERTIES},
        "type": {"type": "string", "enum": [t.value for t in JobType]},
        "state": {"type": "string", "enum": [s.value for s in JobState]},
        "owner": closed({"sid": _SID, "uid": _COUNT, "name": {"type": ["string", "null"]}}),
        "progress": closed(
            {
                "bytes_total": _NULLABLE_INT,
                "bytes_transferred": _COUNT,
                "files_total": _COUNT,
                "files_transferred": _COUNT,
            }
        ),
        "times": closed(
            {"created": _TIME, "modified": _TIME, "transfer_completed": _NULLABLE_TIME}
        ),
        "error": {
            "oneOf": [
                {"type": "null"},
                closed(
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
                closed(
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
                closed(
                    {
                        "last_event": {"enum": ["JOB_TRANSFERRED", "JOB_ERROR"]},
                        "state": {"enum": ["PENDING", "DELIVERED", "FAILED"]},
                        "attempts": _COUNT,
                        "error": {
                            "oneOf": [
                                {"type": "null"},
                                closed(
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
        "reply": {
            "description": "upload-reply jobs: the reply file and how much of the reply "
            "has arrived (null for other jobs)",
            "oneOf": [
                {"type": "null"},
                closed(
                    {
                        "file": {"type": ["string", "null"]},
                        "bytes_total": _NULLABLE_INT,
                        "bytes_transferred": _COUNT,
                    }
                ),
            ],
        },
        # SPEC §10
        "download_time": {
            "type": "number",
            "minimum": 0,
            "description": "seconds spent connecting/transferring since creation or the last "
            "resume (counted against max_download_time)",
        },
        "waiting": {
            "description": "why a QUEUED job does not run now (cost policy, offline, owner "
            "logged off, bandwidth policy), and until when if known",
            "oneOf": [
                {"type": "null"},
                closed(
                    {
                        "code": _STR,
                        "hresult": _HRESULT,
                        "description": _STR,
                        "until": _NULLABLE_TIME,
                    }
                ),
            ],
        },
        **HTTP_OPTIONS_FIELDS,
    }
)

REPLY_SCHEMA: dict[str, Any] = closed(
    {
        "size": _COUNT,
        "data": {"type": "string", "contentEncoding": "base64"},
    }
)

FILE_SCHEMA: dict[str, Any] = closed(
    {
        "remote_name": _STR,
        "local_name": _STR,
        "bytes_total": _NULLABLE_INT,
        "bytes_transferred": _COUNT,
        "completed": {"type": "boolean"},
        "final_url": {"type": ["string", "null"], "description": "after redirects"},
        "sha256": {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$"},
        "response_headers": {
            "type": ["string", "null"],
            "description": "status line and headers of the last HTTP response, CRLF-separated",
        },
        "ranges": {
            "type": ["array", "null"],
            "items": RANGE_SCHEMA,
            "description": "AddFileWithRanges' ranges, sorted by offset; null: the whole file",
        },
    }
)

ERROR_SCHEMA: dict[str, Any] = closed(
    {"error": closed({"code": _STR, "hresult": _HRESULT, "message": _STR})}
)

EVENT_SCHEMA: dict[str, Any] = closed(
    {
        "type": {"enum": list(EVENT_TYPES)},
        "job_id": _STR,
        "job": ref("Job"),
    }
)

RESULT_SCHEMA: dict[str, Any] = closed(
    {"result": closed({"code": _STR, "hresult": _HRESULT}), "job": ref("Job")}
)
HANDLE_SCHEMA: dict[str, Any] = closed(
    {
        "handle": _STR,
        "interface": {"enum": list(INTERFACES)},
        "job_id": _STR,
        "expires_in": {"type": ["integer", "null"]},
        "job": ref("Job"),
    },
    optional=("expires_in", "job"),
)
HELPER_SCHEMA: dict[str, Any] = closed(
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
# The answer of POST /v1/shutdown, sent before ferryd begins to stop.
SHUTDOWN_SCHEMA: dict[str, Any] = closed({"stopping": {"const": True}})

# ---- credentials (SPEC §8.2): what clients see of them; passwords are write-only ----------
CREDENTIAL_SCHEMA: dict[str, Any] = closed(
    {
        "target": {"enum": ["SERVER", "PROXY"]},
        "scheme": {"enum": ["BASIC", "DIGEST", "NTLM", "NEGOTIATE"]},
        "user": {"type": ["string", "null"]},
        "implicit": {
            "type": "boolean",
            "description": "no user and password: the acting network identity's Kerberos "
            "credentials answer (NTLM/NEGOTIATE)",
        },
    }
)
JOB_SCHEMA["properties"]["credentials"] = {
    "type": "array",
    "items": ref("Credential"),
    "description": "SetCredentials entries, one per (target, scheme); never the password",
}
JOB_SCHEMA["properties"]["credential_warnings"] = {
    "type": "array",
    "items": _STR,
    "description": "e.g. a Basic password that would cross plain http",
}
JOB_SCHEMA["required"] += ["credentials", "credential_warnings"]

# The answer of GET /v1/fleet (fleet mode, docs/fleet.md). Times are epoch seconds.
FLEET_WORKER_SCHEMA: dict[str, Any] = closed(
    {
        "id": _STR,
        "host": _STR,
        "pid": _INT,
        "socket": _STR,
        "lease_seconds": {"type": "number"},
        "started": {"type": "number"},
        "heartbeat": {"type": "number"},
        "heartbeat_age": {"type": "number"},
        "alive": {"type": "boolean"},
        "leases": _COUNT,
        "self": {"type": "boolean"},
    }
)
FLEET_LEASE_SCHEMA: dict[str, Any] = closed(
    {
        "job_id": _STR,
        "worker": _STR,
        "epoch": _INT,
        "expires": {"type": ["number", "null"]},
        "expires_in": {"type": ["number", "null"]},
        "state": _STR,
        "owner_uid": _INT,
    }
)
FLEET_SCHEMA: dict[str, Any] = closed(
    {
        "worker": _STR,
        "lease_seconds": {"type": "number"},
        "workers": {"type": "array", "items": FLEET_WORKER_SCHEMA},
        "leases": {"type": "array", "items": FLEET_LEASE_SCHEMA},
    }
)

# GET /v1/network (SPEC §10).
_RATE = {"type": ["integer", "null"], "minimum": 1}
_PRIORITY_RATES = {"type": "object", "additionalProperties": {"type": ["integer", "null"]}}
NETWORK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["cost", "cost_source", "cost_state", "networkmanager", "bandwidth"],
    "properties": {
        "cost": {"enum": ["unrestricted", "metered", "roaming"]},
        "cost_source": _STR,
        "cost_state": {"type": "integer", "description": "the BITS_COST_STATE_* value"},
        "configured_cost": _STR,
        "override": {"type": ["string", "null"]},
        "networkmanager": {"type": "object"},
        "routes": {"type": "object"},
        "bandwidth": {
            "type": "object",
            "properties": {
                "period": {"enum": ["none", "work", "non-work", "maintenance"]},
                "background_limit": _RATE,
                "priority_limits": _PRIORITY_RATES,
                "yield_limits": _PRIORITY_RATES,
                "measured": {
                    "type": "object",
                    "description": "bytes/s per priority over the last 2 s",
                    "additionalProperties": {"type": "number"},
                },
            },
        },
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
    "Shutdown": SHUTDOWN_SCHEMA,
    "Credential": CREDENTIAL_SCHEMA,
    "Reply": REPLY_SCHEMA,
    "Fleet": FLEET_SCHEMA,
    "Network": NETWORK_SCHEMA,
}
