"""ferry-server against the conformance cases of reference/bits-upload-protocol.md, each
request written by hand on a socket (no BITS client in between)."""

from __future__ import annotations

import re

from harness.upserver import (
    PROTOCOL,
    Answer,
    FerryServer,
    bits,
    create,
    fragment,
    raw_request,
)

GUID_RE = re.compile(r"^\{[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}\}$")
E_INVALIDARG = "0x80070057"
E_ACCESSDENIED = "0x80070005"
NOT_FOUND = "0x8020001F"


def assert_ack(a: Answer, status: int, code: str | None = None) -> None:
    """IIS-like: every answer an Ack with an empty body and Content-Length: 0; errors with
    BITS-Error-Code and context 0x5 (the server)."""
    assert a.status == status, (a.status, a.headers)
    assert a.h("BITS-Packet-Type") == "Ack"
    assert a.h("Content-Length") == "0"
    assert a.body == b""
    if code is None:
        assert a.h("BITS-Error-Code") is None
    else:
        assert a.h("BITS-Error-Code") == code, a.headers
        assert a.h("BITS-Error-Context") == "0x5"


def visible(s: FerryServer, name: str) -> bool:
    return (s.root / name.lstrip("/")).exists()


# -- packet types ---------------------------------------------------------------------------


def test_missing_packet_type(shared_server: FerryServer, name: str) -> None:
    a = raw_request(shared_server.port, "BITS_POST", name)
    assert_ack(a, 400, E_INVALIDARG)


def test_unknown_packet_type(shared_server: FerryServer, name: str) -> None:
    assert_ack(bits(shared_server.port, name, "Upload-Everything"), 400, E_INVALIDARG)


def test_ping(shared_server: FerryServer, name: str) -> None:
    assert_ack(bits(shared_server.port, name, "Ping"), 200)
    assert_ack(bits(shared_server.port, name, "PING"), 200)


def test_ping_with_a_body(shared_server: FerryServer, name: str) -> None:
    assert_ack(bits(shared_server.port, name, "Ping", body=b"x"), 400, E_INVALIDARG)


def test_missing_content_length(shared_server: FerryServer, name: str) -> None:
    a = raw_request(
        shared_server.port, "BITS_POST", name, {"BITS-Packet-Type": "Ping"}, content_length=False
    )
    assert_ack(a, 400, E_INVALIDARG)


def test_header_value_over_4k(shared_server: FerryServer, name: str) -> None:
    a = bits(shared_server.port, name, "Ping", extra={"X-Junk": "a" * 4097})
    assert_ack(a, 400, E_INVALIDARG)
    assert_ack(bits(shared_server.port, name, "Ping", extra={"X-Junk": "a" * 4000}), 200)


def test_unknown_headers_are_ignored(shared_server: FerryServer, name: str) -> None:
    assert_ack(bits(shared_server.port, name, "Ping", extra={"X-Whatever": "1"}), 200)


def test_post_with_method_override(shared_server: FerryServer, name: str) -> None:
    p = shared_server.port
    h = {
        "X-Http-Method-Override": "BITS_POST",
        "BITS-Packet-Type": "Create-Session",
        "BITS-Supported-Protocols": PROTOCOL,
    }
    a = raw_request(p, "POST", name, h)
    assert_ack(a, 200)
    sid = a.h("BITS-Session-Id")
    assert sid is not None
    h = {
        "X-Http-Method-Override": "bits_post",
        "BITS-Packet-Type": "Fragment",
        "BITS-Session-Id": sid,
        "Content-Range": "bytes 0-2/3",
    }
    assert_ack(raw_request(p, "POST", name, h, b"abc"), 200)
    h = {
        "X-Http-Method-Override": "BITS_POST",
        "BITS-Packet-Type": "Close-Session",
        "BITS-Session-Id": sid,
    }
    assert_ack(raw_request(p, "POST", name, h), 200)
    assert (shared_server.root / name[1:]).read_bytes() == b"abc"


