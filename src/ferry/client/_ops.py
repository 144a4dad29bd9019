"""The client's knowledge of the API, with no I/O: routes, request bodies, response
interpretation and the Server-Sent-Events parser.

The sync client (``http.client``) and the asyncio client (aiohttp) are thin transports over
this module, so the request logic exists once: a transport sends ``Call.method`` /
``Call.target`` / ``Call.body`` and hands the status and raw body back to ``Call.finish``.
Everything here is unit-testable without a daemon.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlencode

from ..errors import FerryError
from ..model.types import JobState, JobType, Priority

T = TypeVar("T")
JSONObj = dict[str, Any]

API_PREFIX = "/v1"
JSON_HEADERS: Mapping[str, str] = {"Content-Type": "application/json"}
SSE_HEADERS: Mapping[str, str] = {"Accept": "text/event-stream"}

# States in which Job.wait returns: the transfer is over for now, one way or another.
WAIT_DONE_STATES = frozenset(
    {JobState.TRANSFERRED, JobState.ERROR, JobState.ACKNOWLEDGED, JobState.CANCELLED}
)

# The properties PATCH /v1/jobs/JOB accepts (docs/architecture.md).
SETTABLE_PROPERTIES = frozenset(
    {
        "display_name",
        "description",
        "priority",
        "min_retry_delay",
        "no_progress_timeout",
        "notify_flags",
        "notify_cmdline",
    }
)

ACTIONS = frozenset({"resume", "suspend", "cancel", "complete", "take-ownership"})


class DaemonUnavailable(FerryError):
    """No ferryd answers at the socket. A distinct type so the CLI can decide to start a
    user daemon; its code stays ``E_FAIL`` so callers that only know FerryError see an
    ordinary failure."""

    def __init__(self, path: str, detail: str = "") -> None:
        message = f"ferryd is not running at {path}"
        if detail:
            message += f" ({detail})"
        super().__init__("E_FAIL", message)
        self.path = path


# ---- encoding -------------------------------------------------------------------------


def encode(obj: Any) -> bytes:
    """Compact JSON: requests are small and the sync client is measured in calls per second."""
    return json.dumps(obj, separators=(",", ":")).encode()


def decode(raw: bytes) -> Any:
    """An empty body decodes to None; anything that is not JSON is the daemon's fault and
    becomes an E_FAIL the caller can read, never a bare ValueError."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise FerryError(
            "E_FAIL", f"ferryd sent a response that is not JSON: {raw[:200]!r}"
        ) from None


def _value(v: Any) -> Any:
    """Enums travel as their wire spelling; IntFlags as plain ints."""
    if isinstance(v, Enum):
        return v.value
    return v


def job_path(job: str) -> str:
    """``/v1/jobs/JOB``: a job id or display name, quoted so names with spaces, slashes or
    ``?`` survive the trip."""
    if not isinstance(job, str) or not job:
        raise FerryError("E_INVALIDARG", "a job id or display name is required")
    return f"{API_PREFIX}/jobs/{quote(job, safe='')}"


# ---- calls ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One API request and how to read its answer."""

    method: str
    target: str
    body: bytes | None
    parse: Callable[[Any], T]

    @property
    def headers(self) -> Mapping[str, str]:
        return JSON_HEADERS if self.body is not None else {}

    def finish(self, status: int, raw: bytes) -> T:
        """Status >= 400 is an API error body (SPEC §5) and becomes the FerryError the
        daemon meant; anything else goes through ``parse``."""
        if status >= 400:
            try:
                doc = decode(raw)
            except FerryError:
                doc = None
            if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
                raise FerryError.from_json(doc)
            raise FerryError("E_FAIL", f"ferryd answered HTTP {status}: {raw[:200]!r}")
        return self.parse(decode(raw))


def _as_obj(doc: Any) -> JSONObj:
    if not isinstance(doc, dict):
        raise FerryError("E_FAIL", f"ferryd sent {type(doc).__name__} where an object was due")
    return doc


