"""Result codes (errors.py): the values BITS reports, HTTP arithmetic, FerryError's wire form."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from ferry.errors import (
    CODES,
    FerryError,
    code_for_errno,
    format_hresult,
    hresult_of,
    http_error_code,
    name_of,
)

# Spot checks against shared/reference/bits-codes.md (bitsmsg.h values); hard-coded because
# CI runs from the repository alone.
SPOT_CHECKS = [
    ("S_OK", 0x00000000),
    ("BG_S_PARTIAL_COMPLETE", 0x00200017),
    ("BG_S_UNABLE_TO_DELETE_FILES", 0x0020001A),
    ("BG_E_NOT_FOUND", 0x80200001),
    ("BG_E_INVALID_STATE", 0x80200002),
    ("BG_E_EMPTY", 0x80200003),
    ("BG_E_MISSING_FILE_SIZE", 0x80200011),
    ("BG_E_TOO_MANY_FILES", 0x8020001C),
    ("BG_E_STRING_TOO_LONG", 0x80200021),
    ("BG_E_TOO_MANY_JOBS_PER_USER", 0x80200049),
    ("BG_E_TOO_MANY_JOBS_PER_MACHINE", 0x80200050),
    ("BG_E_TOO_MANY_FILES_IN_JOB", 0x80200051),
    ("BG_E_TOKEN_REQUIRED", 0x80200056),
    ("BG_E_DATABASE_CORRUPT", 0x8020006C),
    ("BG_E_REMOTE_FILE_CHANGED", 0x80200073),
    ("BG_E_READ_ONLY_WHEN_JOB_ACTIVE", 0x80200075),
    ("E_ACCESSDENIED", 0x80070005),
    ("E_INVALIDARG", 0x80070057),
    ("ERROR_FILE_NOT_FOUND", 0x80070002),
    ("ERROR_PATH_NOT_FOUND", 0x80070003),
    ("ERROR_DISK_FULL", 0x80070070),
    ("ERROR_WINHTTP_CLIENT_CERT_NO_ACCESS_PRIVATE_KEY", 0x80072F9A),
]


@pytest.mark.parametrize(("name", "value"), SPOT_CHECKS)
def test_code_values(name: str, value: int) -> None:
    assert CODES[name] == value
    assert hresult_of(name) == value
    assert name_of(value) == name
    assert FerryError(name).hresult == value


def test_code_values_are_unique() -> None:
    # name_of must be the inverse of hresult_of for every named code
    assert len(set(CODES.values())) == len(CODES)
    for name, value in CODES.items():
        assert name_of(value) == name


@pytest.mark.parametrize(
    ("status", "value"),
    [(100, 0x80190064), (304, 0x80190130), (404, 0x80190194), (408, 0x80190198),
     (429, 0x801901AD), (500, 0x801901F4), (503, 0x801901F7), (599, 0x80190257)],
)  # fmt: skip
def test_http_error_arithmetic_both_ways(status: int, value: int) -> None:
    name = http_error_code(status)
    assert name == f"BG_E_HTTP_ERROR_{status}"
    assert hresult_of(name) == value == 0x80190000 + status
    assert name_of(value) == name
    err = FerryError(name, "not found")
    assert err.hresult == value and err.api_status == 400


@pytest.mark.parametrize("value", [0x80190000 + 99, 0x80190000 + 600, 0x80190000])
def test_name_of_outside_the_http_range_is_hex(value: int) -> None:
    assert name_of(value) == f"0x{value:08X}"


@pytest.mark.parametrize(
    ("value", "text"), [(0x8020FFFF, "0x8020FFFF"), (2, "0x00000002"), (0xDEADBEEF, "0xDEADBEEF")]
)
def test_name_of_unknown_is_the_hex_value(value: int, text: str) -> None:
    assert name_of(value) == text
    assert format_hresult(value) == text


@pytest.mark.parametrize("name", ["NOT_A_CODE", "BG_E_HTTP_ERROR_42", "BG_E_HTTP_ERROR_4040", ""])
def test_hresult_of_unknown_name_raises(name: str) -> None:
    with pytest.raises(KeyError):
        hresult_of(name)


def test_ferry_error_fields_and_text() -> None:
    e = FerryError("BG_E_NOT_FOUND", "no job x")
    assert (e.code, e.hresult, e.message) == ("BG_E_NOT_FOUND", 0x80200001, "no job x")
    assert str(e) == "BG_E_NOT_FOUND (0x80200001): no job x"
    assert FerryError("BG_E_EMPTY").message == "BG_E_EMPTY"
    custom = FerryError("SOMETHING_NEW", "x", hresult=0x80201234)
    assert custom.hresult == 0x80201234


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("BG_E_NOT_FOUND", 404),
        ("E_ACCESSDENIED", 403),
        ("BG_E_INVALID_STATE", 409),
        ("BG_E_EMPTY", 409),
        ("BG_E_TOO_MANY_JOBS_PER_USER", 429),
        ("BG_E_TOO_MANY_FILES_IN_JOB", 429),
        ("E_INVALIDARG", 400),
        ("BG_E_STRING_TOO_LONG", 400),
        ("BG_E_DATABASE_CORRUPT", 503),
    ],
)
def test_api_status(code: str, status: int) -> None:
    assert FerryError(code).api_status == status


def test_json_round_trip() -> None:
    e = FerryError("BG_E_INVALID_STATE", "job is CANCELLED")
    body = e.to_json()
    assert body == {
        "error": {
            "code": "BG_E_INVALID_STATE",
            "hresult": "0x80200002",
            "message": "job is CANCELLED",
        }
    }
    back = FerryError.from_json(body)
    assert (back.code, back.hresult, back.message) == (e.code, e.hresult, e.message)
    http = FerryError.from_json(FerryError("BG_E_HTTP_ERROR_404", "gone").to_json())
    assert (http.code, http.hresult) == ("BG_E_HTTP_ERROR_404", 0x80190194)


@pytest.mark.parametrize(
    "body", [None, [], "text", 42, {}, {"error": "oops"}, {"error": None}, {"err": {}}]
)
def test_from_json_of_a_malformed_body_is_e_fail(body: Any) -> None:
    e = FerryError.from_json(body)
    assert e.code == "E_FAIL" and e.hresult == 0x80004005
    assert "malformed" in e.message


def test_from_json_truncates_a_huge_malformed_body() -> None:
    assert len(FerryError.from_json("x" * 10_000).message) <= 500


@pytest.mark.parametrize(
    ("err", "code", "hresult"),
    [
        ({}, "E_FAIL", 0x80004005),
        ({"code": "BG_E_NOT_FOUND"}, "BG_E_NOT_FOUND", 0x80200001),
        ({"code": "BG_E_NOT_FOUND", "hresult": "garbage"}, "BG_E_NOT_FOUND", 0x80200001),
        ({"code": "BG_E_NOT_FOUND", "hresult": None}, "BG_E_NOT_FOUND", 0x80200001),
        ({"code": "FUTURE_CODE", "hresult": "0x80201234"}, "FUTURE_CODE", 0x80201234),
        ({"code": "FUTURE_CODE"}, "FUTURE_CODE", 0x80004005),
        ({"code": "FUTURE_CODE", "hresult": "nope"}, "FUTURE_CODE", 0x80004005),
    ],
)
def test_from_json_of_partial_error_objects(err: dict[str, Any], code: str, hresult: int) -> None:
    e = FerryError.from_json({"error": err})
    assert (e.code, e.hresult) == (code, hresult)
    assert e.message  # never empty


@pytest.mark.parametrize(
    ("err", "code"),
    [
        (errno.EACCES, "E_ACCESSDENIED"),
        (errno.EPERM, "E_ACCESSDENIED"),
        (errno.EROFS, "E_ACCESSDENIED"),
        (errno.ELOOP, "E_ACCESSDENIED"),
        (errno.ENOENT, "ERROR_FILE_NOT_FOUND"),
        (errno.ENOTDIR, "ERROR_PATH_NOT_FOUND"),
        (errno.ENOSPC, "ERROR_DISK_FULL"),
        (errno.EDQUOT, "ERROR_DISK_FULL"),
        (errno.EEXIST, "ERROR_FILE_EXISTS"),
        (errno.EINVAL, "E_INVALIDARG"),
        (errno.ENAMETOOLONG, "E_INVALIDARG"),
        (errno.EIO, "E_FAIL"),
        (0, "E_FAIL"),
    ],
)
def test_code_for_errno(err: int, code: str) -> None:
    assert code_for_errno(err) == code


def test_from_oserror_keeps_the_errno_text() -> None:
    e = FerryError.from_oserror(PermissionError(errno.EACCES, "Permission denied"), "open /srv/x")
    assert (e.code, e.hresult) == ("E_ACCESSDENIED", 0x80070005)
    assert e.message == "open /srv/x: Permission denied"
    bare = FerryError.from_oserror(OSError("weird"), "rename")
    assert bare.code == "E_FAIL" and "weird" in bare.message
