"""Bandwidth and network conditions as values (SPEC §10): network cost flags
(BITS_JOB_PROPERTY_ID_COST_FLAGS), byte rates as users write them, and the bandwidth policy of
ferryd's ``[bandwidth]`` section (the BITS group policies: a background limit, a work
schedule with per-priority limits in and out of work hours, a maintenance window).

Pure values and their parsers; the limiter that applies them lives in transfer/bandwidth.py
and the service that watches the network in service/network.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntFlag
from typing import Any

from ..errors import FerryError
from .types import Priority


class CostState(IntFlag):
    """BITS_COST_STATE_* (and BITS_COST_OPTION_IGNORE_CONGESTION)."""

    UNRESTRICTED = 0x1
    CAPPED_USAGE_UNKNOWN = 0x2
    BELOW_CAP = 0x4
    NEAR_CAP = 0x8
    OVERCAP_CHARGED = 0x10
    OVERCAP_THROTTLED = 0x20
    USAGE_BASED = 0x40
    ROAMING = 0x80
    RESERVED = 0x40000000
    IGNORE_CONGESTION = 0x80000000


_C = CostState
COST_PRESETS: Mapping[str, int] = {
    # Not on roaming links, nor over their cap (the default).
    "TRANSFER_STANDARD": int(
        _C.IGNORE_CONGESTION | _C.USAGE_BASED | _C.OVERCAP_THROTTLED | _C.BELOW_CAP
        | _C.CAPPED_USAGE_UNKNOWN | _C.UNRESTRICTED
    ),
    "TRANSFER_NO_SURCHARGE": int(
        _C.IGNORE_CONGESTION | _C.USAGE_BASED | _C.OVERCAP_THROTTLED | _C.NEAR_CAP
        | _C.BELOW_CAP | _C.CAPPED_USAGE_UNKNOWN | _C.UNRESTRICTED
    ),
    "TRANSFER_NOT_ROAMING": int(
        _C.IGNORE_CONGESTION | _C.USAGE_BASED | _C.OVERCAP_THROTTLED | _C.OVERCAP_CHARGED
        | _C.NEAR_CAP | _C.BELOW_CAP | _C.CAPPED_USAGE_UNKNOWN | _C.UNRESTRICTED
    ),
    "TRANSFER_UNRESTRICTED": int(_C.IGNORE_CONGESTION | _C.OVERCAP_THROTTLED | _C.UNRESTRICTED),
    "TRANSFER_ALWAYS": int(
        _C.IGNORE_CONGESTION | _C.ROAMING | _C.USAGE_BASED | _C.OVERCAP_THROTTLED
        | _C.OVERCAP_CHARGED | _C.NEAR_CAP | _C.BELOW_CAP | _C.CAPPED_USAGE_UNKNOWN
        | _C.UNRESTRICTED
    ),
}  # fmt: skip
DEFAULT_COST_FLAGS = COST_PRESETS["TRANSFER_STANDARD"]
_ALL_COST = int(sum(CostState))


def cost_flags_name(flags: int) -> str:
    """The wire spelling: a preset's name when the flags are one, else names joined by |."""
    for name, value in COST_PRESETS.items():
        if value == flags:
            return name
    return "|".join(f.name or "" for f in CostState if f & flags) or "0"


def parse_cost_flags(value: Any) -> int:
    """A preset name, flag names joined by ``|`` or ``,`` (with or without the BITS_COST_
    prefixes), or an integer. Raises FerryError(E_INVALIDARG)."""
    if isinstance(value, int) and not isinstance(value, bool):
        flags = value
    elif isinstance(value, str):
        flags = 0
        text = value.strip()
        try:
            flags = int(text, 0)
        except ValueError:
            parts = [p.strip().upper() for p in re.split(r"[|,]", text) if p.strip()]
            if not parts:
                raise FerryError("E_INVALIDARG", "cost_flags must not be empty") from None
            for part in parts:
                name = part.removeprefix("BITS_COST_STATE_").removeprefix("BITS_COST_OPTION_")
                if name in COST_PRESETS:
                    flags |= COST_PRESETS[name]
                elif name in CostState.__members__:
                    flags |= int(CostState[name])
                else:
                    known = ", ".join([*COST_PRESETS, *CostState.__members__])
                    raise FerryError(
                        "E_INVALIDARG", f"cost_flags: {part!r} is not one of {known}"
                    ) from None
    else:
        raise FerryError("E_INVALIDARG", "cost_flags must be a name or an integer")
    if flags <= 0 or flags & ~_ALL_COST:
        raise FerryError("E_INVALIDARG", f"cost_flags 0x{flags:X} is not valid")
    if not flags & ~int(CostState.IGNORE_CONGESTION | CostState.RESERVED):
        raise FerryError("E_INVALIDARG", "cost_flags allow no network cost at all")
    return flags