def _key_list(key: str) -> Callable[[Any], list[JSONObj]]:
    def parse(doc: Any) -> list[JSONObj]:
        items = _as_obj(doc).get(key)
        if not isinstance(items, list):
            raise FerryError("E_FAIL", f"ferryd's answer has no {key!r} list")
        return [_as_obj(i) for i in items]

    return parse


def _action_result(doc: Any) -> tuple[str, JSONObj]:
    obj = _as_obj(doc)
    result = obj.get("result")
    code = result.get("code") if isinstance(result, dict) else None
    return (str(code) if code else "S_OK"), _as_obj(obj.get("job"))


def status() -> Call[JSONObj]:
    return Call("GET", f"{API_PREFIX}/status", None, _as_obj)


def create_job(
    display_name: str,
    type: JobType | str = JobType.DOWNLOAD,
    priority: Priority | str = Priority.NORMAL,
    description: str = "",
) -> Call[JSONObj]:
    body: JSONObj = {
        "display_name": display_name,
        "type": _value(type),
        "priority": _value(priority),
    }
    if description:
        body["description"] = description
    return Call("POST", f"{API_PREFIX}/jobs", encode(body), _as_obj)


def get_job(job: str) -> Call[JSONObj]:
    return Call("GET", job_path(job), None, _as_obj)


def list_jobs(all_users: bool = False) -> Call[list[JSONObj]]:
    target = f"{API_PREFIX}/jobs" + ("?all_users=true" if all_users else "")
    return Call("GET", target, None, _key_list("jobs"))


def set_job(job: str, props: Mapping[str, Any]) -> Call[JSONObj]:
    """PATCH the job. Unknown names are refused here, before a round trip, because a typo
    in a keyword argument should fail loudly rather than be silently ignored."""
    unknown = sorted(set(props) - SETTABLE_PROPERTIES)
    if unknown:
        raise FerryError("E_INVALIDARG", f"unknown job property: {', '.join(unknown)}")
    if not props:
        raise FerryError("E_INVALIDARG", "no property to set")
    body = {k: normalize_property(k, v) for k, v in props.items()}
    return Call("PATCH", job_path(job), encode(body), _as_obj)


def normalize_property(key: str, value: Any) -> Any:
    """Client-side conveniences: enums and flags become wire values; a notify command line
    given as one string is split like a shell would; an empty one clears it."""
    if key == "notify_cmdline":
        if value is None:
            return None
        if isinstance(value, str):
            import shlex

            return shlex.split(value) or None
        return [str(a) for a in value] or None
    if key == "notify_flags" and not isinstance(value, bool) and isinstance(value, int):
        return int(value)
    return _value(value)


def list_files(job: str) -> Call[list[JSONObj]]:
    return Call("GET", f"{job_path(job)}/files", None, _key_list("files"))


def file_entries(files: Iterable[tuple[Any, Any]]) -> list[JSONObj]:
    """Local names become absolute against the *client's* working directory: the daemon
    runs elsewhere and refuses relative names, while a user typing ``ferry add J URL out.iso``
    means the file next to them. Remote names are passed through untouched: only URLs are
    valid remotes, and guessing ``file://`` for a path would hide the mistake."""
    out: list[JSONObj] = []
    for pair in files:
        try:
            remote, local = pair
        except (TypeError, ValueError):
            raise FerryError("E_INVALIDARG", "files are (remote, local) pairs") from None
        local_str = os.fspath(local)
        if not isinstance(remote, str) or not isinstance(local_str, str):
            raise FerryError("E_INVALIDARG", "remote and local names must be strings")
        if "\x00" in local_str:
            # abspath would happily carry a NUL along; the daemon refuses it, say so early.
            raise FerryError("E_INVALIDARG", "local name contains a NUL byte")
        out.append({"remote_name": remote, "local_name": os.path.abspath(local_str)})
    if not out:
        raise FerryError("E_INVALIDARG", "no files given")
    return out


