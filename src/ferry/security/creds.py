"""The raw credential syscalls that change only the calling thread's identity for file
access: supplementary groups, fsgid and fsuid (the switch itself, fail-closed, is
``IdentityIO``'s in identity.py).

Linux keeps credentials per thread, but glibc's ``setgroups()`` wrapper broadcasts the
change to every thread of the process, so the calls go straight to ``syscall(2)`` with the
machine's syscall numbers; a machine whose numbers are not known here is refused.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

from ..errors import FerryError

# (setgroups, setfsuid, setfsgid) syscall numbers. On x86_64 and aarch64 the native calls
# take 32-bit ids (there is no separate *32 variant as on i386/arm).
SYSCALLS: dict[str, tuple[int, int, int]] = {
    "x86_64": (116, 122, 123),
    "aarch64": (159, 151, 152),
}
MAX_ID = 0xFFFFFFFE  # (uid_t)-1 means "no change" to the kernel, so it is never a real id


class PerThreadCreds:
    """Raw credential syscalls that affect only the calling thread."""

    def __init__(self, machine: str) -> None:
        numbers = SYSCALLS.get(machine)
        if numbers is None:
            raise FerryError(
                "E_FAIL",
                f"per-thread identity switching is not supported on {machine!r}; "
                "refusing to run as root",
            )
        self._nr_setgroups, self._nr_setfsuid, self._nr_setfsgid = numbers
        # A private handle so restype/argtypes set here cannot leak to other ctypes users.
        libc = ctypes.CDLL(None, use_errno=True)
        self._syscall = libc.syscall
        self._syscall.restype = ctypes.c_long

    def setgroups(self, groups: tuple[int, ...]) -> None:
        array: Any = (ctypes.c_uint32 * len(groups))(*groups) if groups else None
        ctypes.set_errno(0)
        rc = self._syscall(ctypes.c_long(self._nr_setgroups), ctypes.c_long(len(groups)), array)
        if rc != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def setfsuid(self, uid: int) -> int:
        """Returns the previous fsuid, whether or not the change took; -1 only queries."""
        return int(self._syscall(ctypes.c_long(self._nr_setfsuid), ctypes.c_long(uid)))

    def setfsgid(self, gid: int) -> int:
        return int(self._syscall(ctypes.c_long(self._nr_setfsgid), ctypes.c_long(gid)))

    def current(self) -> tuple[int, int, list[int]]:
        """(fsuid, fsgid, sorted groups) of the calling thread."""
        return self.setfsuid(-1), self.setfsgid(-1), sorted(os.getgroups())


def check_id(what: str, value: int) -> None:
    """A token's uid, gid or group must be an id the kernel takes as one (E_ACCESSDENIED)."""
    if not 0 <= value <= MAX_ID:
        raise FerryError("E_ACCESSDENIED", f"token {what} {value} is not a valid id")
