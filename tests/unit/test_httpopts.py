"""The pure checks of a job's HTTP options (SPEC §8.3) and Job.set_http_options' all-or-none
rule."""

from __future__ import annotations

import pytest

from ferry.errors import FerryError
from ferry.model.httpopts import (
    ClientCertificate,
    check_custom_headers,
    check_http_method,
    parse_security_flags,
    redirect_policy,
)
from ferry.model.job import Job, Limits
from ferry.model.token import Token
from ferry.model.types import Priority


def test_headers() -> None:
    assert check_custom_headers(["A: 1", "B:two  "]) == ("A: 1", "B: two")
    assert check_custom_headers("A: 1\r\nB: 2\r\n") == ("A: 1", "B: 2")
    assert check_custom_headers([]) is None and check_custom_headers(None) is None
    for bad in (["A: 1\r\nB: 2"], ["Host: h"], ["a b: c"], ["nocolon"], ["X: \x7f"], [1]):
        with pytest.raises(FerryError) as e:
            check_custom_headers(bad)
        assert e.value.code == "E_INVALIDARG", bad
    with pytest.raises(FerryError):
        check_custom_headers(["X: " + "a" * 16_384])


def test_flags_and_method() -> None:
    assert parse_security_flags("bg_ssl_ignore_unknown_ca, REDIRECT_POLICY_ALLOW_SILENT") == (
        "IGNORE_UNKNOWN_CA",
    )
    assert parse_security_flags("none") == () == parse_security_flags([])
    assert redirect_policy(("REDIRECT_POLICY_DISALLOW",)) == "REDIRECT_POLICY_DISALLOW"
    assert redirect_policy(()) == "REDIRECT_POLICY_ALLOW_SILENT"
    with pytest.raises(FerryError):
        parse_security_flags(["REDIRECT_POLICY_DISALLOW", "REDIRECT_POLICY_ALLOW_REPORT"])
    assert check_http_method("PROPFIND") == "PROPFIND"
    for bad in ("", "GE T", "CONNECT", "x" * 65, None):
        with pytest.raises(FerryError):
            check_http_method(bad)
    assert ClientCertificate.parse({"cert": "/a//b.pem"}) == ClientCertificate("/a/b.pem")


def test_set_http_options_is_all_or_none() -> None:
    job = Job.new(Token(uid=1000, gid=1000), "j", 1.0, Limits())
    sealed: list[object] = []

    def seal(h: tuple[str, ...] | None) -> str:
        sealed.append(h)
        return "v1:x"

    job.set_http_options({"custom_headers": ["A: 1"]}, 2.0, seal)
    assert job.custom_headers == ("A: 1",)
    with pytest.raises(FerryError):
        job.set_http_options({"http_method": "POST", "custom_headers": ["Range: x"]}, 3.0, seal)
    assert (job.http_method, job.priority, job.custom_headers) == (
        "GET",
        Priority.NORMAL,
        ("A: 1",),
    )
    job.set_http_options({"custom_headers_write_only": True}, 4.0, seal)
    assert (job.custom_headers, job.custom_headers_sealed, sealed) == (None, "v1:x", [("A: 1",)])
    job.set_http_options({"http_method": "POST"}, 5.0, seal)
    assert job.priority is Priority.FOREGROUND
    with pytest.raises(FerryError):
        job.set_properties({"priority": "low"}, Limits(), 6.0)
    with pytest.raises(FerryError):
        job.set_properties({"dynamic_content": True}, Limits(), 6.0)
