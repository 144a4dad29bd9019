"""The library's read-only views of what ferryd sends, shared by the sync and asyncio
clients: ``JobView`` (the base of ``Job`` and ``AsyncJob``: the last job object seen and
typed accessors over it, and how an event moves ``wait`` on) and ``FileInfo`` (public as
``ferry.FileInfo``).
"""

from __future__ import annotations

from ..errors import FerryError
from ..model.types import JobState, JobType, Priority
from ._ops import JSONObj
from .sse import Event

# States in which Job.wait returns: the transfer is over for now, one way or another.
WAIT_DONE_STATES = frozenset(
    {JobState.TRANSFERRED, JobState.ERROR, JobState.ACKNOWLEDGED, JobState.CANCELLED}
)


class JobView:
    """What sync and async job handles have in common: the id and the last JSON job object
    seen (from any answer or event), with typed accessors over it."""

    __slots__ = ("data",)

    def __init__(self, data: JSONObj) -> None:
        if not isinstance(data.get("id"), str):
            raise FerryError("E_FAIL", "ferryd sent a job without an id")
        self.data = data

    @property
    def id(self) -> str:
        return str(self.data["id"])

    @property
    def state(self) -> JobState:
        return JobState(self.data["state"])

    @property
    def display_name(self) -> str:
        return str(self.data.get("display_name", ""))

    @property
    def description(self) -> str:
        return str(self.data.get("description", ""))

    @property
    def type(self) -> JobType:
        return JobType(self.data.get("type", JobType.DOWNLOAD.value))

    @property
    def priority(self) -> Priority:
        return Priority(self.data.get("priority", Priority.NORMAL.value))

    @property
    def progress(self) -> JSONObj:
        p = self.data.get("progress")
        return p if isinstance(p, dict) else {}

    @property
    def error(self) -> JSONObj | None:
        e = self.data.get("error")
        return e if isinstance(e, dict) else None

    @property
    def dynamic_content(self) -> bool:
        return bool(self.data.get("dynamic_content"))

    @property
    def proxy_settings(self) -> JSONObj:
        """GetProxySettings: ``{"usage", "list", "bypass"}`` as last seen."""
        p = self.data.get("proxy")
        return p if isinstance(p, dict) else {"usage": "PRECONFIG", "list": None, "bypass": None}

    @property
    def reply(self) -> JSONObj | None:
        """Upload-reply jobs: ``{"file", "bytes_total", "bytes_transferred"}``."""
        value = self.data.get("reply")
        return value if isinstance(value, dict) else None

    def _update(self, data: JSONObj) -> None:
        if data.get("id") == self.id:
            self.data = data

    def _observe(self, event: Event) -> JobState | None:
        """Take in an event about this job; the state at which ``wait`` may stop, else None.
        A removed job that never reached a final state is gone: BG_E_NOT_FOUND."""
        if event.job_id not in (None, self.id):
            return None
        if event.job is not None:
            self._update(event.job)
        if event.type == "job-removed":
            if self.state in WAIT_DONE_STATES:
                return self.state
            raise FerryError("BG_E_NOT_FOUND", f"job {self.id} was removed")
        if event.job is not None and self.state in WAIT_DONE_STATES:
            return self.state
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.display_name!r} {self.data.get('state')}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobView) and type(other) is type(self) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)


class FileInfo:
    """A file of a job (SPEC §6 file object); ``data`` is the JSON object as sent."""

    __slots__ = ("data",)

    def __init__(self, data: JSONObj) -> None:
        self.data = data

    @property
    def remote_name(self) -> str:
        return str(self.data.get("remote_name", ""))

    @property
    def local_name(self) -> str:
        return str(self.data.get("local_name", ""))

    @property
    def bytes_total(self) -> int | None:
        v = self.data.get("bytes_total")
        return int(v) if v is not None else None

    @property
    def bytes_transferred(self) -> int:
        return int(self.data.get("bytes_transferred") or 0)

    @property
    def completed(self) -> bool:
        return bool(self.data.get("completed"))

    @property
    def sha256(self) -> str | None:
        """The SHA-256 ferryd checks the file against (lower case), or None."""
        v = self.data.get("sha256")
        return str(v) if v is not None else None

    @property
    def ranges(self) -> list[tuple[int, int | None]] | None:
        """AddFileWithRanges' ranges, sorted (length None: to the end), or None."""
        v = self.data.get("ranges")
        if v is None:
            return None
        return [
            (int(r["offset"]), None if r["length"] == "eof" else int(r["length"])) for r in v
        ]

    def __repr__(self) -> str:
        return f"<FileInfo {self.remote_name} -> {self.local_name}>"


def timeout_error(job_id: str, timeout: float) -> FerryError:
    """wait() ran out of time. A FerryError (not TimeoutError) so the CLI and callers
    handle it like every other failure."""
    return FerryError("BG_E_WATCHDOG_TIMEOUT", f"job {job_id} did not finish within {timeout:g} s")
