"""A download's temporary file: reopened at its checkpoint, or named, its name persisted, and
only then created (O_EXCL, exactly that name); and the sink a transport writes it through,
which owns durability (overlapped fsyncs, progress reported only for fsynced bytes).

Every file operation acts as the token the engine gives (the job's local-file token), through
``IdentityIO``; the sink's fsyncs and truncations run on its workers, the writes on the loop
thread (page-cache writes of ``WRITE_MAX`` take well under a millisecond).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import posixpath
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import FerryError
from ..model.job import Job, JobFile
from ..model.token import Token
from ..model.types import ErrorContext
from ..security.identity import IdentityIO, settle
from ..security.tempnames import check_temp_name, new_temp_name
from .base import WRITE_MAX, Sink, TransferError, local_error

log = logging.getLogger("ferry.transfer")


def _fsync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# File systems that keep every byte in memory: their fsync is a no-op and cannot block, so
# it runs on the loop thread instead of a worker (issue #15: a trip to a worker per small
# file was a third of ferryd's wake-ups). ``FERRY_TMPFS_INLINE=0`` turns it off.
MEMORY_FILE_SYSTEMS = frozenset({"tmpfs", "ramfs"})
_INLINE = os.environ.get("FERRY_TMPFS_INLINE", "1").strip().lower() not in {"0", "off", "no"}
_memory_devices: dict[int, tuple[float, bool]] = {}  # st_dev -> (when looked up, memory?)


def sync_is_free(fd: int) -> bool:
    """Whether fsync of ``fd`` cannot block: its file system is tmpfs or ramfs (from
    /proc/self/mountinfo, looked up once a minute per device)."""
    if not _INLINE:
        return False
    try:
        dev = os.fstat(fd).st_dev
    except OSError:
        return False
    now = time.monotonic()
    hit = _memory_devices.get(dev)
    if hit is not None and now - hit[0] < 60.0:
        return hit[1]
    memory = _file_system_of(dev) in MEMORY_FILE_SYSTEMS
    if len(_memory_devices) > 64:
        _memory_devices.clear()
    _memory_devices[dev] = (now, memory)
    return memory


def _file_system_of(dev: int) -> str | None:
    want = f"{os.major(dev)}:{os.minor(dev)}"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 6 and fields[2] == want and "-" in fields[6:]:
                    return fields[fields.index("-", 6) + 1]
    except OSError:
        return None
    return None


class TempSink(Sink):
    """The temporary file of one file of a job, with overlapped checkpoints: an fsync runs
    on a worker while the loop keeps receiving; its offset is reported (``report``) only once
    it is done, so the reported progress never runs ahead of the disk. ``where`` names the
    file in log messages (job, file index, temporary name)."""

    def __init__(
        self,
        identity: IdentityIO,
        fd: int,
        offset: int,
        *,
        report: Callable[[int], Awaitable[None]],
        on_response: Callable[[], Awaitable[None]],
        checkpoint_bytes: int,
        checkpoint_seconds: float,
        where: str,
        pace: Callable[[int], Awaitable[None]] | None = None,
        watch: Callable[[Any], Callable[[], None]] | None = None,
    ) -> None:
        # The idle-bandwidth controller watches the socket a transport receives on, until
        # this file's transfer ends (``on_socket``, called by the transport).
        self._watch = watch
        self._unwatch: list[Callable[[], None]] = []
        self._identity = identity
        # Bandwidth limits (bandwidth.py): told of the bytes written since the last call.
        self._pace = pace
        self._paced = offset
        self._fd = fd
        self._offset = offset
        self._reported = offset
        self._report = report
        self._on_response = on_response
        self._every_bytes = checkpoint_bytes
        self._every_seconds = checkpoint_seconds
        self._where = where
        self._loop = asyncio.get_running_loop()
        self._last_sync = self._loop.time()
        self._sync: asyncio.Task[None] | None = None
        self._sync_offset = 0
        # False while the file's length is being changed: what is on disk is then unknown,
        # and nothing may be reported until a later flush settles it.
        self._settled = True
        self._closed = False
        # fsync cannot block here (tmpfs): checkpoints and the last sync run inline.
        self._free_sync = sync_is_free(fd)

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
        at = self._position(size)
        try:
            while done < size:
                done += os.pwrite(self._fd, view[done : done + WRITE_MAX], at + done)
        except OSError as exc:
            # Only whole writes count: a resume trims whatever a failed write left behind.
            raise local_error(exc, "cannot write the temporary file") from None
        self._offset += size

    def _position(self, size: int) -> int:
        """Where in the file the next ``size`` bytes go (ranged.py places them elsewhere)."""
        return self._offset

    def advanced(self, count: int) -> None:
        self._offset += count

    async def checkpoint(self) -> None:
        if self._pace is not None:
            moved = self._offset - self._paced
            self._paced = self._offset
            if moved > 0:
                await self._pace(moved)
        if self._sync is not None and self._sync.done():
            await self._collect()
        if self._sync is None and self._offset > self._reported:
            due = self._offset - self._reported >= self._every_bytes or (
                self._loop.time() - self._last_sync >= self._every_seconds
            )
            if due and self._free_sync:
                await self.flush()
            elif due:
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
            await self._report(self._reported)

    async def _drain(self, why: str) -> bool:
        """Let an in-flight fsync end without reporting it (``why``: the data is being
        replaced, or the file closed after a failure or a stop). Its failure cannot be
        raised here, where it would hide what stopped the transfer; it is logged, and the
        bytes it covered are simply never reported as durable. Returns whether the caller
        was cancelled meanwhile (the caller re-raises once its descriptor is safe)."""
        task, self._sync = self._sync, None
        if task is None:
            return False
        cancelled = await settle(task)
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            log.warning(
                "%s: a checkpoint fsync (up to byte %d) failed while %s: %s",
                self._where,
                self._sync_offset,
                why,
                exc,
            )
        return cancelled

    async def truncate(self, size: int = 0) -> None:
        if await self._drain("the file was being truncated"):
            raise asyncio.CancelledError
        self._settled = False
        try:
            await self._identity.run_io(os.ftruncate, self._fd, size)
        except OSError as exc:
            raise local_error(exc, "cannot truncate the temporary file") from None
        self._offset = size
        self._paced = min(self._paced, size)
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
            if self._free_sync:
                _fsync_and_close(self._fd)
            else:
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
            if self._free_sync:
                try:
                    os.fsync(self._fd)
                except OSError as exc:
                    raise FerryError.from_oserror(exc, "cannot sync the temporary file") from None
            else:
                await self._identity.fsync(self._fd)
        except FerryError as exc:
            raise TransferError.from_ferry_error(exc, context=ErrorContext.LOCAL_FILE) from None
        self._reported = self._offset
        self._last_sync = self._loop.time()
        await self._report(self._reported)

    async def save(self) -> None:
        """Best effort, before giving up (an error, or the transfer being stopped): make what
        did arrive durable and report it, so the next run resumes from it. A failure here
        must not hide why the transfer stopped."""
        if not self._settled or self._closed:
            return
        try:
            await self.flush()
        except FerryError as exc:
            log.warning("%s: could not checkpoint: %s", self._where, exc)

    def on_socket(self, sock: Any) -> None:
        """The transport receives this file's bytes on ``sock``."""
        if self._watch is not None:
            self._unwatch.append(self._watch(sock))

    async def aclose(self) -> None:
        """Wait for an in-flight fsync, then close the descriptor (unless ``finish`` did)."""
        for unwatch in self._unwatch:
            unwatch()
        self._unwatch.clear()
        cancelled = await self._drain("the file was being closed")
        if not self._closed:
            self._closed = True
            if self._free_sync:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
            else:
                await self._identity.close(self._fd)
        if cancelled:
            raise asyncio.CancelledError


