"""The file:// transport: copies a file from a local or mounted network file system (the
counterpart of BITS's SMB paths) into the temporary file.

The source is opened as the request's network token, which the engine chose (the job's
NETWORK helper or its owner, SPEC §4.4), so a user can only copy what that identity may read;
the bytes then move in the kernel (copy_file_range) on a worker, one checkpoint-sized chunk
at a time.
"""

from __future__ import annotations

import errno
import os

from ..errors import FerryError, code_for_errno
from ..model.paths import file_url_path
from ..model.ranges import resolved, total_length
from ..model.types import ErrorContext
from ..security.identity import IdentityIO
from .base import WRITE_MAX, DownloadRequest, Sink, TransferError
from .ranged import RangedSink

CHUNK = 8 << 20
_FALLBACK_ERRNOS = frozenset(
    {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF, errno.EPERM}
)
# Where a failed copy cannot say which side failed, these are the destination's.
_LOCAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
# Failures of a network file system that may pass.
_TRANSIENT_ERRNOS = frozenset(
    {
        errno.EIO,
        errno.ETIMEDOUT,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ESTALE,
        errno.EAGAIN,
        errno.ENOLINK,
    }
)


class _SideError(Exception):
    """An OSError that knows whether the source or the destination failed."""

    def __init__(self, exc: OSError, local: bool) -> None:
        super().__init__(str(exc))
        self.exc = exc
        self.local = local


def _validator(st: os.stat_result) -> str:
    """What identifies this version of the source: size and modification time."""
    return f"size={st.st_size};mtime_ns={st.st_mtime_ns}"


def _copy(src: int, dst: int, offset: int, count: int) -> int:
    """Copy up to ``count`` bytes at ``offset`` from src to the same offset of dst; returns
    the bytes copied (fewer only at the source's end). Runs on a worker."""
    done = 0
    use_cfr = True
    while done < count:
        if use_cfr:
            try:
                n = os.copy_file_range(src, dst, count - done, offset + done, offset + done)
            except OSError as exc:
                if exc.errno in _FALLBACK_ERRNOS and done == 0:
                    use_cfr = False
                    continue
                raise _SideError(exc, exc.errno in _LOCAL_ERRNOS) from None
        else:
            try:
                data = os.pread(src, min(count - done, WRITE_MAX), offset + done)
            except OSError as exc:
                raise _SideError(exc, False) from None
            n = len(data)
            view = memoryview(data)
            written = 0
            try:
                while written < n:
                    written += os.pwrite(dst, view[written:], offset + done + written)
            except OSError as exc:
                raise _SideError(exc, True) from None
        if n == 0:
            break
        done += n
    return done


class LocalTransport:
    """file:// (a DownloadTransport). Works on the daemon's IdentityIO workers."""

    def __init__(self, identity: IdentityIO, chunk: int = CHUNK) -> None:
        self._identity = identity
        self._chunk = chunk

    async def close(self) -> None:
        return None

    async def download(self, request: DownloadRequest, sink: Sink) -> None:
        try:
            token = request.network_token()
            path = file_url_path(request.url)
            src = await self._identity.open_read(token, path)
        except FerryError as exc:
            raise TransferError.from_ferry_error(
                exc, context=ErrorContext.REMOTE_FILE, transient=False
            ) from None
        try:
            await self._copy_from(request, src, path, sink)
        finally:
            await self._identity.close(src)

    async def _copy_ranges(
        self, request: DownloadRequest, src: int, path: str, sink: RangedSink
    ) -> None:
        """AddFileWithRanges from a file: each range copied to the same offset."""
        st = await self._identity.run_io(os.fstat, src)
        validator = _validator(st)
        if sink.offset > 0 and request.validator != validator:
            await sink.truncate(0)
            if request.validator is not None:
                request.validator = None
                request.remote_size = None
                raise _changed(path)
        try:
            resolved(request.ranges or (), st.st_size)
        except FerryError as exc:
            raise TransferError(
                exc.code, exc.message, context=ErrorContext.REMOTE_FILE, transient=False
            ) from None
        request.validator = validator
        request.remote_size = st.st_size
        request.bytes_total = total_length(request.ranges or (), st.st_size)
        request.final_url = request.url
        await sink.response()
        while (span := sink.next_span()) is not None and span[1]:
            at, left = span
            count = min(self._chunk, left or 0)
            try:
                copied = await self._identity.run_io(_copy, src, sink.fd, at, count)
            except _SideError as err:
                raise _copy_error(err, path) from None
            if copied == 0:
                break
            sink.advanced(copied)
            await sink.checkpoint()
        after = await self._identity.run_io(os.fstat, src)
        if not sink.done() or _validator(after) != validator:
            await sink.truncate(0)
            request.validator = None
            request.remote_size = None
            raise _changed(path)

    async def _copy_from(self, request: DownloadRequest, src: int, path: str, sink: Sink) -> None:
        if request.ranges is not None:
            assert isinstance(sink, RangedSink)
            await self._copy_ranges(request, src, path, sink)
            return
        st = await self._identity.run_io(os.fstat, src)
        validator = _validator(st)
        if sink.offset > 0 and request.validator != validator:
            await sink.truncate(0)
            if request.validator is not None:
                request.validator = None
                request.bytes_total = None
                raise _changed(path)
        request.validator = validator
        request.bytes_total = st.st_size
        request.final_url = request.url
        await sink.response()
        size = st.st_size
        while sink.offset < size:
            count = min(self._chunk, size - sink.offset)
            try:
                copied = await self._identity.run_io(_copy, src, sink.fd, sink.offset, count)
            except _SideError as err:
                raise _copy_error(err, path) from None
            if copied == 0:
                break
            sink.advanced(copied)
            await sink.checkpoint()
        after = await self._identity.run_io(os.fstat, src)
        if sink.offset != size or _validator(after) != validator:
            # The source changed under the copy: what we have is a mix of two versions.
            await sink.truncate(0)
            request.validator = None
            request.bytes_total = None
            raise _changed(path)


def _changed(path: str) -> TransferError:
    return TransferError(
        "BG_E_REMOTE_FILE_CHANGED",
        f"{path} changed since its transfer began; its partial data was discarded",
        context=ErrorContext.REMOTE_FILE,
        transient=False,
    )


def _copy_error(err: _SideError, path: str) -> TransferError:
    exc = err.exc
    code = code_for_errno(exc.errno or 0)
    text = exc.strerror or str(exc)
    if err.local:
        return TransferError(
            code,
            f"cannot write the temporary file: {text}",
            context=ErrorContext.LOCAL_FILE,
            transient=code == "ERROR_DISK_FULL",
        )
    return TransferError(
        code,
        f"cannot read {path}: {text}",
        context=ErrorContext.REMOTE_FILE,
        transient=(exc.errno or 0) in _TRANSIENT_ERRNOS,
    )
