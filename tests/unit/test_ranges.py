"""model/ranges.py: parsing, the checks of AddFileWithRanges, and where a byte of the ranges
lies (what a resume after a crash relies on)."""

from __future__ import annotations

import pytest

from ferry import FerryError
from ferry.model.ranges import (
    LENGTH_TO_EOF,
    check_ranges,
    format_ranges,
    parse_ranges,
    position,
    ranges_from_wire,
    ranges_to_wire,
    resolved,
    total_length,
)


def test_parse_and_format() -> None:
    r = parse_ranges("100:200, 0x10:eof")
    assert r == [(100, 200), (16, None)]
    assert format_ranges(r) == "100:200,16:eof"
    assert ranges_from_wire(ranges_to_wire(r)) == r


def test_checks_sort_and_refuse() -> None:
    assert check_ranges([(900, None), (0, 10), (10, 5)]) == [(0, 10), (10, 5), (900, None)]
    assert check_ranges([(5, LENGTH_TO_EOF)]) == [(5, None)]
    for bad, code in (
        ([], "E_INVALIDARG"),
        ([(0, 0)], "BG_E_INVALID_RANGE"),
        ([(-1, 4)], "BG_E_INVALID_RANGE"),
        ([(LENGTH_TO_EOF, 4)], "BG_E_INVALID_RANGE"),
        ([(0, 11), (10, 5)], "BG_E_OVERLAPPING_RANGES"),
        ([(100, 5), (100, 1)], "BG_E_OVERLAPPING_RANGES"),
        ([(0, None), (10, 5)], "BG_E_OVERLAPPING_RANGES"),
        ([(i * 2, 1) for i in range(3)], "BG_E_TOO_MANY_RANGES_IN_FILE"),
    ):
        with pytest.raises(FerryError) as e:
            check_ranges(bad, limit=2)
        assert e.value.code == code, bad


def test_against_the_remote_size() -> None:
    r = [(0, 10), (50, None)]
    assert total_length(r, None) is None
    assert total_length(r, 100) == 60
    assert resolved(r, 100) == [(0, 10), (50, 50)]
    for size in (50, 5):
        with pytest.raises(FerryError) as e:
            resolved(r, size)
        assert e.value.code == "BG_E_INVALID_RANGE"


def test_position() -> None:
    r = [(100, 10), (500, 20), (900, None)]
    assert position(r, 0) == (0, 100, 10)
    assert position(r, 9) == (0, 109, 1)
    assert position(r, 10) == (1, 500, 20)
    assert position(r, 35) == (2, 905, None)
    assert position([(0, 5)], 5) is None
