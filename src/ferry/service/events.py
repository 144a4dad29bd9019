"""The event bus: job changes flow from the queue manager to API subscribers (the counterpart
of IBackgroundCopyCallback, SPEC §2.6).

Events are published only after the change they describe is committed to the store
(ARCHITECTURE principle 6). Each subscriber has its own filtered queue:

* **Callback subscribers** (the default) receive what the job's ``notify_flags`` ask for:
  ``job-transferred`` (JOB_TRANSFERRED), ``job-error`` (JOB_ERROR), ``file-transferred``
  (FILE_TRANSFERRED), ``job-modification`` (JOB_MODIFICATION); DISABLE silences the job.
  A change whose specific flag is off but JOB_MODIFICATION is on arrives as
  ``job-modification`` (it *is* a modification), so such a subscriber misses no state.
* **Observers** (``all_events``: waiters, progress bars, ``ferry wait``) receive every
  change whatever the flags: they read state, they are not the job's callback.

Both start with a ``job-snapshot`` of each matching job (the answer to subscribing, sent
whatever the flags), so a late subscriber sees the current state first.

``job-modification`` events are rate-limited per subscriber and job: one that does not
change the job's state and comes less than ``min_interval`` after the previous event of that
job is held, and a newer one replaces it (coalescing). The held event is delivered when the
interval has passed — or dropped when a later event of the same job is delivered first,
since that one carries a newer state. The latest state is never lost, and a state change is
never delayed.

A subscriber that falls too far behind is dropped rather than letting memory grow without
bound; its stream ends and the client reconnects (and gets fresh snapshots).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

from ..model.types import NotifyFlags

log = logging.getLogger("ferry.events")

JOB_SNAPSHOT = "job-snapshot"
JOB_MODIFICATION = "job-modification"
JOB_TRANSFERRED = "job-transferred"
JOB_ERROR = "job-error"
FILE_TRANSFERRED = "file-transferred"
JOB_REMOVED = "job-removed"

# Which flag lets an event through to a callback subscriber.
_FLAG_FOR = {
    JOB_TRANSFERRED: NotifyFlags.JOB_TRANSFERRED,
    JOB_ERROR: NotifyFlags.JOB_ERROR,
    FILE_TRANSFERRED: NotifyFlags.FILE_TRANSFERRED,
    JOB_MODIFICATION: NotifyFlags.JOB_MODIFICATION,
}


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    job_id: str
    owner_uid: int
    job: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "job_id": self.job_id, "job": self.job}

    @property
    def state(self) -> Any:
        return self.job.get("state")


def for_callback(event: Event) -> Event | None:
    """The event as a callback subscriber receives it under the job's notify_flags, or None
    when the flags silence it."""
    if event.type == JOB_SNAPSHOT:
        return event
    flags = NotifyFlags(int(event.job.get("notify_flags", 0)) & int(NotifyFlags.all()))
    if flags & NotifyFlags.DISABLE:
        return None
    if event.type == JOB_REMOVED:
        return event  # the end of the job: every subscriber that may hear of it does
    flag = _FLAG_FOR.get(event.type)
    if flag is not None and flags & flag:
        return event
    if flags & NotifyFlags.JOB_MODIFICATION:
        return replace(event, type=JOB_MODIFICATION)
    return None


class Subscription:
    """One subscriber's filtered, rate-limited queue. ``job_id`` None means every job it
    may see; ``uid`` None means every user's (an administrator's ``all_users``)."""

    def __init__(
        self,
        job_id: str | None,
        uid: int | None,
        maxsize: int,
        min_interval: float = 0.0,
        all_events: bool = False,
    ) -> None:
        self.job_id = job_id
        self.uid = uid
        self.all_events = all_events
        self.min_interval = min_interval
        self.dropped = False
        self._maxsize = maxsize
        self._ready: deque[Event] = deque()
        self._held: dict[str, Event] = {}  # job id -> the newest coalesced modification
        self._last_time: dict[str, float] = {}  # job id -> when its last event was queued
        self._last_state: dict[str, Any] = {}
        self._wake = asyncio.Event()
        self._ended = False

    def wants(self, event: Event) -> bool:
        if self.job_id is not None and event.job_id != self.job_id:
            return False
        return self.uid is None or event.owner_uid == self.uid

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def offer(self, event: Event) -> bool:
        """Queue (or hold, or filter out) an event; False when the queue is full."""
        if self._ended:
            return True
        delivered = event if self.all_events else for_callback(event)
        if delivered is None:
            return True
        jid = delivered.job_id
        now = self._now()
        if delivered.type == JOB_MODIFICATION and self.min_interval > 0:
            last = self._last_time.get(jid)
            if (
                last is not None
                and now - last < self.min_interval
                and delivered.state == self._last_state.get(jid)
            ):
                self._held[jid] = delivered
                self._wake.set()  # the reader recomputes when to release it
                return True
        self._held.pop(jid, None)
        return self._queue(delivered, now)

    def sent_snapshot(self, event: Event) -> None:
        """A snapshot went out directly (not through the queue): the rate limit of that job
        counts from it."""
        self._last_time[event.job_id] = self._now()
        self._last_state[event.job_id] = event.state

    def _queue(self, event: Event, now: float) -> bool:
        if len(self._ready) >= self._maxsize:
            return False
        self._ready.append(event)
        if event.type == JOB_REMOVED:
            self._last_time.pop(event.job_id, None)
            self._last_state.pop(event.job_id, None)
        else:
            self._last_time[event.job_id] = now
            self._last_state[event.job_id] = event.state
        self._wake.set()
        return True

    def _release_due(self, now: float) -> float | None:
        """Queue held events whose interval has passed; returns the next release time."""
        next_due: float | None = None
        for jid, event in list(self._held.items()):
            due = self._last_time.get(jid, now) + self.min_interval
            if due <= now:
                del self._held[jid]
                if not self._queue(event, now):
                    self.end()
                    return None
            else:
                next_due = due if next_due is None else min(next_due, due)
        return next_due

    async def get(self, timeout: float | None = None) -> Event | None:
        """The next event; None once the subscription has ended. Raises TimeoutError when
        nothing is delivered within ``timeout`` seconds (the subscription stays usable)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            now = loop.time()
            next_due = self._release_due(now) if self._held else None
            if self._ready:
                return self._ready.popleft()
            if self._ended:
                return None
            wait_until = next_due
            if deadline is not None:
                if now >= deadline:
                    raise TimeoutError
                wait_until = deadline if wait_until is None else min(wait_until, deadline)
            self._wake.clear()
            try:
                if wait_until is None:
                    await self._wake.wait()
                else:
                    async with asyncio.timeout(max(wait_until - now, 0.0)):
                        await self._wake.wait()
            except TimeoutError:
                pass

    def end(self) -> None:
        """End the stream at once (shutdown, or a subscriber that fell behind)."""
        self._ended = True
        self._ready.clear()
        self._held.clear()
        self._wake.set()


class EventBus:
    def __init__(self, max_backlog: int = 10_000, min_interval: float = 0.0) -> None:
        self._subs: set[Subscription] = set()
        self._max_backlog = max_backlog
        self.min_interval = min_interval

    def subscribe(
        self, job_id: str | None, uid: int | None, all_events: bool = False
    ) -> Subscription:
        sub = Subscription(job_id, uid, self._max_backlog, self.min_interval, all_events)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    @property
    def has_subscribers(self) -> bool:
        return bool(self._subs)

    def publish(self, event: Event) -> None:
        for sub in list(self._subs):
            if sub.wants(event) and not sub.offer(event):
                log.warning("dropping a subscriber that fell %d events behind", self._max_backlog)
                self._drop(sub)

    def _drop(self, sub: Subscription) -> None:
        self._subs.discard(sub)
        sub.dropped = True
        sub.end()

    def close(self) -> None:
        for sub in list(self._subs):
            self._drop(sub)
