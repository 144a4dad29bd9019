"""The values of SPEC §10 (model/network.py), the token buckets (transfer/bandwidth.py) and
the yielding controller's control law (transfer/ledbat.py), without I/O."""

from __future__ import annotations

import asyncio
import time

import pytest

from ferry.errors import FerryError
from ferry.model.job import Job
from ferry.model.network import (
    COST_PRESETS,
    CostState,
    Window,
    cost_allows,
    cost_flags_name,
    parse_bandwidth,
    parse_cost_flags,
    parse_rate,
)
from ferry.model.token import Token
from ferry.model.types import Priority
from ferry.transfer.bandwidth import Limiter, TokenBucket
from ferry.transfer.ledbat import MIN_RATE, START_RATE, TARGET, YieldController


def test_presets_match_bits() -> None:
    assert COST_PRESETS["TRANSFER_STANDARD"] == 0x80000067
    assert COST_PRESETS["TRANSFER_UNRESTRICTED"] == 0x80000021
    assert COST_PRESETS["TRANSFER_ALWAYS"] == 0x800000FF
    assert cost_flags_name(0x80000067) == "TRANSFER_STANDARD"
    both = int(CostState.UNRESTRICTED | CostState.ROAMING)
    assert cost_flags_name(both) == "UNRESTRICTED|ROAMING"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("TRANSFER_NOT_ROAMING", COST_PRESETS["TRANSFER_NOT_ROAMING"]),
        ("bits_cost_state_unrestricted | usage_based", 0x41),
        ("0x1", 1),
        (0x80, 0x80),
    ],
)
def test_parse_cost_flags(text: object, value: int) -> None:
    assert parse_cost_flags(text) == value


@pytest.mark.parametrize("bad", ["", "CHEAP", 0, -1, 1 << 40, "IGNORE_CONGESTION", True, 1.5])
def test_parse_cost_flags_refuses(bad: object) -> None:
    with pytest.raises(FerryError) as info:
        parse_cost_flags(bad)
    assert info.value.code == "E_INVALIDARG"


def test_cost_gate() -> None:
    standard = COST_PRESETS["TRANSFER_STANDARD"]
    assert cost_allows(standard, "unrestricted") and cost_allows(standard, "metered")
    assert not cost_allows(standard, "roaming")
    assert not cost_allows(COST_PRESETS["TRANSFER_UNRESTRICTED"], "metered")
    assert cost_allows(COST_PRESETS["TRANSFER_ALWAYS"], "roaming")


@pytest.mark.parametrize(
    ("text", "value"), [(500, 500), ("500k", 500_000), ("2M", 2_000_000), ("1.5MiB", 1572864),
                        ("10 kB/s", 10_000)]  # fmt: skip
)
def test_parse_rate(text: object, value: int) -> None:
    assert parse_rate(text) == value


@pytest.mark.parametrize("bad", [0, -1, "fast", "", True, "5T", None])
def test_parse_rate_refuses(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_rate(bad, "x")


def _at(day: int, hour: int, minute: int = 0) -> time.struct_time:
    # 2026-11-30 is a Monday (tm_wday 0).
    return time.struct_time((2026, 11, 30 + day, hour, minute, 0, day, 334 + day, 0))


def test_windows() -> None:
    office = Window(frozenset({0, 1, 2, 3, 4}), 8 * 60, 17 * 60)
    assert office.contains(_at(0, 9)) and not office.contains(_at(0, 17))
    assert not office.contains(_at(5, 9))
    night = Window(frozenset({4}), 22 * 60, 2 * 60)  # Friday 22:00 to Saturday 02:00
    assert night.contains(_at(4, 23)) and night.contains(_at(5, 1))
    assert not night.contains(_at(5, 3)) and not night.contains(_at(4, 21))


def test_parse_bandwidth_and_periods() -> None:
    policy = parse_bandwidth(
        {
            "background_limit": "1M",
            "work_schedule": {
                "days": ["mon-sun"], "start": "00:00", "end": "24:00",
                "work_limits": {"low": 1000}, "non_work_limits": 5000,
            },
        }  # fmt: skip
    )
    assert policy.background_limit == 1_000_000
    now = time.time()
    assert policy.period(now) == "work"
    assert policy.priority_limit(Priority.LOW, now) == 1000
    assert policy.priority_limit(Priority.HIGH, now) is None
    assert policy.non_work_limits[Priority.HIGH] == 5000


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"unknown": 1}, "bandwidth.unknown"),
        ({"work_schedule": {"days": ["mon"], "start": "9:00"}}, "work_schedule.end"),
        ({"work_schedule": {"days": [], "start": "9:00", "end": "10:00"}}, "days"),
        ({"work_schedule": {"days": ["mon"], "start": "9:61", "end": "10:00"}}, "start"),
        ({"maintenance_schedule": {"days": ["sun"], "start": "1:00", "end": "2:00",
                                   "limits": {"urgent": 5}}}, "limits"),
        ({"yield_to_others": "yes"}, "yield_to_others"),
    ],
)
def test_parse_bandwidth_names_the_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        parse_bandwidth(data)


def test_token_bucket_debt_and_rate_change() -> None:
    b = TokenBucket(1000, 0.0)
    b.tokens -= 500
    assert b.wait_for() == pytest.approx(0.5)
    b.set_rate(2000, 0.1)  # 100 bytes earned at the old rate stay earned
    assert b.tokens == pytest.approx(-400)
    b.refill(10.0)
    assert b.tokens == pytest.approx(2000 * 0.25)  # capped burst


def _job(priority: Priority, max_rate: int | None = None) -> Job:
    owner = Token(uid=0, gid=0, name="root", admin=True)
    job = Job(id=f"j-{priority}-{max_rate}", display_name="j", owner=owner, priority=priority)
    job.max_rate = max_rate
    return job


async def test_limiter_governs_only_what_it_should() -> None:
    limiter = Limiter(parse_bandwidth({"background_limit": 1000}))
    fg = _job(Priority.FOREGROUND)
    bg = _job(Priority.LOW)
    capped_fg = _job(Priority.FOREGROUND, max_rate=500)
    assert limiter.limit_for(fg) is None
    assert limiter.limit_for(bg) == 1000
    assert limiter.limit_for(capped_fg) == 500
    t0 = time.monotonic()
    await limiter.pace(fg, 10_000_000)  # foreground: no wait at all
    assert time.monotonic() - t0 < 0.1
    # A lifted limit ends a wait at once.
    waiter = asyncio.ensure_future(limiter.pace(bg, 100_000))  # 100 s of debt
    await asyncio.sleep(0.3)
    assert not waiter.done()
    limiter.set_policy(parse_bandwidth({}))
    await asyncio.wait_for(waiter, 2)


def test_controller_backs_off_and_recovers() -> None:
    received = [0]
    c = YieldController(lambda: received[0])
    c._sockets[1] = None  # type: ignore[assignment]  # one watched socket (never read here)
    base = 0.001
    # Nothing received yet: the rate cannot run past the start rate.
    assert c.step([base]) == pytest.approx(START_RATE)
    for _ in range(20):  # a queue well over the target: down to the floor
        rate = c.step([base + 4 * TARGET])
    assert rate == MIN_RATE
    for _ in range(40):  # an empty queue, with data flowing: up again
        received[0] += 10_000_000
        time.sleep(0.001)
        rate = c.step([base])
        assert rate is not None
    assert rate > 100 * MIN_RATE
    c._sockets.clear()
    assert c.step([]) is None