def add_files(job: str, files: Iterable[tuple[Any, Any]]) -> Call[JSONObj]:
    body = {"files": file_entries(files)}
    return Call("POST", f"{job_path(job)}/files", encode(body), _as_obj)


def action(job: str, name: str) -> Call[tuple[str, JSONObj]]:
    """resume / suspend / cancel / complete / take-ownership: the answer carries the BITS
    result code (``S_OK`` or ``BG_S_PARTIAL_COMPLETE``) and the job after the change."""
    if name not in ACTIONS:
        raise ValueError(f"unknown job action {name!r}")
    return Call("POST", f"{job_path(job)}/{name}", b"{}", _action_result)


def events_target(
    job_id: str | None = None, all_users: bool = False, all_events: bool = False
) -> str:
    """``all_events``: receive every change whatever the jobs' notify_flags (an observer,
    such as ``wait``), not only what the flags ask for (a callback)."""
    query: list[tuple[str, str]] = []
    if job_id:
        query.append(("job", job_id))
    if all_users:
        query.append(("all_users", "true"))
    if all_events:
        query.append(("all_events", "true"))
    return f"{API_PREFIX}/events" + (f"?{urlencode(query)}" if query else "")


# ---- Server-Sent Events ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SSEMessage:
    event: str
    data: str
    id: str | None = None


_EOL = re.compile(rb"[\r\n]")


class SSEParser:
    """The WHATWG event-stream grammar, incrementally: ``feed`` takes bytes as they arrive
    (any split, CR / LF / CRLF line ends) and returns the messages completed by them.
    Comments (``:`` lines, used as keep-alives) and ``retry`` are ignored."""

    def __init__(self) -> None:
        self._buf = b""
        self._skip_lf = False
        self._event = ""
        self._data: list[str] = []
        self._last_id: str | None = None
        self._first = True

    def feed(self, chunk: bytes) -> list[SSEMessage]:
        buf = self._buf + chunk
        pos = 0
        if self._skip_lf and buf:
            if buf[:1] == b"\n":
                pos = 1
            self._skip_lf = False
        out: list[SSEMessage] = []
        while True:
            m = _EOL.search(buf, pos)
            if m is None:
                break
            end = m.start()
            line = buf[pos:end]
            nxt = end + 1
            if buf[end : end + 1] == b"\r":
                if nxt < len(buf):
                    if buf[nxt : nxt + 1] == b"\n":
                        nxt += 1
                else:
                    self._skip_lf = True
            pos = nxt
            msg = self.feed_line(line.decode("utf-8", "replace"))
            if msg is not None:
                out.append(msg)
        self._buf = buf[pos:]
        return out

    def feed_line(self, line: str) -> SSEMessage | None:
        """One line without its terminator (a trailing CR/LF is tolerated, so lines from
        ``readline()`` can be passed as they are)."""
        line = line.rstrip("\r\n")
        if self._first:
            self._first = False
            line = line.removeprefix("\ufeff")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\x00" not in value:
            self._last_id = value
        return None

    def _dispatch(self) -> SSEMessage | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return SSEMessage(event or "message", "\n".join(data), self._last_id)


@dataclass(frozen=True, slots=True)
class Event:
    """A job event (the counterpart of IBackgroundCopyCallback): ``type`` is the event name
    (``job-snapshot``, ``job-modification``, ``job-transferred``, ``job-error``,
    ``file-transferred``, ``job-removed``), ``job`` the JSON job object at that moment."""

    type: str
    job_id: str | None
    job: JSONObj | None = field(default=None, compare=False)

    @property
    def state(self) -> JobState | None:
        if self.job is None:
            return None
        try:
            return JobState(str(self.job.get("state")))
        except ValueError:
            return None

    @classmethod
    def from_message(cls, msg: SSEMessage) -> Event | None:
        """None for messages that are not job events (so a future event kind, or a
        malformed line, does not break an old client)."""
        try:
            doc = json.loads(msg.data)
        except ValueError:
            return None
        if not isinstance(doc, dict):
            return None
        job = doc.get("job")
        if not isinstance(job, dict):
            job = None
        job_id = doc.get("job_id")
        if not isinstance(job_id, str):
            job_id = job.get("id") if job is not None else None
        kind = doc.get("type") if isinstance(doc.get("type"), str) else None
        return cls(kind or msg.event, job_id if isinstance(job_id, str) else None, job)


