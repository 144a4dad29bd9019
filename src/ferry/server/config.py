"""What a ferry-server serves and how: ``ServerConfig``, the one argument of ``make_app``.

Pure data and its checks; the command line (``ferry.server.main``) builds one from its flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

NotifyType = Literal["by-reference", "by-value"]

IIS_SESSION_TIMEOUT = 14 * 24 * 3600  # IIS's default: a session idle for 14 days expires
STATE_DIR_NAME = ".ferry-server"
# Seconds a connection may wait for a whole request head, or between two bytes of a body:
# what IIS allows (connectionTimeout) and what a Windows client allows itself to send one
IDLE_TIMEOUT = 120.0  # the default state directory, inside the root (hidden)


@dataclass(frozen=True)
class ServerConfig:
    """The configuration of one ferry-server application.

    * ``root``: the directory URL paths map under (``/a/b`` → ``root/a/b``).
    * ``state_dir``: sessions and their partial data (default ``root/.ferry-server``). Servers
      of a farm share it. Best on the root's file system: Close-Session is then a rename.
    * ``max_upload_size``: largest upload in bytes (``None``: no limit) → BG_E_TOO_LARGE.
    * ``allow_overwrite``: whether an upload may replace an existing file.
    * ``session_timeout``: seconds without a successful request after which a session expires.
    * ``host_id`` / ``host_id_fallback_timeout``: sent on Create-Session Acks (a farm).
    * ``notify_url`` / ``notify_type``: the upload-reply back end.
    * ``max_fragment_size``: larger fragments are refused with 413 (the client shrinks them);
      not a command-line flag, for embedding and tests.
    * ``idle_timeout``: a fragment whose body stalls this long is treated as cut off (what
      arrived is kept, the session unlocked); ``ferry-server`` also closes a connection that
      sends no whole request head for this long (embedded: the runner's keepalive_timeout).
    """

    root: Path
    state_dir: Path | None = None
    max_upload_size: int | None = None
    allow_overwrite: bool = False
    session_timeout: float = IIS_SESSION_TIMEOUT
    host_id: str | None = None
    host_id_fallback_timeout: int | None = None
    notify_url: str | None = None
    notify_type: NotifyType = "by-reference"
    max_fragment_size: int | None = None
    idle_timeout: float = IDLE_TIMEOUT

    def __post_init__(self) -> None:
        if self.max_upload_size is not None and self.max_upload_size < 0:
            raise ValueError("max_upload_size must be >= 0")
        if self.session_timeout <= 0:
            raise ValueError("session_timeout must be > 0")
        if self.host_id_fallback_timeout is not None and self.host_id is None:
            raise ValueError("host_id_fallback_timeout needs host_id")
        if self.host_id is not None and (
            not self.host_id or any(ord(c) < 0x21 or ord(c) > 0x7E for c in self.host_id)
        ):
            raise ValueError("host_id must be a non-empty printable name without spaces")
        if self.notify_type not in ("by-reference", "by-value"):
            raise ValueError("notify_type is by-reference or by-value")
        if self.notify_url is not None and not self.notify_url.startswith(("http://", "https://")):
            raise ValueError("notify_url must be an http(s) URL")
        if self.idle_timeout <= 0:
            raise ValueError("idle_timeout must be > 0")
        if self.max_fragment_size is not None and self.max_fragment_size < 1:
            raise ValueError("max_fragment_size must be >= 1")

    @property
    def states(self) -> Path:
        """The state directory in effect."""
        return self.state_dir if self.state_dir is not None else self.root / STATE_DIR_NAME
