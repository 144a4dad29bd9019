"""The client's side of the API, with no I/O: requests built from the contract's routes
(``ferry.protocol``), request bodies, response interpretation and the Server-Sent-Events
parser.

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
from typing import Any, Generic, TypeVar
from urllib.parse import urlencode

from ..errors import FerryError
from ..model.types import JobState, JobType, Priority
from ..protocol import (
    ACTION_BY_NAME,
    INTERFACES,
    PROPERTIES,
    PROPERTY_BY_NAME,
    ROUTE_BY_NAME,
    SETTABLE_PROPERTIES,
)
from ..protocol.contract import wire_value

T = TypeVar("T")
JSONObj = dict[str, Any]

JSON_HEADERS: Mapping[str, str] = {"Content-Type": "application/json"}
SSE_HEADERS: Mapping[str, str] = {"Accept": "text/event-stream"}

# States in which Job.wait returns: the transfer is over for now, one way or another.
WAIT_DONE_STATES = frozenset(
    {JobState.TRANSFERRED, JobState.ERROR, JobState.ACKNOWLEDGED, JobState.CANCELLED}
)


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


def _job(job: str) -> str:
    if not isinstance(job, str) or not job:
        raise FerryError("E_INVALIDARG", "a job id or display name is required")
    return job


def _handle(handle: str) -> str:
    if not isinstance(handle, str) or not handle:
        raise FerryError("E_INVALIDARG", "a handle is required")
    return handle


def _call(
    operation: str,
    parse: Callable[[Any], T],
    body: bytes | None = None,
    query: str = "",
    **params: str,
) -> Call[T]:
    """The request of the contract's route ``operation``: its method, and its path with the
    job / handle filled in (quoted, so names with spaces, slashes or ``?`` survive)."""
    route = ROUTE_BY_NAME[operation]
    return Call(route.method, route.target(**params) + query, body, parse)


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
    return _call("status", _as_obj)


def create_job(
    display_name: str,
    type: JobType | str = JobType.DOWNLOAD,
    priority: Priority | str = Priority.NORMAL,
    description: str = "",
) -> Call[JSONObj]:
    body: JSONObj = {
        "display_name": display_name,
        "type": wire_value(type),
        "priority": wire_value(priority),
    }
    if description:
        body["description"] = description
    return _call("create_job", _as_obj, encode(body))


def get_job(job: str) -> Call[JSONObj]:
    return _call("get_job", _as_obj, job=_job(job))


def list_jobs(all_users: bool = False) -> Call[list[JSONObj]]:
    return _call("list_jobs", _key_list("jobs"), query="?all_users=true" if all_users else "")


def set_job(job: str, props: Mapping[str, Any]) -> Call[JSONObj]:
    """PATCH the job with any of the contract's ``PROPERTIES``, each converted by its
    ``to_wire`` (enums and flags become wire values; a notify command line given as one
    string is split like a shell would, an empty one clears it). Unknown names are refused
    here, before a round trip, because a typo in a keyword argument should fail loudly
    rather than be silently ignored."""
    unknown = sorted(set(props) - SETTABLE_PROPERTIES)
    if unknown:
        raise FerryError("E_INVALIDARG", f"unknown job property: {', '.join(unknown)}")
    if not props:
        raise FerryError("E_INVALIDARG", "no property to set")
    body = {k: PROPERTY_BY_NAME[k].to_wire(v) for k, v in props.items()}
    return _call("set_job", _as_obj, encode(body), job=_job(job))


def set_doc(what: str) -> str:
    """The docstring of ``Job.set``/``AsyncJob.set``, listing the contract's properties."""
    lines = [f"Change properties ({what}); keywords, each optional:", ""]
    lines += [f"* ``{p.keyword}``: {p.description}" for p in PROPERTIES]
    lines += [
        "",
        "Enums and flags (``ferry.Priority``, ``ferry.NotifyFlags``) are taken as they are; a",
        "command line may be one string, split like a shell would ('' or None clears it).",
    ]
    return "\n".join(lines)


def list_files(job: str) -> Call[list[JSONObj]]:
    return _call("list_files", _key_list("files"), job=_job(job))


FileSpec = tuple[Any, Any] | tuple[Any, Any, str | None]


