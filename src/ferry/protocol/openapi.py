"""The OpenAPI 3.1 document of ferryd's API, generated from the contract (``routes.py``,
``schemas.py``, ``contract.py``): ferryd serves it at /v1/openapi.json, and the tests
validate every answer they see against its schemas, so the document cannot drift from what
is served."""

from __future__ import annotations

from typing import Any

from .._version import __version__
from .contract import API_VERSION, PROPERTIES
from .routes import ROUTES, Route
from .schemas import SCHEMAS

_STR = {"type": "string"}
_JOB_PARAM = {
    "name": "job",
    "in": "path",
    "required": True,
    "schema": _STR,
    "description": "job id, or a display name unique among the caller's jobs",
}
_HANDLE_PARAM = {"name": "handle", "in": "path", "required": True, "schema": _STR}
_INDEX_PARAM = {
    "name": "index",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 0},
    "description": "the file's index in the job, from 0",
}
# RemoveCredentials' entry (found missing by the API fuzzing: the path named parameters the
# document did not declare).
_TARGET_PARAM = {
    "name": "target",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "SERVER or PROXY",
}
_SCHEME_PARAM = {
    "name": "scheme",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "BASIC, DIGEST, NTLM or NEGOTIATE",
}
_ERROR_RESPONSE = {
    "description": "a BITS error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def _operation(r: Route) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": r.name, "summary": r.summary}
    params: list[dict[str, Any]] = []
    if "{job}" in r.path:
        params.append(_JOB_PARAM)
    if "{handle}" in r.path:
        params.append(_HANDLE_PARAM)
    if "{index}" in r.path:
        params.append(_INDEX_PARAM)
    if "{target}" in r.path:
        params.append(_TARGET_PARAM)
    if "{scheme}" in r.path:
        params.append(_SCHEME_PARAM)
    params += [
        {"name": q, "in": "query", "required": False, "schema": {"type": t}}
        for q, t in r.query.items()
    ]
    if params:
        op["parameters"] = params
    if r.body is not None:
        schema: dict[str, Any] = {
            "type": "object",
            "additionalProperties": False,
            "required": [k for k, f in r.body.items() if f.required],
            "properties": {k: dict(f.schema) for k, f in r.body.items()},
        }
        if r.name == "set_job":
            schema["example"] = {p.name: p.example for p in PROPERTIES}
            for p in PROPERTIES:
                schema["properties"][p.name]["description"] = p.description
        op["requestBody"] = {
            "required": r.method == "POST" and any(f.required for f in r.body.values()),
            "content": {"application/json": {"schema": schema}},
        }
    ok_type = r.media or ("text/event-stream" if r.stream else "application/json")
    op["responses"] = {
        str(r.status): {
            "description": "success",
            "content": {ok_type: {"schema": dict(r.response) or {"type": "object"}}},
        },
        "default": _ERROR_RESPONSE,
    }
    return op


def openapi_document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for r in ROUTES:
        paths.setdefault(r.path, {})[r.method.lower()] = _operation(r)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ferryd API",
            "version": __version__,
            "x-api-version": API_VERSION,
        },
        "paths": paths,
        "components": {"schemas": {k: dict(v) for k, v in SCHEMAS.items()}},
    }
