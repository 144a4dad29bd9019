"""Bugs the torture run's API fuzzing (harness/hostile.py, harness/apifuzz.py) found in
ferryd, each reproduced against a real ferryd."""

from __future__ import annotations

import json
import re

from harness.ferryd import Daemon
from harness.hostile import raw_exchange


def _answer(reply: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, headers, body


def _bits_error(reply: bytes, status: int, code: str, hresult: str) -> str:
    got, headers, body = _answer(reply)
    assert got == status, reply[:300]
    assert headers["content-type"].startswith("application/json"), headers
    err = json.loads(body)["error"]
    assert (err["code"], err["hresult"]) == (code, hresult), err
    assert re.fullmatch(r"0x[0-9A-F]{8}", err["hresult"])
    return str(err["message"])


def test_request_line_past_the_limit_is_a_bits_error(ferryd: Daemon) -> None:
    """A URL longer than aiohttp's 8,190-byte line limit (e.g. a long display name as the
    job reference) was answered with aiohttp's text/plain 400, not an error body."""
    reply = raw_exchange(ferryd.socket, None,
                         b"GET /v1/jobs/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    message = _bits_error(reply, 400, "E_INVALIDARG", "0x80070057")
    assert len(message) < 400  # the request line is not echoed whole


def test_header_past_the_limit_is_a_bits_error(ferryd: Daemon) -> None:
    reply = raw_exchange(ferryd.socket, None, b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-A: "
                         + b"b" * 20_000 + b"\r\n\r\n")
    _bits_error(reply, 400, "E_INVALIDARG", "0x80070057")


def test_every_path_parameter_is_declared() -> None:
    """DELETE /v1/jobs/{job}/credentials/{target}/{scheme} named two parameters the
    OpenAPI document did not declare (schemathesis then sent the braces literally)."""
    from ferry.protocol.openapi import openapi_document

    for path, methods in openapi_document()["paths"].items():
        named = set(re.findall(r"\{(\w+)\}", path))
        for method, op in methods.items():
            declared = {p["name"] for p in op.get("parameters", ()) if p["in"] == "path"}
            assert declared == named, f"{method.upper()} {path}: declares {sorted(declared)}"
