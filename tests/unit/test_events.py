"""The event bus's delivery rules: notify_flags for callback subscribers, everything for
observers, and the coalescing rate limit of job-modification events."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ferry.service import events as ev
from ferry.service.events import Event, EventBus, for_callback


def event(kind: str, flags: int, state: str = "TRANSFERRING", n: int = 0, job: str = "j") -> Event:
    doc: dict[str, Any] = {"id": job, "state": state, "notify_flags": flags, "n": n}
    return Event(kind, job, 1000, doc)


@pytest.mark.parametrize(
    ("flags", "kind", "expected"),
    [
        (0x3, ev.JOB_TRANSFERRED, ev.JOB_TRANSFERRED),
        (0x3, ev.JOB_ERROR, ev.JOB_ERROR),
        (0x3, ev.JOB_MODIFICATION, None),
        (0x3, ev.FILE_TRANSFERRED, None),
        (0x1, ev.JOB_ERROR, None),
        (0x2, ev.JOB_TRANSFERRED, None),
        (0x10, ev.FILE_TRANSFERRED, ev.FILE_TRANSFERRED),
        (0x8, ev.JOB_MODIFICATION, ev.JOB_MODIFICATION),
        # A change whose own flag is off still is a modification.
        (0x8, ev.JOB_TRANSFERRED, ev.JOB_MODIFICATION),
        (0x8, ev.FILE_TRANSFERRED, ev.JOB_MODIFICATION),
        (0x9, ev.JOB_TRANSFERRED, ev.JOB_TRANSFERRED),
        (0x1B, ev.FILE_TRANSFERRED, ev.FILE_TRANSFERRED),
        (0x4, ev.JOB_TRANSFERRED, None),
        (0x1F, ev.JOB_TRANSFERRED, None),
        (0x1F, ev.JOB_MODIFICATION, None),
        (0x1F, ev.JOB_REMOVED, None),
        (0x0, ev.JOB_REMOVED, ev.JOB_REMOVED),
        (0x0, ev.JOB_MODIFICATION, None),
        # The snapshot answers the subscription: sent whatever the flags.
        (0x4, ev.JOB_SNAPSHOT, ev.JOB_SNAPSHOT),
    ],
)
def test_callback_filter(flags: int, kind: str, expected: str | None) -> None:
    out = for_callback(event(kind, flags))
    assert (out.type if out is not None else None) == expected


async def drain(sub: Any, timeout: float = 0.05) -> list[Event]:
    got: list[Event] = []
    while True:
        try:
            e = await sub.get(timeout)
        except TimeoutError:
            return got
        if e is None:
            return got
        got.append(e)


async def test_observer_gets_everything_even_when_disabled() -> None:
    bus = EventBus()
    sub = bus.subscribe("j", None, all_events=True)
    for kind in (ev.JOB_MODIFICATION, ev.FILE_TRANSFERRED, ev.JOB_TRANSFERRED):
        bus.publish(event(kind, 0x4))
    assert [e.type for e in await drain(sub)] == [
        ev.JOB_MODIFICATION,
        ev.FILE_TRANSFERRED,
        ev.JOB_TRANSFERRED,
    ]


async def test_subscription_filters_by_job_and_owner() -> None:
    bus = EventBus()
    one = bus.subscribe("a", None, all_events=True)
    mine = bus.subscribe(None, 1000, all_events=True)
    other = bus.subscribe(None, 2000, all_events=True)
    bus.publish(event(ev.JOB_MODIFICATION, 0x8, job="a"))
    bus.publish(event(ev.JOB_MODIFICATION, 0x8, job="b"))
    assert [e.job_id for e in await drain(one)] == ["a"]
    assert [e.job_id for e in await drain(mine)] == ["a", "b"]
    assert await drain(other) == []


async def test_modifications_coalesce_and_the_latest_arrives_after_the_interval() -> None:
    bus = EventBus(min_interval=0.3)
    sub = bus.subscribe("j", None)
    sub.sent_snapshot(event(ev.JOB_SNAPSHOT, 0x8))
    for n in range(1, 50):
        bus.publish(event(ev.JOB_MODIFICATION, 0x8, n=n))
    assert await drain(sub, 0.05) == []  # held: same state, inside the interval
    got = await drain(sub, 1.0)
    assert [e.job["n"] for e in got] == [49]  # the latest, never lost


async def test_a_state_change_is_never_delayed_and_supersedes_the_held_event() -> None:
    bus = EventBus(min_interval=10.0)
    sub = bus.subscribe("j", None)
    sub.sent_snapshot(event(ev.JOB_SNAPSHOT, 0x8))
    bus.publish(event(ev.JOB_MODIFICATION, 0x8, n=1))
    bus.publish(event(ev.JOB_MODIFICATION, 0x8, state="TRANSFERRED", n=2))
    got = await drain(sub, 0.1)
    assert [(e.type, e.job["state"], e.job["n"]) for e in got] == [
        (ev.JOB_MODIFICATION, "TRANSFERRED", 2)
    ]


async def test_overflow_drops_the_subscriber_and_ends_its_stream() -> None:
    bus = EventBus(max_backlog=3)
    sub = bus.subscribe(None, None, all_events=True)
    for n in range(5):
        bus.publish(event(ev.JOB_TRANSFERRED, 0x1, n=n, job=f"j{n}"))
    assert sub.dropped
    assert await sub.get(1.0) is None
    assert not bus.has_subscribers


async def test_close_ends_a_waiting_reader() -> None:
    bus = EventBus()
    sub = bus.subscribe(None, None)
    reader = asyncio.ensure_future(sub.get())
    await asyncio.sleep(0.01)
    bus.close()
    assert await asyncio.wait_for(reader, 1.0) is None
