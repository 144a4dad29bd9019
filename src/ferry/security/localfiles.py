"""A job's local files as ``complete`` and ``cancel`` handle them (SPEC §2.1): checking that a
destination directory can be used, publishing finished temporary files under their local
names, and deleting temporary files. All of it is file work done *as a token*, built from the
identity I/O beside it (``identity.py``), and guarded the same way: a temporary name read
from the store is never opened, renamed or deleted unless it has the shape ferry gives them
(``check_temp_name``, ``tempnames.py``), so a damaged store cannot point ferryd at somebody
else's file.

Each method records on the job (in memory) what it did to the disk; the caller persists the
job afterwards.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence

from ..errors import FerryError
from ..model.job import Job, JobFile
from ..model.token import Token
from ..model.types import JobType
from ..model.upload import REPLY_DATA_MAX, default_reply_file
from . import policy
from .identity import IdentityIO
from .tempnames import check_temp_name

log = logging.getLogger("ferry.localfiles")


class LocalFiles:
    def __init__(self, identity: IdentityIO) -> None:
        self._io = identity

    async def check_destinations(self, job: Job, files: Sequence[JobFile]) -> None:
        """A download's destination directories exist and the identity that will write
        there may search them, and no local name is a directory: checked as that identity,
        in one trip to a worker (1,000 files, one trip)."""
        if job.type is not JobType.DOWNLOAD:
            await self.check_upload_source(job, files)
            return
        token = policy.local_file_token(job)
        await self._io.check_destinations(token, [f.local_name for f in files])

    async def publish(self, job: Job, token: Token, indices: list[int]) -> None:
        """Rename the temporary files of ``indices`` to their local names as ``token``: in
        order, in one trip to a worker, each directory synced once. Every file renamed has
        its ``temp_name`` cleared, also when a later one fails (the caller records the job
        either way).

        Crash repair: a crash after the renames but before the caller's commit leaves the
        job as it was with its renamed temporary files gone. So a temporary file that is
        gone while its local name holds a regular file of the recorded size counts as
        published (the next ``complete`` finds exactly that), and the renames go on after
        it."""
        files = job.files
        for i in indices:  # a damaged store must not make us rename a file that is not ours
            check_temp_name(files[i].local_name, files[i].temp_name or "")
        published: list[int] = []
        try:
            while indices:
                pairs = [(files[i].temp_name or "", files[i].local_name) for i in indices]
                done, error = await self._io.publish_many(token, pairs)
                published += indices[:done]
                if error is None:
                    break
                if done == len(indices):  # all renamed; a directory could not be synced
                    raise error
                failed = indices[done]
                if (
                    error.code != "ERROR_FILE_NOT_FOUND"
                    or await self._io.regular_file_size(token, files[failed].local_name)
                    != files[failed].bytes_transferred
                ):
                    raise error
                published.append(failed)
                indices = indices[done + 1 :]
        finally:
            for i in published:
                files[i].temp_name = None

    async def discard(self, job: Job, indices: Iterable[int]) -> str:
        """Delete the temporary files of ``indices`` as the identity that created them.
        Never fails: returns S_OK, or BG_S_UNABLE_TO_DELETE_FILES when one could not be
        deleted (logged). A name of another shape is left alone (logged)."""
        try:
            token = policy.local_file_token(job)
        except FerryError:  # flags set but the helper token is gone: the owner cleans up
            token = job.owner
        result = "S_OK"
        for i in indices:
            f = job.files[i]
            if f.temp_name is None:
                continue
            try:
                check_temp_name(f.local_name, f.temp_name)
            except FerryError as exc:  # a damaged store: whatever that names is not ours
                log.warning("job %s: not deleting %s: %s", job.id, f.temp_name, exc)
                continue
            try:
                await self._io.unlink(token, f.temp_name)
            except FerryError as exc:
                log.warning("job %s: could not delete %s: %s", job.id, f.temp_name, exc)
                result = "BG_S_UNABLE_TO_DELETE_FILES"
        return result

    # ---- uploads (SPEC §9) ---------------------------------------------------------------

    async def check_upload_source(self, job: Job, files: Sequence[JobFile]) -> None:
        """An upload's local name is an existing regular file the local-file token may
        read (opened as that token, then closed); an upload-reply job's reply file goes into
        a directory that token may search."""
        token = policy.local_file_token(job)
        for f in files:
            fd = await self._io.open_read(token, f.local_name)
            await self._io.close(fd)
            if job.type is JobType.UPLOAD_REPLY:
                reply = job.upload.reply_file if job.upload and job.upload.reply_file else None
                await self._io.check_directory(token, reply or default_reply_file(f.local_name))

    async def check_reply_file(self, job: Job, path: str) -> None:
        """A new reply file's directory exists and the local-file token may search it."""
        await self._io.check_directory(policy.local_file_token(job), path)

    def _reply_temp(self, job: Job) -> str | None:
        """The reply's temporary name, if it has the shape ferry gives them."""
        state = job.upload
        reply_file = job.reply_file
        if state is None or state.reply_temp is None or reply_file is None:
            return None
        try:
            check_temp_name(reply_file, state.reply_temp)
        except FerryError as exc:
            log.warning("job %s: not touching %s: %s", job.id, state.reply_temp, exc)
            return None
        return state.reply_temp

    async def publish_reply(self, job: Job) -> None:
        """``complete``: the reply's temporary file becomes the reply file, renamed as the
        local-file token (which created it). A crash after the rename but before the job
        was recorded is repaired as for downloads: the temporary file gone and the reply
        file of the recorded size there counts as published."""
        state = job.upload
        temp = self._reply_temp(job)
        reply_file = job.reply_file
        if state is None or temp is None or reply_file is None:
            return
        token = policy.local_file_token(job)
        done, error = await self._io.publish_many(token, [(temp, reply_file)])
        if error is not None and done == 0:
            size = await self._io.regular_file_size(token, reply_file)
            if error.code != "ERROR_FILE_NOT_FOUND" or size != state.reply_transferred:
                raise error
        elif error is not None:
            raise error
        state.reply_temp = None

    async def discard_reply(self, job: Job) -> None:
        """``cancel``: delete the reply's temporary file (never fails; logged)."""
        temp = self._reply_temp(job)
        if temp is None:
            return
        try:
            token = policy.local_file_token(job)
        except FerryError:
            token = job.owner
        try:
            await self._io.unlink(token, temp)
        except FerryError as exc:
            log.warning("job %s: could not delete %s: %s", job.id, temp, exc)
        assert job.upload is not None
        job.upload.reply_temp = None

    async def read_reply(self, job: Job, limit: int = REPLY_DATA_MAX) -> bytes:
        """The reply's bytes, read as the local-file token: BG_E_TOO_LARGE past ``limit``."""
        temp = self._reply_temp(job)
        state = job.upload
        if temp is None or state is None or not state.reply_done:
            raise FerryError("BG_E_INVALID_STATE", "the job has no reply")
        token = policy.local_file_token(job)
        fd = await self._io.open_read(token, temp)
        try:
            size = (await self._io.run_io(os.fstat, fd)).st_size
            if size > limit:
                raise FerryError(
                    "BG_E_TOO_LARGE",
                    f"the reply is {size} bytes; at most {limit} can be read this way "
                    f"(complete the job to get the whole reply in {job.reply_file})",
                )
            return await self._io.run_io(os.pread, fd, limit + 1, 0)
        finally:
            await self._io.close(fd)
