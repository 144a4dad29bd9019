"""Validation of remote URLs and local names (SPEC §2.2) and the temporary-file naming rule."""

from __future__ import annotations

import os

import pytest

from ferry.errors import FerryError
from ferry.model.job import Limits
from ferry.model.paths import (
    NAME_MAX,
    file_url_path,
    temp_name_for,
    validate_local_name,
    validate_remote_name,
    validate_sha256,
)

LIMITS = Limits()


def code_of(fn: object, *args: object) -> str:
    with pytest.raises(FerryError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value.code


# ---- local names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "normalized"),
    [
        ("/tmp/a", "/tmp/a"),
        ("/a", "/a"),
        ("//tmp//a", "/tmp/a"),
        ("/tmp/./a", "/tmp/a"),
        ("/./tmp/././sub//./file.txt", "/tmp/sub/file.txt"),
        ("/tmp/.hidden", "/tmp/.hidden"),
        ("/tmp/a..b", "/tmp/a..b"),
        ("/tmp/...", "/tmp/..."),
        ("/tmp/with space/ünïcode", "/tmp/with space/ünïcode"),
    ],
)
def test_local_name_accepted(given: str, normalized: str) -> None:
    assert validate_local_name(given, LIMITS) == normalized


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "relative/path",
        "./a",
        "~/a",
        "/tmp/../etc/passwd",
        "/tmp/a/..",
        "/..",
        "/tmp/dir/",
        "/",
        "/tmp/.",
        "/tmp/a\x00b",
    ],
)
def test_local_name_rejected(bad: str) -> None:
    assert code_of(validate_local_name, bad, LIMITS) == "E_INVALIDARG"


def test_local_name_length_limit() -> None:
    limits = Limits(path_len=64)
    ok = "/" + "a" * 63
    assert validate_local_name(ok, limits) == ok
    assert code_of(validate_local_name, ok + "b", limits) == "BG_E_STRING_TOO_LONG"


def test_local_name_component_too_long() -> None:
    assert validate_local_name("/tmp/" + "a" * NAME_MAX, LIMITS)
    assert code_of(validate_local_name, "/tmp/" + "a" * (NAME_MAX + 1), LIMITS) == (
        "BG_E_STRING_TOO_LONG"
    )


def test_local_name_non_utf8_bytes_survive() -> None:
    name = os.fsdecode(b"/tmp/caf\xe9")
    assert os.fsencode(validate_local_name(name, LIMITS)) == b"/tmp/caf\xe9"


# ---- remote names ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "normalized"),
    [
        ("http://example.com/a", "http://example.com/a"),
        ("https://example.com:8443/a/b?c=d", "https://example.com:8443/a/b?c=d"),
        ("HTTP://example.com/a", "http://example.com/a"),
        ("https://[::1]/x", "https://[::1]/x"),
        ("http://example.com", "http://example.com"),
        ("http://example.com/../a", "http://example.com/../a"),  # the server resolves it
        ("file:///srv/share/a.iso", "file:///srv/share/a.iso"),
        ("file://localhost/srv/a", "file://localhost/srv/a"),
        ("FILE:///srv/a%20b", "file:///srv/a%20b"),
        # A plain absolute path is the file:// URL of that path, percent-encoded.
        ("/srv/share/a.iso", "file:///srv/share/a.iso"),
        ("/srv/a b?c#d%e", "file:///srv/a%20b%3Fc%23d%25e"),
        ("/srv/ünï", "file:///srv/%C3%BCn%C3%AF"),
        (os.fsdecode(b"/srv/caf\xe9"), "file:///srv/caf%E9"),
        ("//srv/a", "file:////srv/a"),
    ],
)
def test_remote_name_accepted(given: str, normalized: str) -> None:
    assert validate_remote_name(given, LIMITS) == normalized


@pytest.mark.parametrize(
    "bad",
    [
        "ftp://example.com/a",
        "gopher://example.com/",
        "example.com/a",
        "srv/a",
        "",
        "javascript:alert(1)",
    ],
)
def test_remote_name_unsupported_scheme(bad: str) -> None:
    with pytest.raises(FerryError) as info:
        validate_remote_name(bad, LIMITS)
    assert info.value.code == "E_INVALIDARG"
    assert "unsupported scheme" in info.value.message


