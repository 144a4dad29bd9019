"""The end-of-file check of a download against the SHA-256 the client gave with the file
(beyond BITS, which trusts TLS and the server). Scheme-independent: the engine calls
``verify_sha256`` once a transport has put every byte of the file in the sink, before the file
is finished, so a file whose digest is wrong is never reported as transferred.

The temporary file is read back rather than hashed while it arrives: file:// data never
passes through Python (copy_file_range), and a resumed file would need its prefix re-read
anyway. The read happens on workers, a slice at a time (a suspend is not held up by a large
file), through a descriptor opened by the identity that owns the file, so ferryd needs no
right to read users' files (root without CAP_DAC_OVERRIDE in the system unit).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from ..errors import FerryError
from ..model.token import Token
from ..model.types import ErrorContext
from ..security.identity import IdentityIO
from .base import DownloadRequest, Sink, TransferError, local_error

SLICE = 16 << 20  # bytes hashed per worker call
_READ = 1 << 20


def _hash_slice(fd: int, digest: Any, offset: int, count: int) -> int:
    """Feed ``count`` bytes at ``offset`` into ``digest``; returns how many there were.
    Runs on a worker: hashlib releases the GIL for large buffers."""
    buf = bytearray(min(_READ, max(count, 1)))
    view = memoryview(buf)
    done = 0
    while done < count:
        n = os.preadv(fd, [view[: min(len(buf), count - done)]], offset + done)
        if n == 0:
            break
        digest.update(view[:n])
        done += n
    return done


async def file_sha256(identity: IdentityIO, token: Token, sink: Sink) -> str:
    """The SHA-256 of the sink's first ``sink.offset`` bytes, read as ``token`` (the job's
    local-file token, which wrote them).

    The file is reopened through /proc/self/fd (the sink's descriptor is write-only), so
    what is hashed is the very file that was written, whatever happened to its name."""
    try:
        fd = await identity.open_read(token, f"/proc/self/fd/{sink.fd}")
    except FerryError as exc:
        raise TransferError.from_ferry_error(
            exc, context=ErrorContext.LOCAL_FILE, transient=False
        ) from None
    try:
        digest = hashlib.sha256()
        size, done = sink.offset, 0
        while done < size:
            n = await identity.run_io(_hash_slice, fd, digest, done, min(SLICE, size - done))
            if n == 0:
                break  # shorter than written: the digest cannot match
            done += n
        return digest.hexdigest()
    except OSError as exc:
        raise local_error(exc, "cannot read the temporary file back") from None
    finally:
        await identity.close(fd)


async def verify_sha256(
    identity: IdentityIO,
    token: Token,
    expected: str | None,
    request: DownloadRequest,
    sink: Sink,
) -> None:
    """Check the file against its ``expected`` SHA-256, if it has one. On a mismatch the
    file's data is discarded (truncated, progress back to 0, so a resume starts it over) and
    the transfer fails with BG_E_VALIDATION_FAILED, which is final until the client
    resumes."""
    if expected is None:
        return
    actual = await file_sha256(identity, token, sink)
    if actual == expected:
        return
    request.validator = None  # before truncate, whose progress report persists the file
    await sink.truncate(0)
    raise TransferError(
        "BG_E_VALIDATION_FAILED",
        f"{request.url} has SHA-256 {actual}, not the expected {expected}; its data was discarded",
        context=ErrorContext.REMOTE_FILE,
        transient=False,
    )
