"""ferryd's [store] section (fleet mode, docs/fleet.md): the default stays SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferry.daemon.config import load_config
from ferry.errors import FerryError


def test_the_default_is_the_embedded_sqlite_store() -> None:
    cfg = load_config(False)
    assert cfg.store_url is None and cfg.lease_seconds == 15 and cfg.worker_id is None


def test_a_postgresql_url_lease_and_worker_id(tmp_path: Path) -> None:
    path = tmp_path / "ferryd.toml"
    path.write_text(
        '[store]\nurl = "postgresql://ferry@db/ferry"\nlease_seconds = 5\nworker_id = "x-1"\n'
    )
    cfg = load_config(False, path)
    assert cfg.store_url == "postgresql://ferry@db/ferry"
    assert cfg.lease_seconds == 5.0 and cfg.worker_id == "x-1"


@pytest.mark.parametrize(
    "text",
    [
        'url = "sqlite:///x.db"',
        "url = 5",
        "lease_seconds = 0",
        "lease_seconds = 7200",
        'lease_seconds = "15"',
        'worker_id = ""',
        'worker_id = "a\\tb"',
        "unknown = 1",
    ],
)
def test_bad_store_settings_are_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "ferryd.toml"
    path.write_text(f"[store]\n{text}\n")
    with pytest.raises(FerryError) as exc:
        load_config(False, path)
    assert exc.value.code == "E_INVALIDARG"


def test_a_shared_credentials_key(tmp_path: Path) -> None:
    """Every worker of a fleet names one sealing key; the default is the state directory's."""
    from ferry.security.secretbox import SecretBox

    assert load_config(False).credentials_key is None
    path = tmp_path / "ferryd.toml"
    key = tmp_path / "shared.key"
    path.write_text(f'[store]\ncredentials_key = "{key}"\n')
    cfg = load_config(False, path)
    assert cfg.credentials_key == key
    one, two = SecretBox.from_file(str(key)), SecretBox.from_file(str(key))
    assert key.stat().st_mode & 0o777 == 0o600
    assert two.open(one.seal("pw", "job", "SERVER", "BASIC"), "job", "SERVER", "BASIC") == "pw"


@pytest.mark.parametrize("text", ['credentials_key = "relative.key"', "credentials_key = 1"])
def test_a_bad_credentials_key_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "ferryd.toml"
    path.write_text(f"[store]\n{text}\n")
    with pytest.raises(FerryError) as exc:
        load_config(False, path)
    assert exc.value.code == "E_INVALIDARG"
