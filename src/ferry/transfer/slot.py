"""One file of a download run, as the window (window.py) holds it: its temporary file reopened
at its checkpoint or named, then created once the name is persisted, then transferred by the
engine. Every step leaves its outcome in the slot (a failure included) for the window to
report in file order; none raises but for cancellation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from ..errors import FerryError
from ..model.job import Job
from ..model.token import Token
from ..model.types import ErrorContext
from ..security.identity import IdentityIO
from . import sink as temp
from .base import DownloadTransport, JobCallbacks, TransferError

log = logging.getLogger("ferry.transfer")


class FileRunner(Protocol):
    """What the window and its slots ask of the engine (engine.TransferEngine), declared
    here so that the engine imports the window and not the other way round."""

    identity: IdentityIO
    parallel_files: int
    overlap_max_bytes: int

    def download_transport(self, url: str) -> DownloadTransport: ...

    def local_file_token(self, job: Job) -> Token: ...

    async def download_file(
        self,
        job: Job,
        index: int,
        transport: DownloadTransport,
        token: Token,
        fd: int,
        offset: int,
        callbacks: JobCallbacks,
        on_response: Callable[[int], Awaitable[None]],
    ) -> int: ...


@dataclass(eq=False)
class FileSlot:
    """One file of the window: opened, then running, then done (or failed)."""

    pos: int  # position among the files this run transfers
    index: int  # index in job.files
    transport: DownloadTransport | None = None
    fd: int | None = None
    offset: int = 0
    announced: bool = True  # False while the name of a new temporary file is not persisted
    create: bool = False  # the temporary file is to be created once its name is persisted
    task: asyncio.Task[None] | None = None
    big: bool = False  # more than overlap_max_bytes (or an unknown size) to receive
    done: bool = False  # every byte is on disk and fsynced; its descriptor is closed
    size: int = 0
    error: BaseException | None = None

    def fail(self, exc: FerryError) -> None:
        self.error = TransferError.from_ferry_error(
            exc, context=ErrorContext.LOCAL_FILE, file_index=self.index
        )

    async def open(
        self, engine: FileRunner, job: Job, token: Token, checked_dirs: set[str]
    ) -> None:
        """Reopen the file's temporary file at its checkpoint or, when there is none, name a
        new one (``announced`` False): the window persists the name, then ``create_temp``
        creates the file."""
        jf = job.files[self.index]
        try:
            self.transport = engine.download_transport(jf.remote_name)
            opened = await temp.open_temp(engine.identity, token, job, self.index)
            if opened is None:
                await temp.check_directory(engine.identity, token, jf.local_name, checked_dirs)
                temp.name_temp(jf)
        except FerryError as exc:
            self.fail(exc)
            return
        if opened is None:
            self.offset, self.create, self.announced = 0, True, False
        else:
            self.fd, self.offset = opened

    async def create_temp(self, engine: FileRunner, job: Job, token: Token, last: bool) -> None:
        """Create the temporary file under its persisted name. A name that is taken (what
        is there is not ours) gives way to a fresh one, not persisted yet (``announced``
        False, ``create`` still True), unless this was the ``last`` attempt."""
        jf = job.files[self.index]
        assert self.announced
        try:
            fd = await temp.create_temp(engine.identity, token, jf)
        except FerryError as exc:
            self.created(job, exc, last)
            return
        self.created(job, fd, last)

    def created(self, job: Job, result: int | FerryError, last: bool) -> None:
        """What creating the temporary file gave (``create_temp``, or one file of a group
        created in one trip): its descriptor, or the error. A name that is taken gives way
        to a fresh one, as ``create_temp`` says."""
        jf = job.files[self.index]
        if isinstance(result, FerryError):
            if result.code == "ERROR_FILE_EXISTS" and not last:
                log.warning("job %s: %s is taken; trying another name", job.id, jf.temp_name)
                jf.temp_name = None
                temp.name_temp(jf)
                self.announced = False
            else:
                self.fail(result)
            return
        self.fd = result
        self.create = False

    async def transfer(
        self,
        engine: FileRunner,
        job: Job,
        token: Token,
        callbacks: JobCallbacks,
        on_response: Callable[[int], Awaitable[None]],
    ) -> None:
        """Download the file into its temporary file and fsync it (the engine's part); its
        descriptor is closed whatever happens."""
        assert self.fd is not None and self.transport is not None
        try:
            self.size = await engine.download_file(
                job, self.index, self.transport, token, self.fd, self.offset, callbacks, on_response
            )
        except FerryError as exc:
            self.fail(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: reported in order like any failure
            self.error = exc
        else:
            self.done = True
        finally:
            self.fd = None
