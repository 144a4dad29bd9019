"""Validation of what ferryd sends against the schemas of its OpenAPI document (the
contract's, ``ferry.protocol``), instead of hand-written shape checks that drift from it."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

import jsonschema_rs

from ferry.protocol.openapi import openapi_document


@functools.cache
def document() -> dict[str, Any]:
    return openapi_document()


@functools.cache
def _validator(schema_json: str) -> Any:
    root = {**json.loads(schema_json), "components": document()["components"]}
    return jsonschema_rs.Draft202012Validator(root, validate_formats=True)


def _check(schema: Mapping[str, Any], instance: Any, what: str) -> None:
    validator = _validator(json.dumps(schema, sort_keys=True))
    errors = [f"  at {list(e.instance_path)}: {e.message}" for e in validator.iter_errors(instance)]
    assert not errors, f"{what} does not match its schema:\n" + "\n".join(errors[:20])


def assert_valid(component: str, instance: Any) -> None:
    """``instance`` is a valid ``#/components/schemas/<component>`` (Job, File, Event…)."""
    _check({"$ref": f"#/components/schemas/{component}"}, instance, component)


def assert_response(method: str, path: str, status: int, body: Any) -> None:
    """The answer of the route ``method path`` (its templated path) is the documented one:
    that status, and a body of that status's schema."""
    op = document()["paths"][path][method.lower()]
    assert str(status) in op["responses"], (method, path, status, body)
    content = op["responses"][str(status)]["content"]
    if "application/json" not in content:
        # A text answer (the metrics): one documented media type, a string schema.
        ((_media, spec),) = content.items()
        assert isinstance(body, bytes), (method, path, body)
        _check(spec["schema"], body.decode(), f"{method} {path}")
        return
    schema = content["application/json"]["schema"]
    _check(schema, body, f"{method} {path}")
