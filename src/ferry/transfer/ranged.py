"""The temporary file of a ranged file (AddFileWithRanges, model/ranges.py): the sink's
offset counts the ranges' bytes in order (that is the file's progress), and each byte is
written at its own offset in the file; once whole, the file is given the remote file's size,
so the bytes outside the ranges are holes.

A transport fetches a ranged file range by range: ``next_span`` says where the next bytes
come from (the remote offset and how many, None to the end of the file), and it writes at
most that many with ``write``/``advanced`` before asking again."""

from __future__ import annotations

import os

from ..model.ranges import position, total_length
from ..model.types import ErrorContext
from .base import DownloadRequest, TransferError, local_error
from .sink import TempSink


class RangedSink(TempSink):
    """A TempSink whose writes go to the ranges' offsets. ``request`` is the file's
    DownloadRequest (its ranges and, once learnt, the remote size)."""

    request: DownloadRequest

    def _position(self, size: int) -> int:
        span = self.next_span()
        if span is None or (span[1] is not None and size > span[1]):
            raise TransferError(
                "E_FAIL",
                "internal error: a write crosses the end of its range",
                context=ErrorContext.LOCAL_FILE,
                transient=False,
            )
        return span[0]

    def next_span(self) -> tuple[int, int | None] | None:
        """(remote offset, bytes left in its range or None to the end) of the next byte;
        None when every range is done."""
        assert self.request.ranges is not None
        where = position(self.request.ranges, self.offset)
        if where is None:
            return None
        _index, at, left = where
        if left is None and self.request.remote_size is not None:
            left = max(0, self.request.remote_size - at)
        return at, left

    def done(self) -> bool:
        assert self.request.ranges is not None
        total = total_length(self.request.ranges, self.request.remote_size)
        return total is not None and self.offset >= total

    async def finish(self) -> int:
        size = self.request.remote_size
        if size is not None:
            try:
                if os.fstat(self.fd).st_size < size:
                    await self._identity.run_io(os.ftruncate, self.fd, size)
            except OSError as exc:
                raise local_error(exc, "cannot size the temporary file") from None
        return await super().finish()