def test_plain_post_is_not_bits(shared_server: FerryServer, name: str) -> None:
    a = raw_request(shared_server.port, "POST", name, {"BITS-Packet-Type": "Ping"})
    assert a.status == 405


# -- Create-Session ---------------------------------------------------------------------------


def test_create_session_answer(shared_server: FerryServer, name: str) -> None:
    a = bits(shared_server.port, name, "Create-Session")
    assert_ack(a, 200)
    assert GUID_RE.match(a.h("BITS-Session-Id") or ""), a.headers
    assert a.h("BITS-Protocol") == PROTOCOL
    assert a.h("Accept-Encoding") == "identity"
    assert a.h("BITS-Host-Id") is None


def test_create_session_mixed_case(shared_server: FerryServer, name: str) -> None:
    for packet in ("create-session", "CREATE-SESSION", "cReAtE-SeSsIoN"):
        assert_ack(bits(shared_server.port, name, packet), 200)


def test_create_session_with_a_body(shared_server: FerryServer, name: str) -> None:
    a = bits(shared_server.port, name, "Create-Session", body=b"hello")
    assert_ack(a, 400, E_INVALIDARG)


def test_create_session_without_protocols(shared_server: FerryServer, name: str) -> None:
    a = raw_request(shared_server.port, "BITS_POST", name, {"BITS-Packet-Type": "Create-Session"})
    assert_ack(a, 400, E_INVALIDARG)


def test_create_session_unknown_protocol(shared_server: FerryServer, name: str) -> None:
    other = "{00000000-1111-2222-3333-444444444444}"
    a = bits(shared_server.port, name, "Create-Session", extra={"BITS-Supported-Protocols": other})
    assert_ack(a, 400, E_INVALIDARG)


def test_create_session_protocol_lists(shared_server: FerryServer, name: str) -> None:
    other = "{00000000-1111-2222-3333-444444444444}"
    for sep in (" ", ",", ", ", " ,  "):
        for ours in (PROTOCOL, PROTOCOL.upper(), PROTOCOL.strip("{}")):
            a = bits(
                shared_server.port,
                name,
                "Create-Session",
                extra={"BITS-Supported-Protocols": f"{other}{sep}{ours}"},
            )
            assert_ack(a, 200)
            assert a.h("BITS-Protocol") == PROTOCOL


# -- Fragment ---------------------------------------------------------------------------------


def test_fragment_without_content_range(shared_server: FerryServer, name: str) -> None:
    sid = create(shared_server.port, name)
    a = bits(shared_server.port, name, "Fragment", sid, b"abc")
    assert_ack(a, 400, E_INVALIDARG)


def test_fragment_malformed_content_range(shared_server: FerryServer, name: str) -> None:
    sid = create(shared_server.port, name)
    for rng in (
        "bytes 0-2",
        "0-2/3",
        "bytes 2-0/3",
        "bytes 0-3/3",
        "bytes a-b/3",
        "bytes 0-2/x",
        "items 0-2/3",
        "bytes -2/3",
    ):
        a = bits(shared_server.port, name, "Fragment", sid, b"abc", extra={"Content-Range": rng})
        assert_ack(a, 400, E_INVALIDARG)


def test_fragment_length_mismatch(shared_server: FerryServer, name: str) -> None:
    sid = create(shared_server.port, name)
    a = bits(
        shared_server.port, name, "Fragment", sid, b"abc", extra={"Content-Range": "bytes 0-3/10"}
    )
    assert_ack(a, 400, E_INVALIDARG)


def test_fragment_without_session_id(shared_server: FerryServer, name: str) -> None:
    a = bits(
        shared_server.port, name, "Fragment", None, b"abc", extra={"Content-Range": "bytes 0-2/3"}
    )
    assert_ack(a, 400, E_INVALIDARG)


def test_fragment_unknown_session(shared_server: FerryServer, name: str) -> None:
    for sid in ("{C85B4E0A-9EB9-4114-BFA4-8A43B4710091}", "not-a-guid", "{../../etc}"):
        a = fragment(shared_server.port, name, sid, b"abc", 0, 3)
        assert_ack(a, 500, NOT_FOUND)


