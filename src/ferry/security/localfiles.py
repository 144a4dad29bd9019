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
from collections.abc import Iterable, Sequence

from ..errors import FerryError
from ..model.job import Job, JobFile
from ..model.token import Token
from ..model.types import JobType
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
