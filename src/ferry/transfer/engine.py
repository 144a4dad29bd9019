"""The transfer engine: runs one job's files, in order, through the transports into their
temporary files, and reports through JobCallbacks (docs/architecture.md, "The transfer
engine seam").

The engine never changes a job's state; the scheduler owns the task that runs ``run_job``
and cancels it to suspend, cancel or pre-empt the job. A cancelled transfer fsyncs and
reports what reached its temporary files before it returns, so the next run resumes there.

Small files overlap (SPEC §2.4): up to ``parallel_files`` files of a job are in flight at
once over kept-alive connections, while what is observable stays sequential:

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
import os
import posixpath
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from ..errors import FerryError
from ..model.job import Job, JobFile
from ..model.token import Token
from ..model.types import ErrorContext, JobType
from ..security import policy
from ..security.identity import IdentityIO, check_temp_name, new_temp_name, settle
from .base import (
    WRITE_MAX,
    BatchCallbacks,
    JobCallbacks,
    Sink,
    TransferError,
    Transport,
    local_error,
)
from .http import HttpTransport
from .local import LocalTransport

log = logging.getLogger("ferry.transfer")

CHECKPOINT_BYTES = 8 << 20
CHECKPOINT_SECONDS = 1.0
PARALLEL_FILES = 8
OVERLAP_MAX_BYTES = 2 << 20
# How long finished small files may wait to be reported together (counters lag, never lead).
REPORT_DELAY = 0.25
# Names tried for one new temporary file when the name chosen is taken (O_EXCL fails: a file
# that is not ours is there). Each name is persisted before it is tried.
TEMP_NAME_ATTEMPTS = 3


def _fsync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _TempSink(Sink):
    """The temporary file of one file of a job, with overlapped checkpoints: an fsync runs
    on a worker while the loop keeps receiving; its offset is reported only once it is done,
    so the reported progress never runs ahead of the disk."""

    def __init__(
        self,
        identity: IdentityIO,
        job: Job,
        index: int,
        callbacks: JobCallbacks,
        fd: int,
        offset: int,
        on_response: Callable[[], Awaitable[None]],
        checkpoint_bytes: int,
        checkpoint_seconds: float,
    ) -> None:
        self._identity = identity
        self._job = job
        self._index = index
        self._callbacks = callbacks
        self._fd = fd
        self._offset = offset
        self._reported = offset
        self._on_response = on_response
        self._every_bytes = checkpoint_bytes
        self._every_seconds = checkpoint_seconds
        self._loop = asyncio.get_running_loop()
        self._last_sync = self._loop.time()
        self._sync: asyncio.Task[None] | None = None
        self._sync_offset = 0
        # False while the file's length is being changed: what is on disk is then unknown,
        # and nothing may be reported until a later flush settles it.
        self._settled = True
        self._closed = False

    @property
    def fd(self) -> int:
        return self._fd

    @property
    def offset(self) -> int:
        return self._offset

    @property
    def reported(self) -> int:
        return self._reported

    async def response(self) -> None:
        await self._on_response()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        done, size = 0, len(view)
        try:
            while done < size:
                done += os.pwrite(self._fd, view[done : done + WRITE_MAX], self._offset + done)
        except OSError as exc:
            # Only whole writes count: a resume trims whatever a failed write left behind.
            raise local_error(exc, "cannot write the temporary file") from None
        self._offset += size

    def advanced(self, count: int) -> None:
        self._offset += count

    async def checkpoint(self) -> None:
        if self._sync is not None and self._sync.done():
            await self._collect()
        if self._sync is None and self._offset > self._reported:
            due = self._offset - self._reported >= self._every_bytes or (
                self._loop.time() - self._last_sync >= self._every_seconds
            )
            if due:
                self._sync_offset = self._offset
                self._last_sync = self._loop.time()
                self._sync = asyncio.ensure_future(self._identity.fsync(self._fd))

    async def _collect(self) -> None:
        task, self._sync = self._sync, None
        if task is None:
            return
        try:
            await task
        except FerryError as exc:
            raise TransferError.from_ferry_error(exc, context=ErrorContext.LOCAL_FILE) from None
        if self._sync_offset > self._reported:
            self._reported = self._sync_offset
            await self._callbacks.progress(self._job, self._index, self._reported)

    async def _drain(self) -> None:
        """Let an in-flight fsync end without reporting it (the data is being replaced)."""
        task, self._sync = self._sync, None
        if task is not None:
            await settle(task)
            if not task.cancelled():
                task.exception()  # retrieved: a failure here is moot

    async def truncate(self, size: int = 0) -> None:
        await self._drain()
        self._settled = False
        try:
            await self._identity.run_io(os.ftruncate, self._fd, size)
        except OSError as exc:
            raise local_error(exc, "cannot truncate the temporary file") from None
        self._offset = size
        self._reported = min(self._reported, size)
        self._settled = True
        await self.flush(force=True, size=size)

    async def finish(self) -> int:
        """The file is whole: fsync it and close it (one trip to a worker) without reporting
        it; the engine reports the file's completion and its size in file order. Returns the
        size on disk."""
        await self._collect()
        self._closed = True  # the worker closes the descriptor whatever happens
        try:
            await self._identity.run_io(_fsync_and_close, self._fd)
        except OSError as exc:
            raise local_error(exc, "cannot sync the temporary file") from None
        return self._offset

    async def flush(self, *, force: bool = False, size: int | None = None) -> None:
        """fsync everything written so far and report it (end of file, or before giving up
        on an error, so a retry resumes from the last byte received)."""
        await self._collect()
        if size is not None:
            self._offset = size
        if not force and self._offset == self._reported:
            return
        try:
            await self._identity.fsync(self._fd)
        except FerryError as exc:
            raise TransferError.from_ferry_error(exc, context=ErrorContext.LOCAL_FILE) from None
        self._reported = self._offset
        self._last_sync = self._loop.time()
        await self._callbacks.progress(self._job, self._index, self._reported)

    async def save(self) -> None:
        """Best effort, before giving up (an error, or the transfer being stopped): make what
        did arrive durable and report it, so the next run resumes from it. A failure here
        must not hide why the transfer stopped."""
        if not self._settled or self._closed:
            return
        try:
            await self.flush()
        except FerryError as exc:
            log.warning("could not checkpoint %s: %s", self._job.files[self._index].temp_name, exc)

    async def aclose(self) -> None:
        """Wait for an in-flight fsync, then close the descriptor (unless ``finish`` did)."""
        await self._drain()
        if not self._closed:
            self._closed = True
            await self._identity.close(self._fd)


@dataclass(eq=False)
class _Slot:
    """One file of the window: opened, then running, then done (or failed)."""

    pos: int  # position among the files this run transfers
    index: int  # index in job.files
    transport: Transport | None = None
    fd: int | None = None
    offset: int = 0
    announced: bool = True  # False while the name of a new temporary file is not persisted
    create: bool = False  # the temporary file is to be created once its name is persisted
    task: asyncio.Task[None] | None = None
    big: bool = False  # more than overlap_max_bytes (or an unknown size) to receive
    done: bool = False  # every byte is on disk and fsynced; its descriptor is closed
    size: int = 0
    error: BaseException | None = None


class _JobRun:
    """One run of one job: a window of files in flight, completions reported in order.

    ``head`` is the first file not reported complete; files from ``head`` to ``next`` are in
    the window (opened, running, done and waiting to be reported, or failed). At
    most ``width`` run at once, and the window spans at most ``3 * width`` files, so a slow
    file holds back a bounded number of finished ones."""

    def __init__(self, engine: TransferEngine, job: Job, callbacks: JobCallbacks) -> None:
        self.engine = engine
        self.job = job
        self.callbacks = callbacks
        self.batch: BatchCallbacks | None = (
            callbacks if isinstance(callbacks, BatchCallbacks) else None
        )
        self.todo = [i for i, f in enumerate(job.files) if not f.completed]
        self.window: dict[int, _Slot] = {}
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
                        await asyncio.wait_for(self.changed.wait(), timeout)
        except FerryError as exc:
            index = self.todo[min(self.head, len(self.todo) - 1)]
            raise TransferError.from_ferry_error(
                exc, context=ErrorContext.LOCAL_FILE, file_index=index
            ) from None
        finally:
            await self._shutdown()

    def _ready(self) -> tuple[list[_Slot], BaseException | None]:
        """The done files from the head on, and the error of the file after them if it
        failed (reported once the files before it are)."""
        ready: list[_Slot] = []
        pos = self.head
        while (slot := self.window.get(pos)) is not None:
            if slot.error is not None:
                return ready, slot.error
            if not slot.done:
                break
            ready.append(slot)
            pos += 1
        return ready, None

    async def _commit(self, opened: list[_Slot], ready: list[_Slot]) -> None:
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

    async def _create(self, slots: list[_Slot]) -> None:
        """Create the new temporary files of a group under their names, persisted by now;
        then record where each file of the group goes on from. A name that is taken (O_EXCL
        fails: whatever is there is not ours) gives way to a fresh one, persisted in turn
        before it is tried; at most TEMP_NAME_ATTEMPTS names per file. Files past a failed
        one are not created: they will not start in this run."""
        pending: list[_Slot] = []
        for s in sorted(slots, key=lambda s: s.pos):
            if s.error is not None:
                break
            if s.create:
                pending.append(s)
        for attempt in range(1, TEMP_NAME_ATTEMPTS + 1):
            last = attempt == TEMP_NAME_ATTEMPTS
            await self._each(pending, functools.partial(self._create_one, last=last))
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

    async def _create_one(self, slot: _Slot, last: bool) -> None:
        jf = self.job.files[slot.index]
        assert self.token is not None and slot.announced
        try:
            slot.fd = await self.engine.create_temp(self.token, jf)
        except FerryError as exc:
            if exc.code == "ERROR_FILE_EXISTS" and not last:
                log.warning("job %s: %s is taken; trying another name", self.job.id, jf.temp_name)
                jf.temp_name = None
                self.engine.name_temp(jf)
                slot.announced = False
            else:
                slot.error = self._file_error(exc, slot.index)
                self.failed = True
            return
        slot.create = False

    # ---- admission ----------------------------------------------------------------------

    def _known_big(self, index: int) -> bool:
        jf = self.job.files[index]
        return (
            jf.bytes_total is not None
            and jf.bytes_total - jf.bytes_transferred > self.engine.overlap_max_bytes
        )

    def _blocked_by_big(self) -> bool:
        return any(s.big and not s.done for s in self.window.values())

    async def _prepare(self) -> list[_Slot]:
        """Open the temporary files of the next group of ``width`` files, once the files
        opened earlier have all started (one commit announces a group; a group is smaller
        only at the end of the job, or when nothing runs)."""
        opened: list[_Slot] = []
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
            slot = _Slot(pos, self.todo[pos])
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

    async def _open(self, slots: list[_Slot]) -> None:
        """Reopen (or name) the temporary files, all at once."""
        await self._each(slots, self._open_one)

    async def _each(self, slots: list[_Slot], fn: Callable[[_Slot], Awaitable[None]]) -> None:
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

    async def _open_one(self, slot: _Slot) -> None:
        """Reopen the file's temporary file at its checkpoint or, when there is none, name a
        new one: ``_commit`` persists the name, then ``_create`` creates the file."""
        jf = self.job.files[slot.index]
        engine = self.engine
        try:
            if self.token is None:
                try:
                    self.token = policy.local_file_token(self.job)
                except FerryError as exc:
                    raise TransferError.from_ferry_error(
                        exc, context=ErrorContext.LOCAL_FILE, transient=False
                    ) from None
            slot.transport = engine.transport_for(jf)
            opened = await engine.open_temp(self.token, jf)
            if opened is None:
                await engine.check_directory(self.token, jf.local_name, self.checked_dirs)
                engine.name_temp(jf)
        except FerryError as exc:
            slot.error = self._file_error(exc, slot.index)
            self.failed = True
            return
        if opened is None:
            slot.offset, slot.create, slot.announced = 0, True, False
        else:
            slot.fd, slot.offset = opened

    # ---- one file -----------------------------------------------------------------------

    async def _transfer(self, slot: _Slot) -> None:
        """Download one file into its temporary file and fsync it. Never raises but for
        cancellation: the outcome is left in the slot for the run to report in order."""
        assert slot.fd is not None and slot.transport is not None
        engine = self.engine
        sink = _TempSink(
            engine.identity,
            self.job,
            slot.index,
            self.callbacks,
            slot.fd,
            slot.offset,
            lambda: self._on_response(slot, sink),
            engine.checkpoint_bytes,
            engine.checkpoint_seconds,
        )
        try:
            try:
                await slot.transport.download(self.job, slot.index, sink)
                slot.size = await sink.finish()
            except TransferError as exc:
                if exc.code != "BG_E_REMOTE_FILE_CHANGED" and exc.context is not (
                    ErrorContext.LOCAL_FILE
                ):
                    await sink.save()
                slot.error = self._file_error(exc, slot.index)
            except FerryError as exc:
                slot.error = self._file_error(exc, slot.index)
            except asyncio.CancelledError:
                await sink.save()
                raise
            except Exception as exc:  # a bug: reported in order like any failure
                slot.error = exc
            else:
                slot.done = True
                if slot.size <= engine.overlap_max_bytes and not slot.big:
                    self.width = min(engine.parallel_files, 2 * self.width)
        finally:
            try:
                await sink.aclose()
            finally:
                slot.fd = None
                self.running -= 1
                if slot.error is not None:
                    self.failed = True
                self.changed.set()

    async def _on_response(self, slot: _Slot, sink: _TempSink) -> None:
        """The file's response arrived (its size is known when the server said it)."""
        jf = self.job.files[slot.index]
        left = None if jf.bytes_total is None else jf.bytes_total - sink.offset
        if left is None or left > self.engine.overlap_max_bytes:
            # No file after it starts until it is done; then overlap starts small again.
            slot.big = True
            self.width = 1
        if not self.announced_response:
            self.announced_response = True
            await self.callbacks.transferring(self.job)
        self.changed.set()

    def _file_error(self, exc: FerryError, index: int) -> TransferError:
        err = TransferError.from_ferry_error(exc, context=ErrorContext.LOCAL_FILE)
        if err.file_index is None:
            err.file_index = index
        return err

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
                cancelled |= await settle(asyncio.ensure_future(self.engine.identity.close(fd)))
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