def test_fragments_and_close(shared_server: FerryServer, name: str) -> None:
    p = shared_server.port
    data = bytes(range(256)) * 40
    sid = create(p, name)
    a = fragment(p, name, sid, data[:5000], 0, len(data))
    assert_ack(a, 200)
    assert a.h("BITS-Received-Content-Range") == "5000"
    a = fragment(p, name, sid, data[5000:], 5000, len(data))
    assert_ack(a, 200)
    assert a.h("BITS-Received-Content-Range") == str(len(data))
    assert a.h("BITS-Reply-URL") is None  # no back end: a plain upload
    assert not visible(shared_server, name), "visible before Close-Session"
    assert_ack(bits(p, name, "Close-Session", sid), 200)
    assert (shared_server.root / name[1:]).read_bytes() == data


def test_session_id_forms_accepted(shared_server: FerryServer, name: str) -> None:
    p = shared_server.port
    sid = create(p, name)
    a = fragment(p, name, sid.strip("{}").lower(), b"ab", 0, 4)
    assert_ack(a, 200)
    assert a.h("BITS-Session-Id") == sid  # answered in the canonical form
    assert_ack(fragment(p, name, sid.lower(), b"cd", 2, 4), 200)


def test_gap_is_416_with_the_expected_offset(shared_server: FerryServer, name: str) -> None:
    p = shared_server.port
    sid = create(p, name)
    assert_ack(fragment(p, name, sid, b"0123", 0, 10), 200)
    a = fragment(p, name, sid, b"89", 8, 10)
    assert a.status == 416
    assert a.h("BITS-Received-Content-Range") == "4"
    assert a.h("BITS-Packet-Type") == "Ack" and a.h("Content-Length") == "0"
    assert a.h("BITS-Error-Context") == "0x5"


def test_overlap_is_trimmed(shared_server: FerryServer, name: str) -> None:
    p = shared_server.port
    sid = create(p, name)
    assert_ack(fragment(p, name, sid, b"012345", 0, 10), 200)
    # bytes 2..7 again, with different content in the overlap: only 6..7 are written
    a = fragment(p, name, sid, b"XXXX67", 2, 10)
    assert_ack(a, 200)
    assert a.h("BITS-Received-Content-Range") == "8"
    # wholly old bytes: nothing written, the offset answered
    a = fragment(p, name, sid, b"ZZ", 0, 10)
    assert_ack(a, 200)
    assert a.h("BITS-Received-Content-Range") == "8"
    assert_ack(fragment(p, name, sid, b"789", 7, 10), 200)
    assert_ack(bits(p, name, "Close-Session", sid), 200)
    assert (shared_server.root / name[1:]).read_bytes() == b"0123456789"


def test_changed_total(shared_server: FerryServer, name: str) -> None:
    p = shared_server.port
    sid = create(p, name)
    assert_ack(fragment(p, name, sid, b"0123", 0, 10), 200)
    assert_ack(fragment(p, name, sid, b"4567", 4, 11), 400, E_INVALIDARG)
    a = fragment(p, name, sid, b"4567", 4, 10)
    assert a.h("BITS-Received-Content-Range") == "8"


def test_session_is_bound_to_its_url(shared_server: FerryServer, name: str) -> None:
    p = shared_server.port
    sid = create(p, name)
    assert_ack(fragment(p, "/elsewhere.bin", sid, b"ab", 0, 2), 400, E_INVALIDARG)


def test_identity_encoding_only(shared_server: FerryServer, name: str) -> None:
    p = shared_server.port
    sid = create(p, name)
    a = bits(
        p,
        name,
        "Fragment",
        sid,
        b"ab",
        extra={"Content-Range": "bytes 0-1/2", "Content-Encoding": "gzip"},
    )
    assert_ack(a, 400, E_INVALIDARG)


# -- Close-Session and Cancel-Session ---------------------------------------------------------


