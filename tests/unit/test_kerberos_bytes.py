"""What ferryd checks in the bytes of a credential cache or keytab before libkrb5 sees them
(security/ccache.py), and the Kerberos variables it drops from its environment
(transfer/auth.py)."""

from __future__ import annotations

import pytest

from ferry.security.ccache import ccache_principal, check_keytab
from ferry.transfer.auth import clear_ambient_kerberos


def _counted(b: bytes) -> bytes:
    return len(b).to_bytes(4, "big") + b


def _cache(parts: list[bytes], realm: bytes, version: int = 4, header: bytes = b"") -> bytes:
    out = bytes([5, version])
    if version == 4:
        out += len(header).to_bytes(2, "big") + header
    out += (1).to_bytes(4, "big") + len(parts).to_bytes(4, "big") + _counted(realm)
    return out + b"".join(_counted(p) for p in parts) + b"tickets follow"


def test_principal_of_a_cache() -> None:
    assert ccache_principal(_cache([b"alice"], b"EXAMPLE.TEST")) == "alice@EXAMPLE.TEST"
    assert ccache_principal(_cache([b"HTTP", b"web.example.test"], b"R")) == (
        "HTTP/web.example.test@R"
    )
    # A format-4 header (a KDC time offset) is skipped; format 3 has none.
    tagged = _cache([b"bob"], b"R", header=b"\x00\x01\x00\x08" + bytes(8))
    assert ccache_principal(tagged) == "bob@R"
    assert ccache_principal(_cache([b"carol"], b"R", version=3)) == "carol@R"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x05\x04",
        b"\x05\x02" + bytes(20),  # an old format
        b"\x05\x02\x00\x00",  # a keytab
        b"not a cache at all",
        _cache([], b"R"),
        _cache([b"a"] * 17, b"R"),
        _cache([b"alice"], b"")[:-20],  # truncated inside the realm
        _cache([b"al/ice"], b"R"),
        _cache([b"al@ice"], b"R"),
        _cache([b"al\\ice"], b"R"),
        _cache([b"al\nice"], b"R"),
        _cache([b"alice"], b"R@S"),
        _cache([b""], b"R"),
        _cache([b"\xff\xfe"], b"R"),
        bytes([5, 4, 0xFF, 0xFF]) + bytes(10),  # a header longer than the file
    ],
)
def test_what_is_not_a_usable_cache(data: bytes) -> None:
    with pytest.raises(ValueError):
        ccache_principal(data)


def test_keytab_format() -> None:
    check_keytab(b"\x05\x02" + bytes(10))
    for bad in (b"", b"\x05", b"\x05\x04\x00\x00", b"hello"):
        with pytest.raises(ValueError):
            check_keytab(bad)


def test_ambient_kerberos_variables_are_dropped() -> None:
    env = {"KRB5CCNAME": "FILE:/tmp/krb5cc_0", "KRB5_CLIENT_KTNAME": "FILE:/k",
           "KRB5_KTNAME": "FILE:/etc/krb5.keytab", "KRB5_CONFIG": "/etc/krb5.conf",
           "PATH": "/usr/bin"}  # fmt: skip
    cleared = sorted(clear_ambient_kerberos(env))
    assert cleared == ["KRB5CCNAME", "KRB5_CLIENT_KTNAME", "KRB5_KTNAME"]
    assert env == {"KRB5_CONFIG": "/etc/krb5.conf", "PATH": "/usr/bin"}
    assert clear_ambient_kerberos(env) == []
