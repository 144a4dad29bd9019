"""Yielding to other traffic (SPEC §10): a LEDBAT-style controller (RFC 6817's idea, run on
the receiving side as rLEDBAT does) that sets one shared rate for all background transfers
from the queueing delay on the path to the servers they download from.

The delay: ``TCP_INFO`` of ferry's own receiving sockets does not show it on Linux (a
receiver's ``tcpi_rcv_rtt`` is a minimum filter and ``tcpi_rtt`` needs data we send), so the
controller measures it the way TCP itself would see it: every ``INTERVAL`` seconds it opens a
TCP connection to each server a background download receives from (the address its socket is
connected to, from the socket) and times the handshake — the server's SYN-ACK waits in the
same queue as the data sent to us — then resets it (no request is ever sent). A socket is
watched while its file transfers (the sink says when that ends) or until it closes. The
smallest sample over the servers is filtered as LEDBAT does: the current delay is the minimum
of the last ``CURRENT_FILTER`` samples, the base delay the minimum over the last
``BASE_HISTORY`` one-minute buckets, and the queueing delay is their difference. A handshake
that does not finish within ``PROBE_TIMEOUT`` counts as that long (a full queue dropped it).

The rate moves toward keeping that queueing delay at ``TARGET``:

* below the target the rate grows by up to ``GAIN_UP`` (a fraction) per interval, in
  proportion to how far below it is — the link looks free, use it;
* above the target it shrinks by up to ``GAIN_DOWN`` per interval, in proportion to how far
  above, but never below ``MIN_RATE`` — someone else is filling the queue (a foreground
  download, a video call), make room;
* it never runs ahead of twice what was actually received in the last interval, so an idle or
  server-limited transfer cannot wind it up.

The rate is paid for in the limiter's data path like any limit (transfer/bandwidth.py): while
a transfer waits, its socket is not read, and TCP's receive window slows the sender. Background
downloads use connections with small, fixed buffers (http.py: a 256 KiB receive buffer set
before connecting, a 64 KiB read buffer) so that the window closes promptly and the sender
never has megabytes of window to pour into the queue; the price is a ceiling of about
256-512 KiB per round trip for a background download (2.5-5 MB/s at 100 ms). A receive buffer is
never shrunk on a live connection: the window already offered cannot shrink, so the kernel
would drop what the sender may still send, and retransmissions would take the link.
Foreground jobs are never governed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections import deque
from typing import Any

log = logging.getLogger("ferry.transfer")

INTERVAL = 0.1  # seconds between control steps (and delay probes)
PROBE_TIMEOUT = 1.0  # a handshake slower than this counts as this slow
# Seconds of queueing delay the controller aims at. RFC 6817 allows up to 100 ms, which suits a
# bloated buffer; measured on the 40 Mbit/s tbf link (benchmarks/bandwidth.py), a foreground
# curl download alone keeps only 6-60 ms in the queue, so a 100 ms target would never yield.
TARGET = 0.010
GAIN_UP = 0.25  # most the rate grows per interval (x1.25) with an empty queue
GAIN_DOWN = 0.35  # shrink per interval per target's worth of excess delay ...
MAX_DOWN = 0.7  # ... but at most by this fraction (x0.3) in one interval
MIN_RATE = 32 << 10  # bytes/s a background transfer keeps, however busy the link
START_RATE = 256 << 10  # bytes/s when a background transfer starts
CURRENT_FILTER = 2  # samples whose minimum is the current delay
BASE_HISTORY = 10  # one-minute buckets whose minimum is the base delay


# struct tcp_info (linux/tcp.h): u32 tcpi_rtt at byte 68 and tcpi_rcv_rtt at 92 (microseconds).
_RTT_OFFSET = 68
_RCV_RTT_OFFSET = 92
_TCP_INFO_LEN = 104


def tcp_delay(sock: socket.socket) -> float | None:
    """The receiver's view of the round trip of ``sock`` in seconds; None if unknown, -1.0
    if the socket is closed. (Idle is not closed: a throttled transfer's socket receives
    nothing while its window is shut.)"""
    try:
        if sock.fileno() < 0:
            return -1.0
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    except OSError:
        return -1.0
    if len(raw) < _TCP_INFO_LEN:
        return None
    (rtt,) = struct.unpack_from("I", raw, _RTT_OFFSET)
    (rcv_rtt,) = struct.unpack_from("I", raw, _RCV_RTT_OFFSET)
    value = rcv_rtt or rtt
    return value / 1e6 if value else None


class YieldController:
    """One per daemon. ``attach``/``detach`` are told of the sockets background downloads
    receive on; ``rate`` is the shared background rate (None: no yielding in force)."""

    def __init__(self, received: Any = None) -> None:
        self._sockets: dict[int, socket.socket] = {}
        self._peers: dict[int, tuple[int, Any]] = {}
        self._attached: dict[int, int] = {}  # id(sock) -> transfers watching it
        self.rate: float | None = None
        self.queueing_delay: float | None = None
        self.received_rate = 0.0
        self.base_delay: float | None = None
        self._current: deque[float] = deque(maxlen=CURRENT_FILTER)
        self._base: deque[tuple[int, float]] = deque(maxlen=BASE_HISTORY)
        # A callable giving the bytes background transfers received so far (the limiter's).
        self._received = received
        self._history: deque[tuple[float, int]] = deque(maxlen=int(1 / INTERVAL) + 1)

    def attach(self, sock: socket.socket) -> None:
        try:
            peer = sock.getpeername()
        except OSError:
            return
        key = id(sock)
        self._sockets[key] = sock
        self._peers[key] = (sock.family, peer)
        # A kept-alive connection may carry the next file before the last one's transfer
        # has ended (its detach comes later): count, so that detach does not unwatch it.
        self._attached[key] = self._attached.get(key, 0) + 1

    def detach(self, sock: socket.socket) -> None:
        key = id(sock)
        left = self._attached.pop(key, 1) - 1
        if left > 0:
            self._attached[key] = left
            return
        self._sockets.pop(key, None)
        self._peers.pop(key, None)

    def peers(self) -> set[tuple[int, Any]]:
        """The servers of the watched sockets; closed sockets are dropped."""
        for key, sock in list(self._sockets.items()):
            if tcp_delay(sock) == -1.0:
                del self._sockets[key]
                self._peers.pop(key, None)
                self._attached.pop(key, None)
        return set(self._peers.values())

    def _base_delay(self, sample: float) -> float:
        minute = int(time.monotonic() // 60)
        if self._base and self._base[-1][0] == minute:
            self._base[-1] = (minute, min(self._base[-1][1], sample))
        else:
            self._base.append((minute, sample))
        return min(v for _, v in self._base)

    def step(self, delays: list[float]) -> float | None:
        """One control step with the delays just measured (seconds, one per server);
        returns the new rate (bytes/s) or None (nothing to govern)."""
        # What background transfers received lately (over about a second: a throttled
        # transfer reads in bursts).
        now = time.monotonic()
        received = self._received() if self._received is not None else 0
        self._history.append((now, received))
        first_t, first_b = self._history[0]
        got = self.received_rate = (received - first_b) / (now - first_t) if now > first_t else 0.0
        if not self._sockets:
            self.rate = None
            self._current.clear()
            return None
        if not delays:
            return self.rate
        sample = min(delays)
        self._current.append(sample)
        base = self.base_delay = self._base_delay(sample)
        queueing = self.queueing_delay = max(0.0, min(self._current) - base)
        rate = self.rate if self.rate is not None else float(START_RATE)
        off_target = (TARGET - queueing) / TARGET  # 1 with an empty queue, < 0 above target
        if off_target >= 0:
            rate *= 1 + GAIN_UP * off_target
            rate = min(rate, max(2 * got, float(START_RATE)))
        else:
            rate *= max(1 - MAX_DOWN, 1 + GAIN_DOWN * off_target)
        self.rate = max(float(MIN_RATE), rate)
        return self.rate

    async def run(self, apply: Any) -> None:
        """Step every INTERVAL and hand the rate to ``apply`` (the limiter), which answers
        whether yielding is in force (``[bandwidth] yield_to_others``)."""
        steps = 0
        while True:
            started = asyncio.get_running_loop().time()
            try:
                peers = self.peers()
                delays = list(await asyncio.gather(*(probe(f, a) for f, a in peers)))
                rate = self.step(delays)
                apply(None if rate is None else int(rate))
                steps += 1
                if rate is not None and steps % 10 == 0:
                    log.debug(
                        "yielding: base delay %.1f ms, queueing %.1f ms, rate %.0f B/s, "
                        "received %.0f B/s, %d sockets",
                        (self.base_delay or 0) * 1000,
                        (self.queueing_delay or 0) * 1000,
                        rate,
                        self.received_rate,
                        len(self._sockets),
                    )
            except Exception:  # the controller must not take the daemon down
                log.exception("the yielding controller failed a step")
            spent = asyncio.get_running_loop().time() - started
            await asyncio.sleep(max(0.0, INTERVAL - spent))


async def probe(family: int, address: Any) -> float:
    """Seconds a TCP handshake with ``address`` takes (PROBE_TIMEOUT at most); the
    connection is reset at once, nothing is sent on it."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        t0 = loop.time()
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                await loop.sock_connect(sock, address)
        except (TimeoutError, OSError):
            return PROBE_TIMEOUT
        return loop.time() - t0
    finally:
        sock.close()
