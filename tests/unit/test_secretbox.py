"""The secret box of credential passwords (security/secretbox.py): the key file and what
opens and what does not."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ferry.errors import FerryError
from ferry.security.secretbox import KEY_FILE, SecretBox


def test_a_crash_left_temporary_key_never_blocks_the_start(tmp_path: Path) -> None:
    # What an older ferryd with the same pid (pid 1 in a container) left when it crashed.
    (tmp_path / f"{KEY_FILE}.{os.getpid()}.new").write_bytes(b"half a key")
    box = SecretBox.in_state_dir(str(tmp_path))
    key = tmp_path / KEY_FILE
    st = key.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid() and st.st_size == 32
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".new") and
            p.name != f"{KEY_FILE}.{os.getpid()}.new"] == []  # fmt: skip
    # The same key next time.
    again = SecretBox.in_state_dir(str(tmp_path))
    assert again.open(box.seal("pw", "j", "SERVER", "BASIC"), "j", "SERVER", "BASIC") == "pw"


def test_seal_and_open_are_bound_to_the_entry(tmp_path: Path) -> None:
    box = SecretBox.in_state_dir(str(tmp_path))
    sealed = box.seal("p@ss", "job-1", "SERVER", "BASIC")
    assert "p@ss" not in sealed and sealed.startswith("v1:")
    assert box.open(sealed, "job-1", "SERVER", "BASIC") == "p@ss"
    for other in (("job-2", "SERVER", "BASIC"), ("job-1", "PROXY", "BASIC"),
                  ("job-1", "SERVER", "DIGEST")):  # fmt: skip
        with pytest.raises(FerryError) as exc:
            box.open(sealed, *other)
        assert exc.value.code == "BG_E_INVALID_CREDENTIALS"
    tampered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    for bad in (tampered, "v0:" + sealed[3:], "v1:not base64!", "p@ss"):
        with pytest.raises(FerryError) as exc:
            box.open(bad, "job-1", "SERVER", "BASIC")
        assert exc.value.code == "BG_E_INVALID_CREDENTIALS"


def test_a_key_others_could_read_or_that_is_not_ours_is_refused(tmp_path: Path) -> None:
    SecretBox.in_state_dir(str(tmp_path))
    key = tmp_path / KEY_FILE
    os.chmod(key, 0o644)
    with pytest.raises(FerryError) as exc:
        SecretBox.in_state_dir(str(tmp_path))
    assert exc.value.code == "E_ACCESSDENIED"
    os.chmod(key, 0o600)
    if os.geteuid() == 0:
        os.chown(key, 40334, 40334)
        with pytest.raises(FerryError) as exc:
            SecretBox.in_state_dir(str(tmp_path))
        assert exc.value.code == "E_ACCESSDENIED"
        os.chown(key, 0, 0)
    os.unlink(key)
    os.symlink(tmp_path / "elsewhere", key)
    with pytest.raises(OSError):
        SecretBox.in_state_dir(str(tmp_path))
