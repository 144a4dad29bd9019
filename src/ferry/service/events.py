"""The event bus: job changes flow from the queue manager to API subscribers.

Events are published only after the change they describe is committed to the store
(ARCHITECTURE principle 6). A subscriber that falls too far behind is dropped rather than
letting memory grow without bound; its stream ends and the client reconnects.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("ferry.events")

JOB_SNAPSHOT = "job-snapshot"
JOB_MODIFICATION = "job-modification"
JOB_TRANSFERRED = "job-transferred"
JOB_ERROR = "job-error"
FILE_TRANSFERRED = "file-transferred"
JOB_REMOVED = "job-removed"


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    job_id: str
    owner_uid: int
    job: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "job_id": self.job_id, "job": self.job}


class Subscription:
    """One subscriber's filtered queue. ``job_id`` None means every job it may see."""

    def __init__(self, job_id: str | None, uid: int | None, maxsize: int) -> None:
        self.job_id = job_id
        self.uid = uid  # None: all users (admin)
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize)
        self.dropped = False

    def wants(self, event: Event) -> bool:
        if self.job_id is not None and event.job_id != self.job_id:
            return False
        return self.uid is None or event.owner_uid == self.uid

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            item = await self.queue.get()
            if item is None:
                return
            yield item


class EventBus:
    def __init__(self, max_backlog: int = 10_000) -> None:
        self._subs: set[Subscription] = set()
        self._max_backlog = max_backlog

    def subscribe(self, job_id: str | None, uid: int | None) -> Subscription:
        sub = Subscription(job_id, uid, self._max_backlog)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    @property
    def has_subscribers(self) -> bool:
        return bool(self._subs)

    def publish(self, event: Event) -> None:
        for sub in list(self._subs):
            if not sub.wants(event):
                continue
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                log.warning("dropping a subscriber that fell %d events behind", self._max_backlog)
                self._drop(sub)

    def _drop(self, sub: Subscription) -> None:
        self._subs.discard(sub)
        sub.dropped = True
        # Make room for the end-of-stream marker.
        while not sub.queue.empty():
            sub.queue.get_nowait()
        sub.queue.put_nowait(None)

    def close(self) -> None:
        for sub in list(self._subs):
            self._drop(sub)