def test_close_without_session_id(shared_server: FerryServer, name: str) -> None:
    assert_ack(bits(shared_server.port, name, "Close-Session"), 400, E_INVALIDARG)


def test_cancel_without_session_id(shared_server: FerryServer, name: str) -> None:
    assert_ack(bits(shared_server.port, name, "Cancel-Session"), 400, E_INVALIDARG)


def test_close_unknown_session(shared_server: FerryServer, name: str) -> None:
    sid = "{C85B4E0A-9EB9-4114-BFA4-8A43B4710091}"
    assert_ack(bits(shared_server.port, name, "Close-Session", sid), 500, NOT_FOUND)
    assert_ack(bits(shared_server.port, name, "Cancel-Session", sid), 500, NOT_FOUND)


def test_close_twice(shared_server: FerryServer, name: str) -> None:
    p = shared_server.port
    sid = create(p, name)
    assert_ack(fragment(p, name, sid, b"abc", 0, 3), 200)
    assert_ack(bits(p, name, "Close-Session", sid), 200)
    assert_ack(bits(p, name, "Close-Session", sid), 200)  # its first answer lost
    assert_ack(fragment(p, name, sid, b"abc", 0, 3), 500, NOT_FOUND)


def test_close_before_the_last_byte(shared_server: FerryServer, name: str) -> None:
    p = shared_server.port
    sid = create(p, name)
    assert_ack(fragment(p, name, sid, b"abc", 0, 10), 200)
    assert_ack(bits(p, name, "Close-Session", sid), 400, E_INVALIDARG)
    assert not visible(shared_server, name)
    assert_ack(fragment(p, name, sid, b"def", 3, 10), 500, NOT_FOUND)


def test_cancel(shared_server: FerryServer, name: str) -> None:
    p = shared_server.port
    sid = create(p, name)
    assert_ack(fragment(p, name, sid, b"abc", 0, 3), 200)  # even whole
    assert_ack(bits(p, name, "Cancel-Session", sid), 200)
    assert not visible(shared_server, name)
    assert_ack(bits(p, name, "Close-Session", sid), 500, NOT_FOUND)
    assert_ack(fragment(p, name, sid, b"abc", 0, 3), 500, NOT_FOUND)
    assert not list((shared_server.state_dir or shared_server.root).rglob(sid.strip("{}")))


def test_close_and_cancel_with_a_body(shared_server: FerryServer, name: str) -> None:
    p = shared_server.port
    sid = create(p, name)
    assert_ack(bits(p, name, "Close-Session", sid, b"x"), 400, E_INVALIDARG)
    assert_ack(bits(p, name, "Cancel-Session", sid, b"x"), 400, E_INVALIDARG)


def test_empty_upload_by_fragment(shared_server: FerryServer, name: str) -> None:
    p = shared_server.port
    sid = create(p, name)
    a = fragment(p, name, sid, b"", 0, 0)
    assert_ack(a, 200)
    assert a.h("BITS-Received-Content-Range") == "0"
    assert not visible(shared_server, name)
    assert_ack(bits(p, name, "Close-Session", sid), 200)
    assert (shared_server.root / name[1:]).read_bytes() == b""


def test_empty_upload_by_close(shared_server: FerryServer, name: str) -> None:
    p = shared_server.port
    sid = create(p, name)
    assert_ack(bits(p, name, "Close-Session", sid), 200)
    assert (shared_server.root / name[1:]).read_bytes() == b""


def test_one_session_many_requests_on_one_connection(shared_server: FerryServer, name: str) -> None:
    """Keep-alive: the packets of a session on one connection."""
    import socket

    p = shared_server.port
    with socket.create_connection(("127.0.0.1", p), 30) as s:
        a = bits(p, name, "Create-Session", sock=s)
        sid = a.h("BITS-Session-Id")
        assert sid
        for i in range(10):
            assert_ack(fragment(p, name, sid, bytes([i]) * 100, i * 100, 1000, sock=s), 200)
        assert_ack(bits(p, name, "Close-Session", sid, sock=s), 200)
    assert (shared_server.root / name[1:]).stat().st_size == 1000