def events_from(messages: Sequence[SSEMessage]) -> list[Event]:
    return [e for e in (Event.from_message(m) for m in messages) if e is not None]


# ---- job views shared by Job and AsyncJob ---------------------------------------------


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

    def __repr__(self) -> str:
        return f"<FileInfo {self.remote_name} -> {self.local_name}>"


def timeout_error(job_id: str, timeout: float) -> FerryError:
    """wait() ran out of time. A FerryError (not TimeoutError) so the CLI and callers
    handle it like every other failure."""
    return FerryError("BG_E_WATCHDOG_TIMEOUT", f"job {job_id} did not finish within {timeout:g} s")


# ---- handles and IBitsTokenOptions (SPEC §4.3, §4.4) --------------------------------------

INTERFACES = frozenset({"job", "token-options"})


def handle_path(handle: str) -> str:
    if not isinstance(handle, str) or not handle:
        raise FerryError("E_INVALIDARG", "a handle is required")
    return f"{API_PREFIX}/handles/{quote(handle, safe='')}"


def open_handle(job: str, interface: str = "job", ttl: int | None = None) -> Call[JSONObj]:
    """QueryInterface: ferryd checks access now, with this connection's identity."""
    if interface not in INTERFACES:
        raise FerryError("E_INVALIDARG", f"unknown interface {interface!r}")
    body: JSONObj = {"interface": interface}
    if ttl is not None:
        body["ttl"] = ttl
    return Call("POST", f"{job_path(job)}/handles", encode(body), _as_obj)


def handle_info(handle: str) -> Call[JSONObj]:
    return Call("GET", handle_path(handle), None, _as_obj)


def release_handle(handle: str) -> Call[JSONObj]:
    return Call("DELETE", handle_path(handle), None, _as_obj)


def _token_options_base(job: str | None, handle: str | None) -> str:
    """With a handle the call is judged by whoever opened it; without one, the caller is
    treated as having opened a handle this very moment."""
    if (job is None) == (handle is None):
        raise FerryError("E_INVALIDARG", "give a job or a handle")
    return (handle_path(handle) if handle is not None else job_path(job or "")) + "/helper-token"


def get_helper_token(job: str | None = None, handle: str | None = None) -> Call[JSONObj]:
    return Call("GET", _token_options_base(job, handle), None, _as_obj)


def set_helper_token(job: str | None = None, handle: str | None = None) -> Call[JSONObj]:
    return Call("PUT", _token_options_base(job, handle), b"{}", _as_obj)


def clear_helper_token(job: str | None = None, handle: str | None = None) -> Call[JSONObj]:
    return Call("DELETE", _token_options_base(job, handle), None, _as_obj)


def set_helper_token_flags(
    flags: int, job: str | None = None, handle: str | None = None
) -> Call[JSONObj]:
    if isinstance(flags, bool) or not isinstance(flags, int):
        raise FerryError("E_INVALIDARG", "helper token flags must be an integer")
    body = encode({"flags": int(flags)})
    return Call("PUT", _token_options_base(job, handle) + "/flags", body, _as_obj)


def logoff(user: str | int | None = None, session: int | None = None) -> Call[JSONObj]:
    if (user is None) == (session is None):
        raise FerryError("E_INVALIDARG", "give exactly one of user and session")
    body: JSONObj = {"user": user} if user is not None else {"session": session}
    return Call("POST", f"{API_PREFIX}/logoff", encode(body), _as_obj)
