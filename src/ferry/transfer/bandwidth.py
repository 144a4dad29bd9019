"""Bandwidth limits in the data path (SPEC §10): token buckets shared by the transfers they
govern, and the measured use of the link.

Every chunk a transport hands the sink is paid for, after it is written, from each bucket that
governs its job: the job's own ``max_rate``, the limit of its priority in the current period
of the schedule (work hours, outside them, maintenance window), and ``background_limit``,
which every non-foreground job shares. A bucket may go into debt (a chunk is as large as the
transport's read, up to 1 MiB); the transfer then sleeps until the debt is paid, in slices of
at most ``SLICE`` seconds, re-reading the limits after each, so a new limit (a reload, a
schedule boundary, ``ferry set --max-rate``) takes effect within a slice. While the transfer
sleeps it reads nothing, the socket's buffers fill and TCP's receive window closes: the
sender slows to the paid rate.

Foreground jobs are never throttled by policy (only by a ``max_rate`` set on the job
itself). When no bucket governs a job, ``pace`` costs a dictionary look-up and returns.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..model.job import Job
from ..model.network import BACKGROUND, BandwidthPolicy
from ..model.types import Priority
from .ledbat import YieldController

SLICE = 0.2  # longest sleep before the limits are read again (s)
BURST_SECONDS = 0.25  # an idle bucket saves up at most this much of its rate
MEASURE_WINDOW = 2.0  # the measured link use is the average over this many seconds


class TokenBucket:
    """``rate`` bytes per second; the balance may go negative (debt)."""

    __slots__ = ("rate", "tokens", "stamp")

    def __init__(self, rate: int, now: float) -> None:
        self.rate = rate
        self.tokens = 0.0
        self.stamp = now

    def refill(self, now: float) -> None:
        self.tokens = min(
            self.tokens + (now - self.stamp) * self.rate, self.rate * BURST_SECONDS
        )
        self.stamp = now

    def set_rate(self, rate: int, now: float) -> None:
        if rate != self.rate:
            self.refill(now)  # what was earned at the old rate stays earned
            self.rate = rate
            self.tokens = min(self.tokens, rate * BURST_SECONDS)

    def wait_for(self) -> float:
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class _Meter:
    """Bytes moved per priority over the last MEASURE_WINDOW seconds."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, Priority, int]] = deque()

    def add(self, now: float, priority: Priority, count: int) -> None:
        self._samples.append((now, priority, count))
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._samples and self._samples[0][0] < now - MEASURE_WINDOW:
            self._samples.popleft()

    def rates(self, now: float) -> dict[str, float]:
        self._trim(now)
        out = {p.value: 0.0 for p in Priority}
        for _, p, n in self._samples:
            out[p.value] += n / MEASURE_WINDOW
        return out


