"""Server-Sent Events, with no I/O: the event-stream parser (``SSEParser``) that both
clients feed the bytes of ``GET /v1/events`` to, and the job events (``Event``, public as
``ferry.Event``) decoded from its messages.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..model.types import JobState
from ._ops import JSONObj


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
