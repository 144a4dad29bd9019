"""What an upload or upload-reply job remembers between runs (SPEC §9): the BITS Upload
Protocol session the server holds for it, the size and modification time its local file had
when the upload began (a file that changes meanwhile fails the job), and for upload-reply
jobs the reply: where it is fetched from, the hidden temporary file it is written to, and
where ``complete`` puts it. Pure: no I/O. Stored in the job record (store/codec.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

REPLY_SUFFIX = ".reply"
# ferry reply / job.reply_data(): the most the API hands back in one answer (BITS's
# GetReplyData has the same limit).
REPLY_DATA_MAX = 1 << 20


@dataclass(slots=True)
class UploadState:
    # The server's session (BITS-Session-Id), None before Create-Session and once closed.
    session_id: str | None = None
    # BITS-Host-Id: the host of a server farm that holds the session (replaces the host
    # part of the remote URL), and how long to keep trying it before falling back to the
    # URL's own host (BITS-Host-Id-Fallback-Timeout, seconds; None: forever).
    host_id: str | None = None
    host_fallback: float | None = None
    host_failing_since: float | None = None  # when the farm host began failing (epoch)
    # The local file as the upload found it: size and st_mtime_ns. A change is fatal.
    source_size: int | None = None
    source_mtime_ns: int | None = None
    # Upload-reply: the BITS-Reply-URL of the last fragment's Ack.
    reply_url: str | None = None
    # Upload-reply: where complete renames the reply (None: the local name + ".reply").
    reply_file: str | None = None
    reply_temp: str | None = None  # the hidden temporary file the reply is written to
    reply_total: int | None = None
    reply_transferred: int = 0
    reply_done: bool = False  # the whole reply is in reply_temp, fsynced

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "host_id": self.host_id,
            "host_fallback": self.host_fallback,
            "host_failing_since": self.host_failing_since,
            "source_size": self.source_size,
            "source_mtime_ns": self.source_mtime_ns,
            "reply_url": self.reply_url,
            "reply_file": self.reply_file,
            "reply_temp": self.reply_temp,
            "reply_total": self.reply_total,
            "reply_transferred": self.reply_transferred,
            "reply_done": self.reply_done,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> UploadState:
        get = d.get
        fallback = get("host_fallback")
        return cls(
            session_id=get("session_id"),
            host_id=get("host_id"),
            host_fallback=None if fallback is None else float(fallback),
            host_failing_since=get("host_failing_since"),
            source_size=get("source_size"),
            source_mtime_ns=get("source_mtime_ns"),
            reply_url=get("reply_url"),
            reply_file=get("reply_file"),
            reply_temp=get("reply_temp"),
            reply_total=get("reply_total"),
            reply_transferred=int(get("reply_transferred", 0)),
            reply_done=bool(get("reply_done", False)),
        )

    def forget_session(self) -> None:
        """The server no longer has the session (closed, cancelled, or not found)."""
        self.session_id = None
        self.host_id = None
        self.host_fallback = None
        self.host_failing_since = None
        self.reply_url = None


def default_reply_file(local_name: str) -> str:
    return local_name + REPLY_SUFFIX