class Limiter:
    """The buckets of one daemon. ``policy`` comes from the config and may be replaced at any
    time (``set_policy``: SIGHUP, ``ferry reload``)."""

    def __init__(
        self, policy: BandwidthPolicy | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.policy = policy or BandwidthPolicy()
        self.clock = clock
        self._background: TokenBucket | None = None
        self._priority: dict[Priority, TokenBucket] = {}
        self._jobs: dict[str, TokenBucket] = {}
        self._refreshed = -1.0
        self._meter = _Meter()
        # Yielding to other traffic (ledbat.py): the controller, and the shared background
        # rate it sets (None: not in force).
        self.controller: YieldController | None = None
        self.yield_rate: int | None = None
        self._yield: TokenBucket | None = None
        self.background_bytes = 0  # received by non-foreground jobs, for the controller

    def set_policy(self, policy: BandwidthPolicy) -> None:
        self.policy = policy
        self._refreshed = -1.0

    # ---- what the limits are now ----------------------------------------------------------

    def _refresh(self, mono: float) -> None:
        """Re-read the policy (at most every SLICE seconds: schedules change by the minute)."""
        if mono - self._refreshed < SLICE:
            return
        self._refreshed = mono
        now = self.clock()
        bg = self.policy.background_limit
        if bg is None:
            self._background = None
        elif self._background is None:
            self._background = TokenBucket(bg, mono)
        else:
            self._background.set_rate(bg, mono)
        for p in BACKGROUND:
            rate = self.policy.priority_limit(p, now)
            if rate is None:
                self._priority.pop(p, None)
            elif p in self._priority:
                self._priority[p].set_rate(rate, mono)
            else:
                self._priority[p] = TokenBucket(rate, mono)

    def _buckets(self, job: Job, mono: float) -> list[TokenBucket]:
        out: list[TokenBucket] = []
        rate = getattr(job, "max_rate", None)
        if rate:
            bucket = self._jobs.get(job.id)
            if bucket is None:
                bucket = self._jobs[job.id] = TokenBucket(rate, mono)
            else:
                bucket.set_rate(rate, mono)
            out.append(bucket)
        elif self._jobs:
            self._jobs.pop(job.id, None)
        if job.priority is not Priority.FOREGROUND:
            self._refresh(mono)
            bucket = self._priority.get(job.priority)
            if bucket is not None:
                out.append(bucket)
            if self._background is not None:
                out.append(self._background)
            if self._yield is not None:
                out.append(self._yield)
        return out

    # ---- yielding to other traffic ------------------------------------------------------

    def enable_yielding(self) -> YieldController:
        self.controller = YieldController(lambda: self.background_bytes)
        return self.controller

    def set_yield_rate(self, rate: int | None) -> bool:
        """The controller's shared background rate (None: lifted). Returns whether yielding
        is in force (the policy may turn it off)."""
        if not self.policy.yield_to_others:
            rate = None
        self.yield_rate = rate
        mono = time.monotonic()
        if rate is None:
            self._yield = None
        elif self._yield is None:
            self._yield = TokenBucket(rate, mono)
        else:
            self._yield.set_rate(rate, mono)
        return rate is not None

    def watch(self, job: Job, sock: Any) -> Callable[[], None]:
        """A background download of ``job`` receives on ``sock``: the controller measures
        the path to its server until the returned callable is called (the file's transfer
        ended; the connection may live on, idle, in the pool)."""
        controller = self.controller
        if controller is None or job.priority is Priority.FOREGROUND:
            return lambda: None
        controller.attach(sock)
        return lambda: controller.detach(sock)

    def limit_for(self, job: Job) -> int | None:
        """The tightest limit governing ``job`` now (bytes/s), None when none does."""
        rates = [b.rate for b in self._buckets(job, time.monotonic())]
        return min(rates) if rates else None

    # ---- the data path --------------------------------------------------------------------

    async def pace(self, job: Job, count: int) -> None:
        """``count`` bytes of ``job`` arrived: pay for them, sleeping while in debt."""
        mono = time.monotonic()
        self._meter.add(mono, job.priority, count)
        if job.priority is not Priority.FOREGROUND:
            self.background_bytes += count
        buckets = self._buckets(job, mono)
        if not buckets:
            return
        for b in buckets:
            b.refill(mono)
            b.tokens -= count
        while True:
            wait = max(b.wait_for() for b in buckets)
            if wait <= 0:
                return
            await asyncio.sleep(min(wait, SLICE))
            mono = time.monotonic()
            buckets = self._buckets(job, mono)  # a limit may have changed or gone
            if not buckets:
                return
            for b in buckets:
                b.refill(mono)

    def forget(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    # ---- what ``ferry network`` shows -----------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        mono = time.monotonic()
        self._refresh(mono)
        now = self.clock()
        return {
            "period": self.policy.period(now),
            "background_limit": self.policy.background_limit,
            "priority_limits": {
                p.value: self.policy.priority_limit(p, now) for p in BACKGROUND
            },
            "yield_limits": {"background": self.yield_rate},
            "queueing_delay_ms": None
            if self.controller is None or self.controller.queueing_delay is None
            else round(self.controller.queueing_delay * 1000, 1),
            "measured": self._meter.rates(mono),
        }