# The network costs ferryd can see or be told (``ferry network --cost``), as BITS cost states.
NETWORK_COSTS: Mapping[str, int] = {
    "unrestricted": int(CostState.UNRESTRICTED),
    "metered": int(CostState.USAGE_BASED),
    "roaming": int(CostState.ROAMING),
}
COST_CHOICES = (*NETWORK_COSTS, "auto")


def cost_allows(job_flags: int, network_cost: str) -> bool:
    return bool(job_flags & NETWORK_COSTS[network_cost])


# ---- rates ---------------------------------------------------------------------------------

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(i?)b?(?:/s)?\s*$", re.IGNORECASE)


def parse_rate(value: Any, what: str = "rate") -> int:
    """Bytes per second: an integer, or text such as ``500000``, ``500k``, ``2M``, ``1.5MiB``
    (k/M/G: 1000s; with i: 1024s). At least 1. Raises ValueError naming ``what``."""
    if isinstance(value, int) and not isinstance(value, bool):
        rate = value
    elif isinstance(value, str) and (m := _RATE.match(value)):
        base = 1024 if m.group(3) else 1000
        scale = {"": 1, "k": base, "m": base**2, "g": base**3}[m.group(2).lower()]
        rate = int(float(m.group(1)) * scale)
    else:
        raise ValueError(f"{what}: {value!r} is not a byte rate (bytes/s, e.g. 500000 or 2M)")
    if rate < 1:
        raise ValueError(f"{what} must be at least 1 byte/s")
    return rate


# ---- the bandwidth policy --------------------------------------------------------------------

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
BACKGROUND = (Priority.HIGH, Priority.NORMAL, Priority.LOW)


def _day(text: str, where: str) -> int:
    key = text.strip().lower()[:3]
    if key not in _DAYS or not text.strip().lower().startswith(key):
        raise ValueError(f"{where}: {text!r} is not a day (mon ... sun)")
    return _DAYS.index(key)


def _days(value: Any, where: str) -> frozenset[int]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}.days must be a list of days such as [\"mon-fri\"]")
    out: set[int] = set()
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"{where}.days: {item!r} is not a day name")
        first, sep, last = item.partition("-")
        a = _day(first, f"{where}.days")
        if not sep:
            out.add(a)
            continue
        b = _day(last, f"{where}.days")
        d = a
        while True:
            out.add(d)
            if d == b:
                break
            d = (d + 1) % 7
    return frozenset(out)


def _clock(value: Any, where: str) -> int:
    """Minutes after midnight of ``"HH:MM"`` (``"24:00"`` is the end of the day)."""
    m = re.match(r"^(\d{1,2}):(\d{2})$", value) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"{where} must be a time of day \"HH:MM\", not {value!r}")
    h, mi = int(m.group(1)), int(m.group(2))
    if mi > 59 or h > 24 or (h == 24 and mi):
        raise ValueError(f"{where}: {value!r} is not a time of day")
    return h * 60 + mi


def _limits(value: Any, where: str) -> dict[Priority, int | None]:
    """``{high = N, normal = N, low = N}`` (bytes/s; a missing priority is unlimited), or
    one rate for every background priority."""
    if not isinstance(value, dict):
        return dict.fromkeys(BACKGROUND, parse_rate(value, where))
    out: dict[Priority, int | None] = dict.fromkeys(BACKGROUND)
    for key, rate in value.items():
        try:
            p = Priority(key)
        except ValueError:
            p = Priority.FOREGROUND
        if p is Priority.FOREGROUND:
            raise ValueError(f"{where}: {key!r} is not high, normal or low (foreground is "
                             "never throttled)")
        out[p] = parse_rate(rate, f"{where}.{key}")
    return out


