"""URL paths never leave --root: each way out, tried by Create-Session and by GET, refused
with 400 (malformed) or 403 (not permitted), and nothing is created outside the root."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.upserver import FerryServer, bits, create, fragment, raw_request

E_INVALIDARG = "0x80070057"
E_ACCESSDENIED = "0x80070005"


@pytest.fixture(scope="module")
def jail(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FerryServer]:
    """A root with a secret beside it, a symlink to outside, a symlinked file."""
    base = tmp_path_factory.mktemp("jail")
    root = base / "root"
    (root / "sub").mkdir(parents=True)
    (base / "outside").mkdir()
    (base / "outside" / "secret").write_text("secret")
    (base / "secret").write_text("secret")
    os.symlink(base / "outside", root / "link")
    os.symlink(base / "secret", root / "sub" / "filelink")
    (root / "sub" / "ok.txt").write_text("ok")
    server = FerryServer(root, state_dir=base / "state").start()
    yield server
    server.stop()


def _outside(s: FerryServer) -> set[str]:
    base = s.root.parent
    return {
        str(p.relative_to(base))
        for p in base.rglob("*")
        if not str(p).startswith((str(s.root), str(base / "state")))
        and not p.name.startswith("ferry-server-")
    }


def _refused(s: FerryServer, raw_path: str, status: int) -> None:
    before = _outside(s)
    a = bits(s.port, raw_path, "Create-Session")
    assert a.status == status, (raw_path, a.status, a.headers)
    assert a.h("BITS-Error-Code") == (E_INVALIDARG if status == 400 else E_ACCESSDENIED)
    assert a.h("BITS-Error-Context") == "0x5"
    assert a.h("Content-Length") == "0"
    g = raw_request(s.port, "GET", raw_path)
    assert g.status in (400, 403, 404), (raw_path, g.status)
    assert b"secret" not in g.body
    assert _outside(s) == before


def test_dotdot(jail: FerryServer) -> None:
    _refused(jail, "/../secret", 400)


def test_dotdot_deeper(jail: FerryServer) -> None:
    _refused(jail, "/sub/../../outside/new", 400)


def test_single_dot(jail: FerryServer) -> None:
    _refused(jail, "/./sub/x", 400)


def test_percent_encoded_dots(jail: FerryServer) -> None:
    _refused(jail, "/%2e%2e/secret", 400)


def test_percent_encoded_dots_mixed_case(jail: FerryServer) -> None:
    _refused(jail, "/sub/%2E%2e/%2e./outside/x", 400)


def test_percent_encoded_slash(jail: FerryServer) -> None:
    _refused(jail, "/sub%2F..%2F..%2Fsecret", 400)


def test_percent_encoded_backslash(jail: FerryServer) -> None:
    _refused(jail, "/sub%5C..%5Cx", 400)


def test_nul(jail: FerryServer) -> None:
    _refused(jail, "/sub/a%00b", 400)


def test_control_character(jail: FerryServer) -> None:
    _refused(jail, "/sub/a%0Ab", 400)


def test_overlong_name(jail: FerryServer) -> None:
    _refused(jail, "/" + "n" * 256, 400)
    a = bits(jail.port, "/" + "n" * 255, "Create-Session")
    assert a.status == 200  # NAME_MAX itself is fine


def test_overlong_encoded_name(jail: FerryServer) -> None:
    _refused(jail, "/" + "%41" * 256, 400)


def test_overlong_path(jail: FerryServer) -> None:
    _refused(jail, "/" + "/".join(["d" * 200] * 21), 400)


def test_empty_segment(jail: FerryServer) -> None:
    _refused(jail, "/sub//x", 400)


def test_directory_path(jail: FerryServer) -> None:
    _refused(jail, "/sub/", 400)


def test_symlinked_directory_pointing_out(jail: FerryServer) -> None:
    _refused(jail, "/link/new", 403)
    _refused(jail, "/link/secret", 403)


def test_symlinked_file(jail: FerryServer) -> None:
    _refused(jail, "/sub/filelink", 403)
    assert (jail.root.parent / "secret").read_text() == "secret"


def test_existing_directory_as_destination(jail: FerryServer) -> None:
    _refused(jail, "/sub", 403)


def test_reserved_names(jail: FerryServer) -> None:
    _refused(jail, "/.ferry-server/sessions/x", 403)
    _refused(jail, "/sub/.ferry-upload-1.tmp", 403)


def test_missing_parent_directory(jail: FerryServer) -> None:
    a = bits(jail.port, "/nodir/x", "Create-Session")
    assert a.status == 404 and a.h("BITS-Error-Code") == "0x80190194"
    assert not (jail.root / "nodir").exists()


def test_symlink_swapped_in_after_create(jail: FerryServer) -> None:
    """A directory replaced by a symbolic link between Create-Session and Close-Session:
    the commit walks the path again, without following links."""
    root = jail.root
    (root / "swap").mkdir()
    sid = create(jail.port, "/swap/f")
    assert fragment(jail.port, "/swap/f", sid, b"data", 0, 4).status == 200
    (root / "swap").rmdir()
    os.symlink(root.parent / "outside", root / "swap")
    try:
        a = bits(jail.port, "/swap/f", "Close-Session", sid)
        assert a.status == 403, a.headers
        assert not (root.parent / "outside" / "f").exists()
    finally:
        os.unlink(root / "swap")


def test_good_paths_still_work(jail: FerryServer) -> None:
    for path, disk in (("/sub/caf%C3%A9%20x.txt", "sub/café x.txt"), ("/sub/..x", "sub/..x")):
        sid = create(jail.port, path)
        assert fragment(jail.port, path, sid, b"hi", 0, 2).status == 200
        assert bits(jail.port, path, "Close-Session", sid).status == 200
        assert (jail.root / disk).read_bytes() == b"hi"
    g = raw_request(jail.port, "GET", "/sub/ok.txt")
    assert g.status == 200 and g.body == b"ok"


def test_state_dir_is_private(jail: FerryServer) -> None:
    state = jail.state_dir
    assert state is not None
    assert (Path(state).stat().st_mode & 0o077) == 0