class TransferEngine:
    """Runs jobs' downloads. One instance per daemon: it owns the HTTP session (connection
    reuse across files and jobs) and the transports."""

    def __init__(
        self,
        identity: IdentityIO,
        *,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 60.0,
        read_timeout: float = 120.0,
        max_redirects: int = 10,
        checkpoint_bytes: int = CHECKPOINT_BYTES,
        checkpoint_seconds: float = CHECKPOINT_SECONDS,
        parallel_files: int = PARALLEL_FILES,
        overlap_max_bytes: int = OVERLAP_MAX_BYTES,
        transports: Iterable[Transport] | None = None,
    ) -> None:
        self.identity = identity
        self.checkpoint_bytes = checkpoint_bytes
        self.checkpoint_seconds = checkpoint_seconds
        self.parallel_files = max(1, parallel_files)
        self.overlap_max_bytes = overlap_max_bytes
        if transports is None:
            transports = (
                HttpTransport(
                    ssl_context=ssl_context,
                    connect_timeout=connect_timeout,
                    read_timeout=read_timeout,
                    max_redirects=max_redirects,
                    identity=identity,  # one pool of workers for the daemon, not two
                ),
                LocalTransport(identity),
            )
        self._transports: dict[str, Transport] = {}
        for transport in transports:
            for scheme in transport.schemes:
                self._transports[scheme] = transport

    async def close(self) -> None:
        for transport in set(self._transports.values()):
            await transport.close()

    async def run_job(self, job: Job, callbacks: JobCallbacks) -> None:
        """Transfer every file of ``job`` that is not complete yet, completions reported in
        file order. Raises TransferError (with ``file_index``) for the first file that
        fails; the scheduler decides what the job's state becomes."""
        if job.type is not JobType.DOWNLOAD:
            raise TransferError(
                "BG_E_UNSUPPORTED_JOB_CONFIGURATION",
                f"{job.type.value} jobs are not supported yet",
                context=ErrorContext.GENERAL_QUEUE_MANAGER,
                transient=False,
            )
        await _JobRun(self, job, callbacks).run()

    def transport_for(self, jf: JobFile) -> Transport:
        scheme = jf.remote_name.partition(":")[0].lower()
        transport = self._transports.get(scheme)
        if transport is None:
            raise TransferError(
                "BG_E_PROTOCOL_NOT_AVAILABLE",
                f"no transport for the {scheme!r} scheme",
                context=ErrorContext.REMOTE_FILE,
                transient=False,
            )
        return transport

    async def open_temp(self, token: Token, jf: JobFile) -> tuple[int, int] | None:
        """Reopen the file's temporary file at its last checkpoint: (fd, bytes of the file
        already in it). None when there is nothing to go on from: no temporary name yet, or
        no file under the persisted name (a crash came before it was created, or it was
        deleted); then a new temporary file is named (``name_temp``), its name persisted,
        and only then created (``create_temp``)."""
        if not jf.temp_name:
            return None
        try:
            check_temp_name(jf.local_name, jf.temp_name)
        except FerryError:
            return None  # not a name ferry makes (a damaged store): never open it; replaced
        try:
            fd = await self.identity.open_temp(token, jf.temp_name)
        except FerryError as exc:
            if exc.code != "ERROR_FILE_NOT_FOUND":
                raise TransferError.from_ferry_error(exc, context=ErrorContext.LOCAL_FILE) from None
            return None
        try:
            size = os.fstat(fd).st_size
            keep = min(size, jf.bytes_transferred)
            if size != keep:
                # Bytes past the checkpoint were never reported as durable.
                await self.identity.run_io(os.ftruncate, fd, keep)
        except OSError as exc:
            await self.identity.close(fd)
            raise local_error(exc, f"cannot trim {jf.temp_name}") from None
        except BaseException:
            await self.identity.close(fd)
            raise
        return fd, keep

    async def check_directory(
        self, token: Token, local_name: str, checked_dirs: set[str] | None = None
    ) -> None:
        """The directory of ``local_name`` exists and ``token`` can search it (before a new
        temporary file is named there). ``checked_dirs`` remembers the directories already
        checked in this run."""
        directory = posixpath.dirname(local_name)
        if checked_dirs is None or directory not in checked_dirs:
            await self.identity.check_directory(token, local_name)
            if checked_dirs is not None:
                checked_dirs.add(directory)

    def name_temp(self, jf: JobFile) -> None:
        """Give the file a new, empty temporary file, by name only: ``jf.temp_name`` must be
        persisted before ``create_temp`` creates it. A persisted name whose file does not
        exist is kept (so the store never loses track of it); otherwise a fresh name is
        chosen. The old validator is moot: the file starts over from its first byte."""
        if jf.temp_name is not None:
            try:
                check_temp_name(jf.local_name, jf.temp_name)
            except FerryError:
                jf.temp_name = None  # not a name we would make: nothing of ours is there
        if jf.temp_name is None:
            jf.temp_name = new_temp_name(jf.local_name)
        jf.validator = None

    async def create_temp(self, token: Token, jf: JobFile) -> int:
        """Create the temporary file named by ``jf.temp_name`` (persisted by now) with O_EXCL;
        returns its descriptor. ERROR_FILE_EXISTS when the name is taken: what is there is
        not ours, and is left alone."""
        assert jf.temp_name is not None
        fd, _ = await self.identity.create_temp(token, jf.local_name, jf.temp_name)
        return fd
