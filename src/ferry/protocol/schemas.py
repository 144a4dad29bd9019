"""The JSON objects of the API (SPEC §6 and beyond): the job, file, event, error and answer
schemas that ``protocol/views.py`` produces, the OpenAPI document publishes as components,
and the tests validate every answer against. Closed objects: a field the views add without
the contract knowing fails the tests. The settable properties' schemas are the contract's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
}
