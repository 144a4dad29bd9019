"""Handles: the access check made when an interface is obtained (SPEC §4.3).

Like IBackgroundCopyJob::QueryInterface, ``open`` checks the caller's token once and hands
back an unguessable handle; calls made with it are judged by the identity that opened it.
Handles live in memory only, so a restart of ferryd kills them all.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from ..errors import FerryError
from ..model.token import Token

MAX_TTL = 3600.0


class Interface(StrEnum):
    JOB = "job"
    TOKEN_OPTIONS = "token-options"


@dataclass(frozen=True, slots=True)
class Handle:
    id: str
    job_id: str
    interface: Interface
    opener: Token
    expires: float | None  # None: dies with the opening connection
    connection_alive: Callable[[], bool]


class HandleTable:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._handles: dict[str, Handle] = {}
        self._clock = clock

    def open(
        self,
        job_id: str,
        interface: Interface,
        opener: Token,
        ttl: float | None,
        connection_alive: Callable[[], bool],
    ) -> Handle:
        if ttl is not None and not (0 < ttl <= MAX_TTL):
            raise FerryError("E_INVALIDARG", f"ttl must be between 1 and {int(MAX_TTL)} seconds")
        self.sweep()
        handle = Handle(
            id=secrets.token_urlsafe(24),  # 192 random bits
            job_id=job_id,
            interface=interface,
            opener=opener,
            expires=None if ttl is None else self._clock() + ttl,
            connection_alive=connection_alive,
        )
        self._handles[handle.id] = handle
        return handle

    def _alive(self, h: Handle) -> bool:
        if h.expires is not None:
            return self._clock() < h.expires
        return h.connection_alive()

    def get(self, handle_id: str, interface: Interface | None = None) -> Handle:
        h = self._handles.get(handle_id)
        if h is None or not self._alive(h):
            self._handles.pop(handle_id, None)
            raise FerryError(
                "E_ACCESSDENIED", "unknown, released or expired handle (open the job again)"
            )
        if interface is not None and h.interface is not interface:
            raise FerryError(
                "E_INVALIDARG", f"the handle is for the {h.interface.value!r} interface"
            )
        return h

    def release(self, handle_id: str) -> None:
        self.get(handle_id)
        del self._handles[handle_id]

    def drop_job(self, job_id: str) -> None:
        for hid in [k for k, h in self._handles.items() if h.job_id == job_id]:
            del self._handles[hid]

    def sweep(self) -> None:
        for hid in [k for k, h in self._handles.items() if not self._alive(h)]:
            del self._handles[hid]

    def __len__(self) -> int:
        return len(self._handles)