@dataclass(frozen=True)
class Window:
    """Days of the week and a time of day span (local time; an end before the start runs
    past midnight into the next day)."""

    days: frozenset[int]
    start: int  # minutes after midnight
    end: int

    def contains(self, local: time.struct_time) -> bool:
        minute = local.tm_hour * 60 + local.tm_min
        day = local.tm_wday
        if self.start < self.end:
            return day in self.days and self.start <= minute < self.end
        if self.start == self.end:
            return day in self.days
        return (day in self.days and minute >= self.start) or (
            (day - 1) % 7 in self.days and minute < self.end
        )


def _window(table: dict[str, Any], where: str) -> Window:
    for key in ("days", "start", "end"):
        if key not in table:
            raise ValueError(f"{where}.{key} is missing")
    return Window(
        _days(table["days"], where),
        _clock(table["start"], f"{where}.start"),
        _clock(table["end"], f"{where}.end"),
    )


@dataclass(frozen=True)
class BandwidthPolicy:
    """What ``[bandwidth]`` says. Limits are bytes per second; None is no limit."""

    background_limit: int | None = None
    # Background transfers yield to other traffic (the LEDBAT-style controller).
    yield_to_others: bool = True
    work: Window | None = None
    work_limits: Mapping[Priority, int | None] = field(default_factory=dict)
    non_work_limits: Mapping[Priority, int | None] = field(default_factory=dict)
    maintenance: Window | None = None
    maintenance_limits: Mapping[Priority, int | None] = field(default_factory=dict)

    def period(self, now: float) -> str:
        """``maintenance``, ``work``, ``non-work`` or ``none`` (no schedule)."""
        local = time.localtime(now)
        if self.maintenance is not None and self.maintenance.contains(local):
            return "maintenance"
        if self.work is not None:
            return "work" if self.work.contains(local) else "non-work"
        return "none"

    def priority_limit(self, priority: Priority, now: float) -> int | None:
        period = self.period(now)
        table = {
            "maintenance": self.maintenance_limits,
            "work": self.work_limits,
            "non-work": self.non_work_limits,
        }.get(period, {})
        return table.get(priority)


_BANDWIDTH_KEYS = ("background_limit", "yield_to_others", "work_schedule", "maintenance_schedule")


def parse_bandwidth(data: Any) -> BandwidthPolicy:
    """The ``[bandwidth]`` table. Raises ValueError naming the key and why."""
    if not isinstance(data, dict):
        raise ValueError("bandwidth must be a table")
    for key in data:
        if key not in _BANDWIDTH_KEYS:
            raise ValueError(f"bandwidth.{key} is not a known key ({', '.join(_BANDWIDTH_KEYS)})")
    out: dict[str, Any] = {}
    if "background_limit" in data:
        out["background_limit"] = parse_rate(data["background_limit"], "bandwidth.background_limit")
    if "yield_to_others" in data:
        if not isinstance(data["yield_to_others"], bool):
            raise ValueError("bandwidth.yield_to_others must be true or false")
        out["yield_to_others"] = data["yield_to_others"]
    work = data.get("work_schedule")
    if work is not None:
        where = "bandwidth.work_schedule"
        if not isinstance(work, dict):
            raise ValueError(f"{where} must be a table")
        extra = set(work) - {"days", "start", "end", "work_limits", "non_work_limits"}
        if extra:
            raise ValueError(f"{where}.{sorted(extra)[0]} is not a known key")
        out["work"] = _window(work, where)
        out["work_limits"] = _limits(work.get("work_limits", {}), f"{where}.work_limits")
        out["non_work_limits"] = _limits(
            work.get("non_work_limits", {}), f"{where}.non_work_limits"
        )
    maint = data.get("maintenance_schedule")
    if maint is not None:
        where = "bandwidth.maintenance_schedule"
        if not isinstance(maint, dict):
            raise ValueError(f"{where} must be a table")
        extra = set(maint) - {"days", "start", "end", "limits"}
        if extra:
            raise ValueError(f"{where}.{sorted(extra)[0]} is not a known key")
        out["maintenance"] = _window(maint, where)
        out["maintenance_limits"] = _limits(maint.get("limits", {}), f"{where}.limits")
    return BandwidthPolicy(**out)
