"""A cancellation that arrives as an awaited event is set must still cancel the waiter.

On Python 3.11 ``asyncio.wait_for`` returned the event's result instead (the inner wait had
finished when the outer task saw its cancellation): the scheduler, which waits for a kick
of the run queue in a loop, then never stopped on SIGTERM when a kick raced it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from ferry.service.outbox import Outbox
from ferry.service.runqueue import RunQueue


async def _cancel_as_woken(wait_loop: asyncio.Task[None], wake: asyncio.Event) -> bool:
    await asyncio.sleep(0.05)  # the task waits on the event now
    wake.set()
    await asyncio.sleep(0)  # the event's waiters are done; the task has not run yet
    wait_loop.cancel()
    for _ in range(10):
        await asyncio.sleep(0)
        wake.set()  # more kicks, as a stopping daemon makes
    done, _ = await asyncio.wait([wait_loop], timeout=5)
    if not done:
        wait_loop.cancel()
    return wait_loop.cancelled()


def test_run_queue_wait_passes_a_racing_cancellation_on() -> None:
    async def main() -> bool:
        queue = RunQueue()

        async def scheduler_loop() -> None:
            while True:
                await queue.wait(30.0)

        task = asyncio.create_task(scheduler_loop())
        return await _cancel_as_woken(task, queue._wake)

    assert asyncio.run(main())


def test_outbox_wait_passes_a_racing_cancellation_on() -> None:
    async def main() -> bool:
        outbox = Outbox.__new__(Outbox)
        outbox._wake = asyncio.Event()

        async def notifier_loop() -> None:
            while True:
                await outbox.wait(30.0)

        task = asyncio.create_task(notifier_loop())
        return await _cancel_as_woken(task, outbox._wake)

    assert asyncio.run(main())


def test_a_service_that_ignores_cancellation_is_reported_not_waited_for(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from ferry.daemon.main import stop_services

    async def main() -> list[str]:
        async def stubborn() -> None:
            while True:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(30)

        async def polite() -> None:
            await asyncio.sleep(30)

        tasks = [
            asyncio.create_task(stubborn(), name="stubborn"),
            asyncio.create_task(polite(), name="polite"),
        ]
        await asyncio.sleep(0)
        stuck = await stop_services(tasks, 0.2)
        names = [t.get_name() for t in stuck]
        assert tasks[1].cancelled()
        for t in stuck:  # let the test's loop close
            t.get_coro().close()  # type: ignore[union-attr]
        return names

    with caplog.at_level(logging.ERROR, logger="ferry.daemon"):
        assert asyncio.run(main()) == ["stubborn"]
    assert "service stubborn did not stop" in caplog.text
    assert "stubborn" in caplog.text and "polite" not in caplog.text