@pytest.mark.parametrize(
    "bad",
    [
        "http://",
        "http:///path",
        "https://:443/x",
        "http://example.com:99999/a",
        "http://example.com:port/a",
        "http://user:secret@example.com/a",
        "http://example.com/a b",
        "http://example.com/a\nb",
        "http://example.com/\x00",
        " http://example.com/a",
    ],
)
def test_remote_http_rejected(bad: str) -> None:
    assert code_of(validate_remote_name, bad, LIMITS) == "E_INVALIDARG"


@pytest.mark.parametrize(
    "bad",
    [
        "file:/srv/a",  # single slash
        "file:srv/a",
        "file://server/share/a",  # a host: not a local path
        "file:///srv/../etc/shadow",
        "file:///srv/%2e%2e/etc/shadow",  # '..' hidden by percent-encoding
        "file:///srv/a%00b",
        "file:///srv/dir/",
        "file:///srv/.",
        "file:///srv/a?b",
        "file:///srv/a#b",
        "file://",
        "file:///",
        "/srv/../etc/shadow",  # a plain path is checked as its file URL
        "/srv/dir/",
        "/srv/a\x00b",
        "/",
    ],
)
def test_remote_file_rejected(bad: str) -> None:
    assert code_of(validate_remote_name, bad, LIMITS) == "E_INVALIDARG"


def test_remote_name_length_limit() -> None:
    limits = Limits(url_len=40)
    ok = "http://example.com/" + "a" * 21
    assert len(ok) == 40
    assert validate_remote_name(ok, limits) == ok
    assert code_of(validate_remote_name, ok + "a", limits) == "BG_E_STRING_TOO_LONG"


def test_file_url_path_decodes() -> None:
    assert file_url_path("file:///srv/a%20b/%C3%BC.txt") == "/srv/a b/ü.txt"
    assert file_url_path("file://localhost/srv/x") == "/srv/x"
    assert os.fsencode(file_url_path("file:///srv/caf%E9")) == b"/srv/caf\xe9"
    assert code_of(file_url_path, "http://example.com/a") == "E_INVALIDARG"
    path = os.fsdecode(b"/srv/a b/caf\xe9?#%")
    assert file_url_path(validate_remote_name(path, LIMITS)) == path


# ---- temporary names ------------------------------------------------------------------


def test_temp_name_is_hidden_in_the_same_directory() -> None:
    assert temp_name_for("/data/dl/file.iso", "abc123") == "/data/dl/.file.iso.abc123.ferry-part"
    assert temp_name_for("/file", "t") == "/.file.t.ferry-part"


def test_temp_name_fits_name_max() -> None:
    token = "0123456789abcdef01234567"
    name = temp_name_for("/d/" + "é" * 127, token)  # 254 bytes of basename
    component = os.fsencode(name.rsplit("/", 1)[1])
    assert len(component) <= NAME_MAX
    assert name.startswith("/d/.é") and name.endswith(f".{token}.ferry-part")
    component.decode("utf-8")  # cut on a character boundary


@pytest.mark.parametrize("bad", ["", "a/b", "a\x00"])
def test_temp_name_token_rejected(bad: str) -> None:
    assert code_of(temp_name_for, "/d/f", bad) == "E_INVALIDARG"


# ---- expected SHA-256 ---------------------------------------------------------------------


def test_sha256_is_normalized_to_lower_case() -> None:
    assert validate_sha256("AB" * 32) == "ab" * 32
    assert validate_sha256(None) is None


@pytest.mark.parametrize(
    "bad", ["ab" * 31, "ab" * 33, "zz" * 32, "", 5, ["ab" * 32], " " + "a" * 63]
)
def test_bad_sha256_is_invalid_arg(bad: object) -> None:
    with pytest.raises(FerryError) as exc:
        validate_sha256(bad)
    assert exc.value.code == "E_INVALIDARG"
