"""The one thread that does a blocking store's work, and its group commit.

ferryd's event loop serves every client and drives every transfer, so it must never wait for
a disk: an SQLite commit is an fsync (a fraction of a millisecond on a good SSD, tens of
milliseconds on a busy disk). A :class:`StoreThread` owns the store's one connection on one
dedicated thread. Callers on the event loop hand it work and await a future that the thread
resolves when the work is done:

* a *write* is already serialised when it is submitted (the store encodes the job on the
  calling thread, at call time), so the thread never reads a live ``Job`` and a later change
  to the job cannot leak into an earlier write;
* a *read* (``load_all``, ``pending_notifications``) is a function run alone on the thread.

Group commit. The thread takes the first waiting request and, if it is a write, every write
queued behind it (up to ``max_group``) and hands them to the store's ``apply_group`` as one
group: one transaction, one fsync, however many callers. Writes submitted while that commit
is in flight wait in the queue and form the next group. A lone write on an idle store is thus
committed at once (no timer, no added latency), and a busy store pays one fsync per group
instead of one per caller. How a group keeps one failing write from failing the others
(SQLite: a savepoint per write) is the store's business; it returns one outcome per write.

Order. One FIFO queue, filled in call order, drained in order: writes are applied in the
order they were submitted, and a read ends the group in front of it, so it runs after every
write submitted before it has committed.

Results come back to each caller's event loop with one ``call_soon_threadsafe`` per group
(not one per write), and a caller that is cancelled while waiting does not withdraw its
write: it was submitted, so it is applied, and only the answer is dropped.

What it costs (benchmarks/store_bench.py). The thread shares the GIL with the loop, but
SQLite releases it for every statement and for the fsync, so the loop is held up only by
the short Python stretches between statements: no longer than a fraction of a millisecond,
where the synchronous store called on the loop blocked it for a whole transaction each
time. A lone caller pays two thread wake-ups per write (~0.1 ms here); concurrent callers
share them, and the fsync, per group.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Generic, TypeVar

from ..errors import FerryError

log = logging.getLogger("ferry.store")

W = TypeVar("W")

# What the store's apply_group returns for each write: (value, None) or (None, the error).
Outcome = tuple[Any, BaseException | None]

# At most this many writes per transaction. Past a few dozen, a bigger group saves almost
# nothing (the fsync is already shared), while it lengthens the wait of its first caller, the
# WAL append, and the stretch in which the thread runs Python between SQLite calls (~45 µs a
# write for SQLite) and the loop may have to wait for the GIL.
MAX_GROUP = 64

_WRITE, _READ, _CLOSE = 0, 1, 2


class _Request:
    __slots__ = ("kind", "work", "then", "loop", "future")

    def __init__(
        self, kind: int, work: Any, then: Callable[[Any], Any] | None, threadsafe: bool = False
    ) -> None:
        self.kind = kind
        self.work = work
        self.then = then
        self.loop: asyncio.AbstractEventLoop | None = None
        if not threadsafe:
            # Outside a running loop (``asyncio.run(store.insert_job(job))`` makes the
            # coroutine before the loop exists) the future is a thread-safe one instead.
            with contextlib.suppress(RuntimeError):
                self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[Any] | concurrent.futures.Future[Any] = (
            concurrent.futures.Future() if self.loop is None else self.loop.create_future()
        )


class StoreThread(Generic[W]):
    """Runs a store's blocking work on one thread; see the module docstring.

    ``apply_group(writes)`` applies a group of writes durably and returns one
    :data:`Outcome` per write, in order; it must not raise. ``close()`` releases the store;
    it runs on the thread after every request submitted before it. ``closed_error()`` is
    what a call after close raises.
    """

    def __init__(
        self,
        name: str,
        apply_group: Callable[[Sequence[W]], list[Outcome]],
        close: Callable[[], None],
        closed_error: Callable[[], BaseException],
        *,
        max_group: int = MAX_GROUP,
    ) -> None:
        self._apply_group = apply_group
        self._close = close
        self._closed_error = closed_error
        self._max_group = max_group
        self._queue: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        # Guards `_closing`/`_broken` against the queue: once either is set, nothing more is
        # queued, so the thread can fail whatever is left and no caller waits forever.
        self._lock = threading.Lock()
        self._closing: _Request | None = None
        self._broken: BaseException | None = None
        self._taken: list[_Request] = []
        # Counted on the thread, read anywhere (benchmarks, logs): writes / groups is the
        # mean group size, how many callers each commit served.
        self.groups = 0
        self.writes = 0
        # A daemon thread: a store that is never closed must not keep the process alive.
        # Nothing acknowledged is lost that way; a write is only acknowledged once committed.
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._closing is not None or self._broken is not None

    # ---- the event-loop side ---------------------------------------------------------

    def write(self, w: W, then: Callable[[Any], Any] | None = None) -> Coroutine[Any, Any, Any]:
        """Queue a write now; the coroutine answers once it is durable.

        ``then(value)`` turns the store's value into the caller's result; it runs on the
        caller's loop before the future is resolved, and runs even if the caller was cancelled
        (so, e.g., a notification's outbox id is always recorded).
        """
        return self._submit(_Request(_WRITE, w, then))

    def read(self, fn: Callable[[], Any]) -> Coroutine[Any, Any, Any]:
        """Queue ``fn`` to run alone on the thread, after every write submitted before it."""
        return self._submit(_Request(_READ, fn, None))

    async def close(self) -> None:
        """Finish everything queued, then release the store. Idempotent; every caller waits
        until the store is closed."""
        with self._lock:
            req = self._closing
            if req is None and self._broken is None:
                # A thread-safe future, so that closers on any loop can share it.
                req = self._closing = _Request(_CLOSE, None, None, threadsafe=True)
                self._queue.put(req)
        if req is None:  # the thread died; nothing is left to finish
            return
        assert isinstance(req.future, concurrent.futures.Future)
        # Shielded: a closer that is cancelled must not cancel the close for the others.
        await asyncio.shield(asyncio.wrap_future(req.future))
        self._thread.join()  # immediate: resolving the close is the thread's last act

    def _submit(self, req: _Request) -> Coroutine[Any, Any, Any]:
        with self._lock:
            if self._broken is not None:
                error: BaseException = _thread_died(self._broken)
            elif self._closing is not None:
                error = self._closed_error()
            else:
                self._queue.put(req)
                return _wait(req.future)
        req.future.cancel()
        return _raise(error)

    # ---- the thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # a bug in the store: fail loudly, never hang callers
            log.exception("the store thread %s died", self._thread.name)
            with self._lock:
                self._broken = exc
            with contextlib.suppress(Exception):
                self._close()
            left = self._taken
            while True:
                try:
                    left.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            # A close waiting among them is done: the store was just released.
            died = [(None, None if r.kind == _CLOSE else _thread_died(exc)) for r in left]
            self._resolve(left, died)

    def _serve(self) -> None:
        get, get_nowait = self._queue.get, self._queue.get_nowait
        # Requests taken off the queue and not yet answered, in order: what _run must still
        # answer if this loop ever dies. After a group, it holds the read or close that
        # ended it, to be served next.
        taken = self._taken = []
        while True:
            if not taken:
                taken.append(get())
            req = taken[0]
            if req.kind == _WRITE:
                while len(taken) < self._max_group:
                    try:
                        nxt = get_nowait()
                    except queue.Empty:
                        break
                    taken.append(nxt)
                    if nxt.kind != _WRITE:
                        break  # a read or the close ends the group: next, once it committed
                n = len(taken) if taken[-1].kind == _WRITE else len(taken) - 1
                group = taken[:n]
                try:
                    outcomes = self._apply_group([r.work for r in group])
                except Exception as exc:  # apply_group answers per write; this is a bug
                    log.exception("the store failed a group of %d writes", n)
                    outcomes = [(None, exc)] * n
                self._resolve(group, outcomes)
                self.groups += 1
                self.writes += n
                del taken[:n]
            elif req.kind == _READ:
                try:
                    outcome: Outcome = (req.work(), None)
                except Exception as exc:
                    outcome = (None, exc)
                self._resolve([req], [outcome])
                del taken[0]
            else:
                try:
                    self._close()
                    outcome = (None, None)
                except Exception as exc:
                    outcome = (None, exc)
                self._resolve([req], [outcome])
                del taken[0]
                return

    def _resolve(self, reqs: Sequence[_Request], outcomes: Sequence[Outcome]) -> None:
        """Hand outcomes back: one wake-up per event loop, not one per write."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Request, Outcome]]] = {}
        for req, outcome in zip(reqs, outcomes, strict=True):
            if req.loop is None:
                _settle([(req, outcome)])
            elif (items := by_loop.get(req.loop)) is None:
                by_loop[req.loop] = [(req, outcome)]
            else:
                items.append((req, outcome))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, items)
            except RuntimeError:  # the loop is closed: nobody is left to tell
                log.warning("%d store results for a closed event loop were dropped", len(items))


def _settle(items: list[tuple[_Request, Outcome]]) -> None:
    """On the caller's loop (or the store thread, for a thread-safe future)."""
    for req, (value, error) in items:
        fut = req.future
        if error is None and req.then is not None:
            try:
                value = req.then(value)
            except Exception as exc:
                error = exc
        if fut.cancelled():
            if error is not None:
                log.warning("a store call whose caller went away failed: %s", error)
            continue
        try:
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(value)
        except (asyncio.InvalidStateError, concurrent.futures.InvalidStateError):
            pass  # a thread-safe future cancelled by its caller just now


async def _wait(fut: asyncio.Future[Any] | concurrent.futures.Future[Any]) -> Any:
    if isinstance(fut, concurrent.futures.Future):
        return await asyncio.wrap_future(fut)
    return await fut


async def _raise(error: BaseException) -> Any:
    raise error


def _thread_died(exc: BaseException) -> BaseException:
    err = FerryError("E_FAIL", f"the job store's thread died: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err
