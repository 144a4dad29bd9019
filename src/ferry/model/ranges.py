"""Byte ranges of a remote file (AddFileWithRanges, SPEC §11). Pure: no I/O.

A ranged file fetches only the given ranges of its remote file and writes each one into the
local file **at its own offset** (as IBackgroundCopyFile6 does): the local file has the
remote file's size, and the bytes outside the ranges are holes (read as zeros).

Ranges are kept sorted by offset. A range is ``(offset, length)``; ``length`` None means "to
the end of the remote file" (BG_LENGTH_TO_EOF, spelt ``eof``), which only the last range may
have, since it overlaps anything after it. Progress counts the bytes of the ranges in that
order, so ``bytes_transferred`` alone says where a transfer resumes (``position``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..errors import FerryError
from .job import JobFile

Range = tuple[int, int | None]

EOF = "eof"
# BITS's MaxRangesPerFile policy has no fixed default; ferry caps a file's list so one
# request cannot make a record of unbounded size.
MAX_RANGES_PER_FILE = 10_000
# BG_LENGTH_TO_EOF as a C client would pass it.
LENGTH_TO_EOF = 0xFFFF_FFFF_FFFF_FFFF
MAX_OFFSET = (1 << 63) - 1


def _bad(message: str) -> FerryError:
    return FerryError("BG_E_INVALID_RANGE", message)


def parse_ranges(text: str) -> list[Range]:
    """``OFFSET:LENGTH,…`` (``eof`` as a length) as the CLI takes it; unsorted, unchecked
    beyond the syntax (``check_ranges`` does the rest, in the daemon)."""
    out: list[Range] = []
    for part in text.split(","):
        offset_s, sep, length_s = part.strip().partition(":")
        if not sep:
            raise FerryError("E_INVALIDARG", f"a range is OFFSET:LENGTH, not {part.strip()!r}")
        try:
            offset = int(offset_s.strip(), 0)
            length_s = length_s.strip()
            length = None if length_s.lower() == EOF else int(length_s, 0)
        except ValueError:
            raise FerryError(
                "E_INVALIDARG", f"a range is OFFSET:LENGTH (numbers, or eof), not {part!r}"
            ) from None
        out.append((offset, length))
    return out


def format_ranges(ranges: Iterable[Range]) -> str:
    return ",".join(f"{o}:{EOF if n is None else n}" for o, n in ranges)


def ranges_from_wire(value: object) -> list[Range] | None:
    """The API's ``[{"offset": N, "length": N | "eof"}, …]`` (None: the whole file)."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise FerryError("E_INVALIDARG", "ranges must be a list of {offset, length} objects")
    out: list[Range] = []
    for item in value:
        if not isinstance(item, dict) or set(item) != {"offset", "length"}:
            raise FerryError("E_INVALIDARG", "each range is an object {offset, length}")
        offset, length = item["offset"], item["length"]
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise FerryError("E_INVALIDARG", "a range's offset must be an integer")
        if length == EOF:
            length = None
        elif isinstance(length, bool) or not isinstance(length, int):
            raise FerryError("E_INVALIDARG", "a range's length must be an integer or 'eof'")
        out.append((offset, length))
    return out


def ranges_to_wire(ranges: Iterable[Range]) -> list[dict[str, int | str]]:
    return [{"offset": o, "length": EOF if n is None else n} for o, n in ranges]


def check_ranges(ranges: Sequence[Range], limit: int = MAX_RANGES_PER_FILE) -> list[Range]:
    """AddFileWithRanges' checks, returning the ranges sorted by offset. No ranges:
    E_INVALIDARG; a negative offset, an offset of BG_LENGTH_TO_EOF or a zero length:
    BG_E_INVALID_RANGE; duplicates or overlaps: BG_E_OVERLAPPING_RANGES; too many:
    BG_E_TOO_MANY_RANGES_IN_FILE. (A range past the remote file's end is only known once the
    server answers: the transfer fails with BG_E_INVALID_RANGE then.)"""
    if not ranges:
        raise FerryError("E_INVALIDARG", "give at least one range")
    if len(ranges) > limit:
        raise FerryError("BG_E_TOO_MANY_RANGES_IN_FILE", f"a file may have at most {limit} ranges")
    clean: list[Range] = []
    for offset, length in ranges:
        if offset < 0 or offset >= MAX_OFFSET:
            raise _bad(f"range offset {offset} is not valid")
        if length == LENGTH_TO_EOF:
            length = None
        if length is not None and (length <= 0 or offset + length > MAX_OFFSET):
            raise _bad(f"range {offset}:{length}: the length must be positive (or eof)")
        clean.append((offset, length))
    # Stable: ranges with the same offset keep their order, so 100:5 then 100:0 is judged
    # as given (BITS sorts by offset only).
    clean.sort(key=lambda r: r[0])
    for (o1, n1), (o2, _n2) in zip(clean, clean[1:], strict=False):
        if n1 is None or o1 + n1 > o2:
            shown = EOF if n1 is None else n1
            raise FerryError(
                "BG_E_OVERLAPPING_RANGES",
                f"range {o1}:{shown} overlaps the range at offset {o2}",
            )
    return clean


def resolved(ranges: Sequence[Range], size: int) -> list[tuple[int, int]]:
    """The ranges against a remote file of ``size`` bytes (``eof`` becomes a length).
    Raises BG_E_INVALID_RANGE for a range that is not inside the file."""
    out: list[tuple[int, int]] = []
    for offset, length in ranges:
        end = size if length is None else offset + length
        if offset >= size or end > size:
            shown = EOF if length is None else length
            raise _bad(f"range {offset}:{shown} is outside the remote file ({size} bytes)")
        out.append((offset, end - offset))
    return out


def total_length(ranges: Sequence[Range], size: int | None) -> int | None:
    """The bytes the ranges hold: the file's ``bytes_total``; None while an ``eof`` range's
    length is unknown."""
    total = 0
    for offset, length in ranges:
        if length is None:
            if size is None:
                return None
            length = max(0, size - offset)
        total += length
    return total


def position(ranges: Sequence[Range], done: int) -> tuple[int, int, int | None] | None:
    """Where byte ``done`` of the ranges' bytes (counted in order) lies: ``(index of the
    range, offset in the remote file, bytes left in that range or None to the end)``; None
    once every range is done."""
    for i, (offset, length) in enumerate(ranges):
        if length is None:
            return i, offset + done, None
        if done < length:
            return i, offset + done, length - done
        done -= length
    return None


def set_ranges(jf: JobFile, ranges: Sequence[Range]) -> None:
    """Give a new file its ranges (checked, sorted); its ``bytes_total`` is their length when
    no range runs to the end. Not with a SHA-256: the digest is of a whole file."""
    if jf.sha256 is not None:
        raise FerryError("E_INVALIDARG", "a file with ranges cannot have a sha256")
    jf.ranges = check_ranges(ranges)
    jf.bytes_total = total_length(jf.ranges, None)
