"""What ferryd knows of the network (SPEC §10): the current network cost, which gates jobs by
their cost flags, and the bandwidth limits in force.

The cost comes, first to last, from: an administrator's ``ferry network --cost`` (until
``--cost auto``), the config's ``[network] cost`` unless it is ``auto``, NetworkManager's
``Metered`` property of its primary connection (read over D-Bus with dbus-fast, watched with
PropertiesChanged and re-read every ``NM_POLL`` seconds), else ``unrestricted``. Without a
D-Bus bus or NetworkManager on it, ferryd logs that once and goes on with the rest.

A change of the cost wakes the scheduler (``kick``): a job its flags now allow starts in the
next pass, and a running job they now forbid is stopped and waits QUEUED, showing
BG_E_BLOCKED_BY_COST_TRANSFER_POLICY as its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

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


class NetworkState:
    def __init__(
        self,
        limiter: Limiter,
        kick: Callable[[], None],
        configured_cost: str = "auto",
        dbus_address: str | None = None,
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
        return None

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
                    await asyncio.wait_for(changed.wait(), NM_POLL)
        finally:
            bus.disconnect()
