"""Temporary names chosen before their file exists (security/tempnames.py, created by
security/identity.py): the engine names a download's temporary file, persists the name, then
``IdentityIO.create_temp`` creates exactly that name. The name is checked first — a hidden
``.NAME.<token>.ferry-part`` beside the local name, nothing else — and O_EXCL|O_NOFOLLOW
still refuse anything already there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ferry.errors import FerryError
from ferry.model.token import Token
from ferry.security.identity import IdentityIO
from ferry.security.tempnames import check_temp_name, new_temp_name
from tests.security.test_identity import ALICE, BOB, denied, needs_root, owned_dir


def me() -> Token:
    return Token(uid=os.geteuid(), gid=os.getegid(), groups=tuple(os.getgroups()))


def test_new_names_are_hidden_beside_the_local_name_and_unpredictable() -> None:
    a, b = new_temp_name("/srv/dl/file.iso"), new_temp_name("/srv/dl/file.iso")
    assert a != b
    for name in (a, b):
        assert name.startswith("/srv/dl/.file.iso.") and name.endswith(".ferry-part")
        check_temp_name("/srv/dl/file.iso", name)


@pytest.mark.parametrize(
    "name",
    [
        "/srv/other/.file.iso.abc.ferry-part",  # another directory
        "/srv/dl/sub/.file.iso.abc.ferry-part",  # a subdirectory
        "/srv/dl/.file.iso.abc.ferry-part/",  # not a plain name
        "/srv/dl/file.iso.abc.ferry-part",  # not hidden
        "/srv/dl/.file.iso.abc.part",  # not ours
        "/srv/dl/.other.abc.ferry-part",  # another file's
        "/srv/dl/.file.iso..ferry-part",  # no token
        "/srv/dl/.file.iso.ferry-part",  # no token either
        "/srv/dl/.file.iso.a\x00b.ferry-part",  # NUL
        "/srv/dl/.ferry-part",
        "/srv/dl/..",
        "/srv/dl/file.iso",  # the local name itself
        "srv/dl/.file.iso.abc.ferry-part",  # relative
    ],
)
def test_names_that_are_not_temporary_names_are_refused(name: str) -> None:
    with pytest.raises(FerryError) as info:
        check_temp_name("/srv/dl/file.iso", name)
    assert info.value.code == "E_INVALIDARG"


async def test_create_temp_creates_exactly_the_name_given(io: IdentityIO, tmp_path: Path) -> None:
    local = tmp_path / "file.iso"
    name = new_temp_name(str(local))
    assert not os.path.lexists(name)
    fd, created = await io.create_temp(me(), str(local), name)
    try:
        assert created == name
        st = os.fstat(fd)
        assert os.stat(name).st_ino == st.st_ino and st.st_mode & 0o777 == 0o600
    finally:
        os.close(fd)
    # Never twice: the name is now taken.
    err = await denied(io.create_temp(me(), str(local), name))
    assert err.code == "ERROR_FILE_EXISTS"


async def test_create_temp_refuses_a_bad_name_before_touching_the_disk(
    io: IdentityIO, tmp_path: Path
) -> None:
    local = tmp_path / "file.iso"
    others = (tmp_path / "elsewhere", local, tmp_path.parent / ".file.iso.abc.ferry-part")
    for bad in map(str, others):
        err = await denied(io.create_temp(me(), str(local), bad))
        assert err.code == "E_INVALIDARG"
    assert list(tmp_path.iterdir()) == []


@needs_root
async def test_a_planted_file_or_symlink_at_the_name_is_left_alone(
    io: IdentityIO, base: Path
) -> None:
    alice_dir = owned_dir(base, "alice", 40001, 40001, 0o777)
    victim = base / "victim"
    victim.write_bytes(b"precious")
    local = str(alice_dir / "f")
    link = new_temp_name(local)
    os.symlink(victim, link)
    err = await denied(io.create_temp(ALICE, local, link))
    assert err.code == "ERROR_FILE_EXISTS"
    assert victim.read_bytes() == b"precious" and os.path.islink(link)
    planted = new_temp_name(local)
    Path(planted).write_bytes(b"bob's")
    os.chown(planted, BOB.uid, BOB.gid)
    err = await denied(io.create_temp(ALICE, local, planted))
    assert err.code == "ERROR_FILE_EXISTS"
    assert Path(planted).read_bytes() == b"bob's"
