"""Upload sessions on disk, shared by every server of a farm.

``STATE/sessions/<GUID>/`` holds one session:

* ``meta.json`` — the destination path, the declared total, the reply, whether it is closed
  (written whole to a temporary name, fsynced, renamed: never half-written);
* ``data`` — the bytes received so far; its size *is* the next byte expected, and it is
  fsynced before any Ack counts its bytes as received, so a restart (even a ``kill -9`` or a
  power cut) resumes exactly where the client was told;
* ``reply`` — an upload-reply's reply, as the back end answered;
* ``lock`` — ``flock``ed while a request works on the session (one process or several).

A session directory appears whole (made under a temporary name, renamed). The modification
time of ``meta.json`` is the time of the last successful request: expiry is measured from it.
Everything here is blocking file work; the application runs the slow parts (fsync) off the
event loop.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_GUID_RE = re.compile(
    r"^\{?([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})\}?$"
)


def new_session_id() -> str:
    """A fresh session id as IIS writes them: ``{XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX}``."""
    return "{" + str(uuid.uuid4()).upper() + "}"


def normalize_session_id(value: str) -> str | None:
    """The canonical ``{GUID}`` form of a session id as a client sent it (braces optional,
    any case), or None when it is not a GUID (and so cannot name a session directory)."""
    m = _GUID_RE.match(value.strip())
    if m is None:
        return None
    return "{" + m.group(1).upper() + "}"


def _dirname(session_id: str) -> str:
    return session_id.strip("{}")


@dataclass
class Session:
    """What ``meta.json`` holds."""

    id: str
    path: list[str]
    created: float
    host_id: str | None = None
    total: int | None = None
    closed: bool = False
    # The reply of an upload-reply, once the back end answered: {"url": ...} for a static
    # response URL, {"file": true} for the file ``reply``; "copy": keep the upload too.
    reply: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class SessionStore:
    """The ``sessions`` directory of a state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.base = state_dir / "sessions"
        self.base.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(state_dir, 0o700)
        os.chmod(self.base, 0o700)

    def dir(self, session_id: str) -> Path:
        return self.base / _dirname(session_id)

    def data_path(self, session_id: str) -> Path:
        return self.dir(session_id) / "data"

    def reply_path(self, session_id: str) -> Path:
        return self.dir(session_id) / "reply"

    # -- lifecycle ---------------------------------------------------------------------------

    def create(self, session: Session) -> None:
        """Make the session's directory whole under a temporary name, then rename it."""
        tmp = self.base / f".new-{secrets.token_hex(8)}"
        tmp.mkdir(mode=0o700)
        try:
            _write_json(tmp / "meta.json", asdict(session))
            fd = os.open(tmp / "data", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            os.fsync(fd)
            os.close(fd)
            (tmp / "lock").touch(mode=0o600)
            os.rename(tmp, self.dir(session.id))
            _fsync_dir(self.base)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def load(self, session_id: str) -> Session | None:
        try:
            raw = json.loads((self.dir(session_id) / "meta.json").read_text())
            session = Session(**raw)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (ValueError, TypeError):  # damaged: unusable, as if it did not exist
            return None
        if session.id != session_id:
            return None
        return session

    def save(self, session: Session) -> None:
        _write_json(self.dir(session.id) / "meta.json", asdict(session))

    def touch(self, session_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.dir(session_id) / "meta.json")

    def last_used(self, session_id: str) -> float | None:
        try:
            return (self.dir(session_id) / "meta.json").stat().st_mtime
        except FileNotFoundError:
            return None

    def received(self, session_id: str) -> int:
        """The next byte expected: the size of the data received (and fsynced) so far."""
        try:
            return self.data_path(session_id).stat().st_size
        except FileNotFoundError:
            return 0

    def delete(self, session_id: str) -> None:
        """Remove the session: renamed away first (atomic for other servers), then deleted."""
        d = self.dir(session_id)
        gone = self.base / f".del-{secrets.token_hex(8)}"
        try:
            os.rename(d, gone)
        except FileNotFoundError:
            return
        shutil.rmtree(gone, ignore_errors=True)
        with contextlib.suppress(OSError):
            _fsync_dir(self.base)

    def drop_data(self, session_id: str) -> None:
        for name in ("data", "reply"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.dir(session_id) / name)

    def ids(self) -> list[str]:
        out = []
        for entry in os.listdir(self.base):
            sid = normalize_session_id(entry)
            if sid is not None and "{" not in entry:
                out.append(sid)
        return out

    def sweep_leftovers(self, older_than: float = 3600) -> None:
        """Half-made (``.new-``) or half-deleted (``.del-``) directories a crash left."""
        now = time.time()
        for entry in os.listdir(self.base):
            if entry.startswith((".new-", ".del-")):
                p = self.base / entry
                with contextlib.suppress(OSError):
                    if entry.startswith(".del-") or now - p.stat().st_mtime > older_than:
                        shutil.rmtree(p, ignore_errors=True)

    # -- locking -----------------------------------------------------------------------------

    def try_lock(self, session_id: str) -> int | None:
        """The session's lock, held (a descriptor to close to release it), or None when
        another request holds it. FileNotFoundError when there is no such session."""
        fd = os.open(self.dir(session_id) / "lock", os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return fd


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, json.dumps(value, sort_keys=True).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems refuse fsync on directories
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)
