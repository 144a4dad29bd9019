"""The small-file overlap window: one run of one download job. Small files overlap (SPEC
§2.4): up to ``parallel_files`` files of a job are in flight at once over kept-alive
connections, while what is observable stays sequential:

* completions are reported strictly in file order (a file that finishes early waits, fsynced,
  until every file before it is reported), so the completed files are always a prefix;
* progress is only ever reported for bytes already fsynced;
* a failure is reported for the first failing file in file order, after the files before it
  have completed, as a sequential run would have;
* no file starts beside a large one (more than ``overlap_max_bytes`` left, or of unknown
  size): a file known to be large starts only once every file before it is done, and once
  a running file turns out to be large, no file after it starts until it is done. Files
  already in flight go on (a started response is never given up: no byte is fetched
  twice). The window starts at two files and doubles with each small file completed, and
  falls back to one when a large file shows up, so a job of large files runs them one by
  one after at most one overlapping start.

Temporary files are opened a group (``width`` files) at a time. A new temporary file is
named first, its name persisted (``file_started``), and only then created with O_EXCL under
exactly that name: a crash at any moment leaves no temporary file the store does not know
(the store may know a name whose file was never created; the next run creates it, and
cancel or complete deletes it if it exists). With callbacks that batch (``BatchCallbacks``),
a group's new temporary names and the completions ready at that moment share one commit;
completions otherwise wait up to ``REPORT_DELAY`` for the next group, so a job of 1,000 small
files costs some 150 commits instead of 3,000.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable

from ..errors import FerryError
from ..model.job import Job
from ..model.token import Token
from ..model.types import ErrorContext
from ..security.identity import settle
from .base import BatchCallbacks, JobCallbacks, TransferError
from .slot import FileRunner, FileSlot

log = logging.getLogger("ferry.transfer")

# How long finished small files may wait to be reported together (counters lag, never lead).
REPORT_DELAY = 0.25
# Names tried for one new temporary file when the name chosen is taken (O_EXCL fails: a file
# that is not ours is there). Each name is persisted before it is tried.
TEMP_NAME_ATTEMPTS = 3


class JobRun:
    """One run of one job: a window of files in flight, completions reported in order.

    ``head`` is the first file not reported complete; files from ``head`` to ``next`` are in
    the window (opened, running, done and waiting to be reported, or failed). At
    most ``width`` run at once, and the window spans at most ``3 * width`` files, so a slow
    file holds back a bounded number of finished ones."""

    def __init__(self, engine: FileRunner, job: Job, callbacks: JobCallbacks) -> None:
        self.engine = engine
        self.job = job
        self.callbacks = callbacks
        self.batch: BatchCallbacks | None = (
            callbacks if isinstance(callbacks, BatchCallbacks) else None
        )
        self.todo = [i for i, f in enumerate(job.files) if not f.completed]
        self.window: dict[int, FileSlot] = {}
        self.head = 0
        self.next = 0
        self.running = 0  # file tasks in flight
        self.width = min(2, engine.parallel_files)  # grows as small files complete
        self.failed = False  # a file failed: nothing after it starts any more
        self.changed = asyncio.Event()
        self.ready_since: float | None = None
        self.announced_response = False
        self.checked_dirs: set[str] = set()
        self.token: Token | None = None

    # ---- the run ----------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            if self.todo:
                self.token = self.engine.local_file_token(self.job)
            while self.head < len(self.todo):
                self.changed.clear()
                opened = await self._prepare()
                ready, error = self._ready()
                timeout: float | None = None
                if ready and not opened and error is None:
                    # Completions wait to share the commit that announces the next group,
                    # unless nothing else will come soon.
                    now = loop.time()
                    if self.ready_since is None:
                        self.ready_since = now
                    waited = now - self.ready_since
                    if self.running and len(ready) < 2 * self.width and waited < REPORT_DELAY:
                        timeout = REPORT_DELAY - waited
                        ready = []
                if ready or opened:
                    await self._commit(opened, ready)
                if error is not None:
                    raise error
                if opened:
                    await self._create(opened)
                started = await self._start()
                if not ready and not opened and not started:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(timeout):
                            await self.changed.wait()
        except FerryError as exc:
            index = self.todo[min(self.head, len(self.todo) - 1)]
            raise TransferError.from_ferry_error(
                exc, context=ErrorContext.LOCAL_FILE, file_index=index
            ) from None
        finally:
            await self._shutdown()

    def _ready(self) -> tuple[list[FileSlot], BaseException | None]:
        """The done files from the head on, and the error of the file after them if it
        failed (reported once the files before it are)."""
        ready: list[FileSlot] = []
        pos = self.head
        while (slot := self.window.get(pos)) is not None:
            if slot.error is not None:
                return ready, slot.error
            if not slot.done:
                break
            ready.append(slot)
            pos += 1
        return ready, None

    async def _commit(self, opened: list[FileSlot], ready: list[FileSlot]) -> None:
        """One report (one commit with batching callbacks): the names of the new temporary
        files of the files just opened (not created yet), and the completion of the ready
        ones, in order."""
        job = self.job
        started = [s for s in opened if not s.announced]
        if not started and not ready:
            return
        if self.batch is not None:
            await self.batch.report_files(
                job, [s.index for s in started], [(s.index, s.size) for s in ready]
            )
        else:
            for s in started:
                await self.callbacks.file_started(job, s.index)
            for s in ready:
                await self.callbacks.progress(job, s.index, s.size)
                await self.callbacks.file_completed(job, s.index)
        for s in started:
            s.announced = True
        for s in ready:
            del self.window[s.pos]
        self.head += len(ready)
        if ready:
            self.ready_since = None

    async def _create(self, slots: list[FileSlot]) -> None:
        """Create the new temporary files of a group under their names, persisted by now;
        then record where each file of the group goes on from. A name that is taken (O_EXCL
        fails: whatever is there is not ours) gives way to a fresh one, persisted in turn
        before it is tried; at most TEMP_NAME_ATTEMPTS names per file. Files past a failed
        one are not created: they will not start in this run."""
        pending: list[FileSlot] = []
        for s in sorted(slots, key=lambda s: s.pos):
            if s.error is not None:
                break
            if s.create:
                pending.append(s)
        assert self.token is not None
        for attempt in range(1, TEMP_NAME_ATTEMPTS + 1):
            await self._create_group(pending, last=attempt == TEMP_NAME_ATTEMPTS)
            self.failed |= any(s.error is not None for s in pending)
            pending = [s for s in pending if s.create and s.error is None]  # renamed
            if not pending:
                break
            await self._commit(pending, [])
        job = self.job
        for s in slots:
            if s.fd is not None and s.offset != job.files[s.index].bytes_transferred:
                # The checkpoint promised bytes the disk does not have (or the temporary
                # file is new): record the truth before going on.
                await self.callbacks.progress(job, s.index, s.offset)

    async def _create_group(self, slots: list[FileSlot], last: bool) -> None:
        """Create the group's temporary files in one trip to a worker (not one trip per
        file: a job of 1,000 small files made 1,000 thread hops here). Each file's outcome is
        its own (``FileSlot.created``); cancelled, the trip ends and what it created is
        removed, so the slots hold no descriptor."""
        if not slots:
            return
        assert self.token is not None
        files = self.job.files
        names: list[tuple[str, str]] = []
        for s in slots:
            jf = files[s.index]
            assert s.announced and jf.temp_name is not None
            names.append((jf.local_name, jf.temp_name))
        try:
            results = await self.engine.identity.create_temp_many(self.token, names)
        except FerryError as exc:  # the trip itself failed (identity switching)
            for s in slots:
                s.fail(exc)
            return
        for s, result in zip(slots, results, strict=True):
            s.created(self.job, result, last)

    # ---- admission ----------------------------------------------------------------------

    def _known_big(self, index: int) -> bool:
        jf = self.job.files[index]
        return (
            jf.bytes_total is not None
            and jf.bytes_total - jf.bytes_transferred > self.engine.overlap_max_bytes
        )

    def _blocked_by_big(self) -> bool:
        return any(s.big and not s.done for s in self.window.values())

    async def _prepare(self) -> list[FileSlot]:
        """Open the temporary files of the next group of ``width`` files, once the files
        opened earlier have all started (one commit announces a group; a group is smaller
        only at the end of the job, or when nothing runs)."""
        opened: list[FileSlot] = []
        waiting = sum(1 for s in self.window.values() if s.fd is not None and s.task is None)
        first = self.next
        count = min(self.width, len(self.todo) - first, 3 * self.width - (first - self.head))
        if (
            self.failed  # nothing after a failed file starts
            or waiting
            or (count < self.width and self.running and first + count < len(self.todo))
        ):
            count = 0
        for pos in range(first, first + max(count, 0)):
            slot = FileSlot(pos, self.todo[pos])
            self.window[pos] = slot
            opened.append(slot)
            self.next = pos + 1
        if opened:
            await self._open(opened)
        return opened

    def _frontier(self, pos: int) -> bool:
        """Every file before ``pos`` is done."""
        return all(self.window[p].done for p in range(self.head, pos))

    async def _start(self) -> bool:
        """Start opened files in order while fewer than ``width`` run; a file runs beside
        the files before it only if it is not known to be large and none in flight is."""
        started = False
        for pos in range(self.head, self.next):
            slot = self.window[pos]
            if slot.error is not None:
                break  # nothing starts past a failed file
            if slot.done or slot.task is not None:
                continue
            if slot.fd is None:
                break
            if self.running >= self.width:
                break
            if not self._frontier(pos) and (self._blocked_by_big() or self._known_big(slot.index)):
                break
            slot.big = self._known_big(slot.index)
            self.running += 1
            started = True
            slot.task = asyncio.create_task(
                self._transfer(slot), name=f"file-{self.job.id}-{slot.index}"
            )
        return started

    async def _open(self, slots: list[FileSlot]) -> None:
        """Reopen (or name) the temporary files, all at once."""
        assert self.token is not None
        await self._each(
            slots,
            functools.partial(
                FileSlot.open,
                engine=self.engine,
                job=self.job,
                token=self.token,
                checked_dirs=self.checked_dirs,
            ),
        )
        self.failed |= any(s.error is not None for s in slots)

    async def _each(self, slots: list[FileSlot], fn: Callable[[FileSlot], Awaitable[None]]) -> None:
        """Run ``fn`` for every slot at once. A cancellation waits until each has finished
        (what it opened is in its slot, for ``_shutdown`` to close), then propagates."""
        running = [asyncio.ensure_future(fn(s)) for s in slots]
        cancelled = False
        for fut in running:
            cancelled |= await settle(fut)
        if cancelled:
            raise asyncio.CancelledError
        for fut in running:
            fut.result()  # bugs surface here

    # ---- one file -----------------------------------------------------------------------

    async def _transfer(self, slot: FileSlot) -> None:
        """Run one file (``FileSlot.transfer``); the window's part is the bookkeeping."""
        assert self.token is not None
        try:
            await slot.transfer(
                self.engine,
                self.job,
                self.token,
                self.callbacks,
                functools.partial(self._on_response, slot),
            )
            if slot.done and slot.size <= self.engine.overlap_max_bytes and not slot.big:
                self.width = min(self.engine.parallel_files, 2 * self.width)
        finally:
            self.running -= 1
            if slot.error is not None:
                self.failed = True
            self.changed.set()

    async def _on_response(self, slot: FileSlot, offset: int) -> None:
        """The file's response arrived (its size is known when the server said it);
        ``offset`` bytes of it are in its temporary file."""
        jf = self.job.files[slot.index]
        left = None if jf.bytes_total is None else jf.bytes_total - offset
        if left is None or left > self.engine.overlap_max_bytes:
            # No file after it starts until it is done; then overlap starts small again.
            slot.big = True
            self.width = 1
        if not self.announced_response:
            self.announced_response = True
            await self.callbacks.transferring(self.job)
        self.changed.set()

    # ---- stopping -----------------------------------------------------------------------

    async def _shutdown(self) -> None:
        """Stop every file still in flight (each saves its checkpoint and closes its file),
        then report what is done: completions in order from the head, and the bytes of the
        files done past a gap as progress. Runs to its end even if cancelled again."""
        tasks = [s.task for s in self.window.values() if s.task is not None and not s.task.done()]
        for t in tasks:
            t.cancel()
        cancelled = False
        for t in tasks:
            cancelled |= await settle(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("a file transfer of job %s failed", self.job.id, exc_info=t.exception())
        for s in self.window.values():
            if s.fd is not None:  # opened, and never started (or cancelled before it ran)
                fd, s.fd = s.fd, None
                closing = asyncio.ensure_future(self.engine.identity.close(fd))
                cancelled |= await settle(closing)
                if not closing.cancelled() and closing.exception() is not None:
                    log.warning(
                        "job %s file %d: could not close its temporary file: %s",
                        self.job.id,
                        s.index,
                        closing.exception(),
                    )
        try:
            # Completions must not be forgotten. A name not persisted yet needs nothing: its
            # file is created only once its name is persisted.
            ready, _ = self._ready()
            if ready:
                await self._commit([], ready)
            for s in sorted(self.window.values(), key=lambda s: s.pos):
                if s.done and s.size > self.job.files[s.index].bytes_transferred:
                    await self.callbacks.progress(self.job, s.index, s.size)
        except (FerryError, asyncio.CancelledError) as exc:
            log.warning("job %s: could not report every file at the stop: %r", self.job.id, exc)
        if cancelled:
            raise asyncio.CancelledError
