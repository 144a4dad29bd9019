"""What ferryd knows of the network (SPEC §10): the current network cost, which gates jobs by
their cost flags; whether there is a route to a job's host (netlink), which holds jobs while
the network is down; and the bandwidth limits in force.

The cost comes, first to last, from: an administrator's ``ferry network --cost`` (until
``--cost auto``), the config's ``[network] cost`` unless it is ``auto``, NetworkManager's
``Metered`` property of its primary connection (read over D-Bus with dbus-fast, watched with
PropertiesChanged and re-read every ``NM_POLL`` seconds), else ``unrestricted``. Without a
D-Bus bus or NetworkManager on it, ferryd logs that once and goes on with the rest.

Routes: the addresses of the hosts of jobs that want to run are checked with RTM_GETROUTE
(pyroute2, over netlink) and the answers kept; every netlink event about links, addresses and
routes has them checked again, and an address without a route is re-checked every
``ROUTE_RECHECK`` seconds besides. A job whose host has no route waits QUEUED with
BG_E_NETWORK_DISCONNECTED as its reason (a running one is stopped: TCP would only stall),
and a TRANSIENT_ERROR job that was held so is retried as soon as the route is back, not after
its min_retry_delay. A host name is resolved in the background; until it is, and whenever
netlink cannot be used (logged once), jobs are not held and retries go as usual.

A change of the cost wakes the scheduler (``kick``): a job its flags now allow starts in the
next pass, and a running job they now forbid is stopped and waits QUEUED, showing
BG_E_BLOCKED_BY_COST_TRANSFER_POLICY as its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from ..model.job import Job
from ..model.network import COST_CHOICES, NETWORK_COSTS, cost_allows, parse_cost_flags
from ..transfer.bandwidth import Limiter

log = logging.getLogger("ferry.network")

NM_BUS_NAME = "org.freedesktop.NetworkManager"
NM_PATH = "/org/freedesktop/NetworkManager"
NM_IFACE = "org.freedesktop.NetworkManager"
PROPS_IFACE = "org.freedesktop.DBus.Properties"
NM_POLL = 5.0  # seconds between reads of Metered, besides the change signals
NM_RETRY = 30.0  # seconds between attempts to reach the bus or NetworkManager
# NMMetered: 0 unknown, 1 yes, 2 no, 3 guess-yes, 4 guess-no.
_METERED = {1: "metered", 3: "metered", 2: "unrestricted", 4: "unrestricted"}
ROUTE_RECHECK = 0.5  # seconds between checks of an address that has no route
NAME_TTL = 60.0  # seconds a resolved host name is kept
MAX_ADDRESSES = 1024  # addresses (and names) remembered; past that the caches start over
RTNH_F_LINKDOWN = 0x10  # a route whose device has no carrier


class NetworkState:
    def __init__(
        self,
        limiter: Limiter,
        kick: Callable[[], None],
        configured_cost: str = "auto",
        dbus_address: str | None = None,
        netlink: bool = True,
    ) -> None:
        self.limiter = limiter
        self.kick = kick
        self.configured_cost = configured_cost
        self.dbus_address = dbus_address
        self.override: str | None = None
        self.nm_cost: str | None = None  # None: no answer from NetworkManager
        self.nm_status = "not tried"
        self._flags_cache: dict[str, int] = {}
        self._reported_failure = False
        # Routes (netlink): per address, whether it has a route (absent: not checked yet);
        # per host name, its addresses and when they were resolved.
        self.netlink = netlink
        self.routes_status = "not started" if netlink else "disabled in the config"
        self._route_ok: dict[str, bool] = {}
        self._names: dict[str, tuple[list[str], float]] = {}
        self._pending: set[str] = set()  # names or addresses to resolve/check
        self._routes_wake = asyncio.Event()
        self._routes_dirty = False

    # ---- the cost ------------------------------------------------------------------------

    @property
    def cost(self) -> str:
        return self.cost_and_source()[0]

    def cost_and_source(self) -> tuple[str, str]:
        if self.override is not None:
            return self.override, "ferry network --cost"
        if self.configured_cost != "auto":
            return self.configured_cost, "config"
        if self.nm_cost is not None:
            return self.nm_cost, "NetworkManager"
        return "unrestricted", "default"

    def set_override(self, cost: str) -> None:
        """``ferry network --cost`` (validated by the caller); ``auto`` ends the override."""
        if cost not in COST_CHOICES:
            raise ValueError(cost)
        before = self.cost
        self.override = None if cost == "auto" else cost
        self._changed(before)

    def reconfigure(self, configured_cost: str) -> None:
        before = self.cost
        self.configured_cost = configured_cost
        self._changed(before)

    def _set_nm(self, cost: str | None) -> None:
        before = self.cost
        self.nm_cost = cost
        self._changed(before)

    def _changed(self, before: str) -> None:
        if self.cost != before:
            log.info("network cost is now %s (%s)", *self.cost_and_source())
        self.kick()  # cheap; a pass re-checks every job it considers

    # ---- the scheduler's gate ----------------------------------------------------------

    def _flags(self, job: Job) -> int:
        name = job.cost_flags
        flags = self._flags_cache.get(name)
        if flags is None:
            flags = self._flags_cache[name] = parse_cost_flags(name)
        return flags

    def gate(self, job: Job) -> dict[str, Any] | None:
        """Why ``job`` may not transfer now, or None."""
        cost = self.cost
        if not cost_allows(self._flags(job), cost):
            return {
                "code": "BG_E_BLOCKED_BY_COST_TRANSFER_POLICY",
                "description": f"the network is {cost} and the job's cost flags "
                f"({job.cost_flags}) do not allow transfers on it",
            }
        host = _next_host(job)
        if host is not None and self.routes_status == "watching" and not self._reachable(host):
            return {
                "code": "BG_E_NETWORK_DISCONNECTED",
                "description": f"offline: no route to {host}; the job goes on as soon as "
                "the network is back",
            }
        return None

    def _addresses(self, host: str) -> list[str] | None:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return [host]
        known = self._names.get(host)
        if known is None or time.monotonic() - known[1] > NAME_TTL:
            self._pending.add(host)
            self._routes_wake.set()
            return None if known is None else known[0]
        return known[0]

    def _reachable(self, host: str) -> bool:
        """False only when every address of ``host`` is known to have no route."""
        addrs = self._addresses(host)
        if not addrs:
            return True
        verdicts = [self._route_ok.get(a) for a in addrs]
        for a, ok in zip(addrs, verdicts, strict=True):
            if ok is None:
                self._pending.add(a)
                self._routes_wake.set()
        return any(ok is not False for ok in verdicts)

    # ---- routes over netlink ---------------------------------------------------------

    async def run_routes(self) -> None:
        """Follow the kernel's links, addresses and routes (RTNLGRP_* over netlink)."""
        if not self.netlink:
            return
        try:
            from pyroute2 import AsyncIPRoute
            from pyroute2.netlink.rtnl import (
                RTMGRP_IPV4_IFADDR,
                RTMGRP_IPV4_ROUTE,
                RTMGRP_IPV6_IFADDR,
                RTMGRP_IPV6_ROUTE,
                RTMGRP_LINK,
            )

            monitor = AsyncIPRoute()
            await monitor.bind(
                groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
                | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
            )  # fmt: skip
            query = AsyncIPRoute()
        except Exception as exc:  # no netlink (a sandbox), no pyroute2
            self.routes_status = f"unavailable: {exc}"
            log.warning("cannot watch routes over netlink (%s); jobs retry as usual", exc)
            return
        self.routes_status = "watching"

        async def events() -> None:
            async for _msg in monitor.get():
                self._routes_dirty = True
                self._routes_wake.set()

        reader = asyncio.ensure_future(events())
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(ROUTE_RECHECK):
                        await self._routes_wake.wait()
                self._routes_wake.clear()
                if reader.done():
                    reader.result()  # the monitor failed: raise it
                await self._check_routes(query)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.routes_status = f"failed: {exc}"
            log.warning("stopped watching routes (%s); jobs retry as usual", exc)
            self.kick()
        finally:
            reader.cancel()
            monitor.close()
            query.close()

    async def _check_routes(self, query: Any) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        loop = asyncio.get_running_loop()
        if len(self._route_ok) > MAX_ADDRESSES or len(self._names) > MAX_ADDRESSES:
            self._route_ok.clear()
            self._names.clear()
        pending, self._pending = self._pending, set()
        for name in [p for p in pending if not _is_address(p)]:
            try:
                infos = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
                addrs = sorted({str(i[4][0]) for i in infos})
            except OSError:
                addrs = []  # the transfer reports a name that does not resolve
            self._names[name] = (addrs, time.monotonic())
            pending.update(addrs)
        if self._routes_dirty:
            self._routes_dirty = False
            targets = set(self._route_ok) | {p for p in pending if _is_address(p)}
        else:
            targets = {a for a, ok in self._route_ok.items() if not ok}
            targets |= {p for p in pending if _is_address(p)}
        changed = False
        for addr in targets:
            try:
                routes = list(await query.route("get", dst=addr))
                ok = bool(routes) and not routes[0]["flags"] & RTNH_F_LINKDOWN
            except NetlinkError:
                ok = False  # ENETUNREACH, EHOSTUNREACH
            if self._route_ok.get(addr) != ok:
                changed = True
                if addr in self._route_ok:
                    log.info("route to %s %s", addr, "is back" if ok else "is gone")
            self._route_ok[addr] = ok
        if changed:
            self.kick()

    # ---- what ``ferry network`` shows ----------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        cost, source = self.cost_and_source()
        return {
            "cost": cost,
            "cost_source": source,
            "cost_state": NETWORK_COSTS[cost],
            "configured_cost": self.configured_cost,
            "override": self.override,
            "networkmanager": {"status": self.nm_status, "cost": self.nm_cost},
            "routes": {
                "status": self.routes_status,
                "unreachable": sorted(a for a, ok in self._route_ok.items() if not ok),
                "reachable": sorted(a for a, ok in self._route_ok.items() if ok),
            },
            "bandwidth": self.limiter.snapshot(),
        }

    # ---- NetworkManager ----------------------------------------------------------------

    async def run(self) -> None:
        """Follow NetworkManager's Metered as long as the daemon runs."""
        while True:
            try:
                await self._follow_nm()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # no bus, no NetworkManager, a broken answer
                self.nm_status = f"unavailable: {exc}"
                if self.nm_cost is not None:
                    self._set_nm(None)
                if not self._reported_failure:
                    self._reported_failure = True
                    log.warning(
                        "cannot read the network cost from NetworkManager over D-Bus (%s); "
                        "using the configured cost (%s)",
                        exc,
                        self.configured_cost,
                    )
                else:
                    log.debug("NetworkManager still unavailable: %s", exc)
            await asyncio.sleep(NM_RETRY)

    async def _follow_nm(self) -> None:
        from dbus_fast import BusType, Message, MessageType
        from dbus_fast.aio import MessageBus

        if self.dbus_address:
            bus = MessageBus(bus_address=self.dbus_address)
        else:
            bus = MessageBus(bus_type=BusType.SYSTEM)
        await bus.connect()
        changed = asyncio.Event()

        def on_message(msg: Any) -> None:
            if msg.message_type is MessageType.SIGNAL and msg.member == "PropertiesChanged":
                changed.set()

        try:
            bus.add_message_handler(on_message)
            for rule in (
                f"type='signal',sender='{NM_BUS_NAME}',path='{NM_PATH}',"
                f"interface='{PROPS_IFACE}',member='PropertiesChanged'",
                f"type='signal',sender='{NM_BUS_NAME}',path='{NM_PATH}',"
                f"interface='{NM_IFACE}',member='PropertiesChanged'",
            ):
                await bus.call(
                    Message(
                        destination="org.freedesktop.DBus",
                        path="/org/freedesktop/DBus",
                        interface="org.freedesktop.DBus",
                        member="AddMatch",
                        signature="s",
                        body=[rule],
                    )
                )
            while True:
                reply = await bus.call(
                    Message(
                        destination=NM_BUS_NAME,
                        path=NM_PATH,
                        interface=PROPS_IFACE,
                        member="Get",
                        signature="ss",
                        body=[NM_IFACE, "Metered"],
                    )
                )
                if reply is None or reply.message_type is MessageType.ERROR:
                    why = reply.body[0] if reply is not None and reply.body else "no answer"
                    raise ConnectionError(f"NetworkManager's Metered: {why}")
                value = reply.body[0].value
                cost = _METERED.get(int(value))
                if self.nm_status != "connected" or cost != self.nm_cost:
                    self.nm_status = "connected"
                    self._reported_failure = False
                    self._set_nm(cost)
                changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(NM_POLL):
                        await changed.wait()
        finally:
            bus.disconnect()


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _next_host(job: Job) -> str | None:
    """The host of the first file still to transfer, for http(s) URLs."""
    for f in job.files:
        if not f.completed:
            url = f.final_url or f.remote_name
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https"):
                return None
            return parts.hostname
    return None