def file_entries(files: Iterable[FileSpec]) -> list[JSONObj]:
    """``(remote, local)`` or ``(remote, local, sha256)`` tuples as the contract's file
    entries. Local names become absolute against the *client's* working directory: the
    daemon runs elsewhere and refuses relative names, while a user typing ``ferry add J URL
    out.iso`` means the file next to them. Remote names are passed through untouched: only
    URLs are valid remotes, and guessing ``file://`` for a path would hide the mistake. A
    SHA-256 (64 hex digits, None for none) is checked by ferryd when the file is complete."""
    out: list[JSONObj] = []
    for spec in files:
        if not isinstance(spec, tuple | list) or len(spec) not in (2, 3):
            raise FerryError(
                "E_INVALIDARG", "files are (remote, local) or (remote, local, sha256) tuples"
            )
        remote, local = spec[0], spec[1]
        sha256 = spec[2] if len(spec) == 3 else None
        local_str = os.fspath(local)
        if not isinstance(remote, str) or not isinstance(local_str, str):
            raise FerryError("E_INVALIDARG", "remote and local names must be strings")
        if "\x00" in local_str:
            # abspath would happily carry a NUL along; the daemon refuses it, say so early.
            raise FerryError("E_INVALIDARG", "local name contains a NUL byte")
        entry: JSONObj = {"remote_name": remote, "local_name": os.path.abspath(local_str)}
        if sha256 is not None:
            entry["sha256"] = sha256
        out.append(entry)
    if not out:
        raise FerryError("E_INVALIDARG", "no files given")
    return out


def add_files(job: str, files: Iterable[FileSpec]) -> Call[JSONObj]:
    body = {"files": file_entries(files)}
    return _call("add_files", _as_obj, encode(body), job=_job(job))


def action(job: str, name: str) -> Call[tuple[str, JSONObj]]:
    """resume / suspend / cancel / complete / take-ownership: the answer carries the BITS
    result code (``S_OK`` or ``BG_S_PARTIAL_COMPLETE``) and the job after the change."""
    act = ACTION_BY_NAME.get(name)
    if act is None:
        raise ValueError(f"unknown job action {name!r}")
    return _call(act.operation, _action_result, b"{}", job=_job(job))


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
    return ROUTE_BY_NAME["events"].path + (f"?{urlencode(query)}" if query else "")


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

    @property
    def dynamic_content(self) -> bool:
        return bool(self.data.get("dynamic_content"))

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

    def __repr__(self) -> str:
        return f"<FileInfo {self.remote_name} -> {self.local_name}>"


def timeout_error(job_id: str, timeout: float) -> FerryError:
    """wait() ran out of time. A FerryError (not TimeoutError) so the CLI and callers
    handle it like every other failure."""
    return FerryError("BG_E_WATCHDOG_TIMEOUT", f"job {job_id} did not finish within {timeout:g} s")


# ---- handles and IBitsTokenOptions (SPEC §4.3, §4.4) --------------------------------------


def open_handle(job: str, interface: str = "job", ttl: int | None = None) -> Call[JSONObj]:
    """QueryInterface: ferryd checks access now, with this connection's identity."""
    if interface not in INTERFACES:
        raise FerryError("E_INVALIDARG", f"unknown interface {interface!r}")
    body: JSONObj = {"interface": interface}
    if ttl is not None:
        body["ttl"] = ttl
    return _call("open_handle", _as_obj, encode(body), job=_job(job))


def release_handle(handle: str) -> Call[JSONObj]:
    return _call("release_handle", _as_obj, handle=_handle(handle))


def _token_options(
    operation: str, job: str | None, handle: str | None, body: bytes | None = None
) -> Call[JSONObj]:
    """With a handle the call is judged by whoever opened it; without one, the caller is
    treated as having opened a handle this very moment."""
    if (job is None) == (handle is None):
        raise FerryError("E_INVALIDARG", "give a job or a handle")
    if handle is not None:
        return _call(f"handle_{operation}", _as_obj, body, handle=_handle(handle))
    return _call(f"job_{operation}", _as_obj, body, job=_job(job or ""))


def get_helper_token(job: str | None = None, handle: str | None = None) -> Call[JSONObj]:
    return _token_options("get_helper_token", job, handle)


def set_helper_token(job: str | None = None, handle: str | None = None) -> Call[JSONObj]:
    return _token_options("set_helper_token", job, handle, b"{}")


def clear_helper_token(job: str | None = None, handle: str | None = None) -> Call[JSONObj]:
    return _token_options("clear_helper_token", job, handle)


def set_helper_token_flags(
    flags: int, job: str | None = None, handle: str | None = None
) -> Call[JSONObj]:
    if isinstance(flags, bool) or not isinstance(flags, int):
        raise FerryError("E_INVALIDARG", "helper token flags must be an integer")
    body = encode({"flags": int(flags)})
    return _token_options("set_helper_token_flags", job, handle, body)


def logoff(user: str | int | None = None, session: int | None = None) -> Call[JSONObj]:
    if (user is None) == (session is None):
        raise FerryError("E_INVALIDARG", "give exactly one of user and session")
    body: JSONObj = {"user": user} if user is not None else {"session": session}
    return _call("logoff", _as_obj, encode(body))