# ---- opening the temporary file -------------------------------------------------------------


async def open_temp(
    identity: IdentityIO, token: Token, job: Job, index: int
) -> tuple[int, int] | None:
    """Reopen file ``index``'s temporary file at its last checkpoint: (fd, bytes of the file
    already in it). None when there is nothing to go on from: no temporary name yet, a
    stored name that is not one ferry makes, or no file under the persisted name (a crash
    came before it was created, or it was deleted); then a new temporary file is named
    (``name_temp``), its name persisted, and only then created (``create_temp``)."""
    jf = job.files[index]
    if not jf.temp_name:
        return None
    try:
        check_temp_name(jf.local_name, jf.temp_name)
    except FerryError as exc:
        # A damaged store: never open it (it may be any file of the token's); name_temp
        # replaces it, so the file starts over under a fresh name.
        log.warning(
            "job %s file %d: the stored temporary name %r is not one ferry makes (%s); "
            "not opening it, the file starts over under a new name",
            job.id,
            index,
            jf.temp_name,
            exc.message,
        )
        return None
    try:
        fd = await identity.open_temp(token, jf.temp_name)
    except FerryError as exc:
        if exc.code != "ERROR_FILE_NOT_FOUND":
            raise TransferError.from_ferry_error(exc, context=ErrorContext.LOCAL_FILE) from None
        return None
    try:
        size = os.fstat(fd).st_size
        keep = min(size, jf.bytes_transferred)
        if jf.ranges is not None:
            # A ranged file's bytes sit at their own offsets: its size says nothing of the
            # checkpoint, and what lies past it is written again from the checkpoint on.
            keep = jf.bytes_transferred
        elif size != keep:
            # Bytes past the checkpoint were never reported as durable.
            await identity.run_io(os.ftruncate, fd, keep)
    except OSError as exc:
        await identity.close(fd)
        raise local_error(exc, f"cannot trim {jf.temp_name}") from None
    except BaseException:
        await identity.close(fd)
        raise
    return fd, keep


async def check_directory(
    identity: IdentityIO, token: Token, local_name: str, checked_dirs: set[str] | None = None
) -> None:
    """The directory of ``local_name`` exists and ``token`` can search it (before a new
    temporary file is named there). ``checked_dirs`` remembers the directories already
    checked in this run."""
    directory = posixpath.dirname(local_name)
    if checked_dirs is None or directory not in checked_dirs:
        await identity.check_directory(token, local_name)
        if checked_dirs is not None:
            checked_dirs.add(directory)


def name_temp(jf: JobFile) -> None:
    """Give the file a new, empty temporary file, by name only: ``jf.temp_name`` must be
    persisted before ``create_temp`` creates it. A persisted name whose file does not
    exist is kept (so the store never loses track of it); otherwise a fresh name is
    chosen. The old validator is moot: the file starts over from its first byte."""
    if jf.temp_name is not None:
        try:
            check_temp_name(jf.local_name, jf.temp_name)
        except FerryError:
            jf.temp_name = None  # not a name we would make (open_temp logged it)
    if jf.temp_name is None:
        jf.temp_name = new_temp_name(jf.local_name)
    jf.validator = None


async def create_temp(identity: IdentityIO, token: Token, jf: JobFile) -> int:
    """Create the temporary file named by ``jf.temp_name`` (persisted by now) with O_EXCL;
    returns its descriptor. ERROR_FILE_EXISTS when the name is taken: what is there is not
    ours, and is left alone."""
    assert jf.temp_name is not None
    fd, _ = await identity.create_temp(token, jf.local_name, jf.temp_name)
    return fd
