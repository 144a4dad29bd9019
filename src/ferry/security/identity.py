"""File operations performed *as a token* (SPEC §4.4): the only place where ferryd, running
as root, touches a user's files.

When ferryd is root, each operation runs on a worker thread that first switches **its own**
credentials (supplementary groups, fsgid, fsuid) to the token's, verifies that the switch
took, performs the operation and switches back. Linux keeps credentials per thread, so the
daemon's other threads keep root; glibc's ``setgroups()`` wrapper would broadcast the change
to every thread, which is why the raw syscalls are used. Changing the fsuid away from 0 also
drops the file capabilities (CAP_DAC_OVERRIDE, CAP_FOWNER, ...) from the thread's effective
set, so the kernel checks every access exactly as it would for the user — the same technique
knfsd and Samba use. A descriptor opened this way keeps the access it was opened with, so
data is then written through it from any thread.

In user mode (ferryd not root) nothing is switched: the daemon serves its own uid only, and
a token for any other uid is refused.

Every failure to switch is fail-closed: the operation is refused (E_ACCESSDENIED), never run
with the daemon's own credentials. A failure to switch *back* poisons the IdentityIO: it
refuses every later identity operation rather than risk running one with the wrong
credentials.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import logging
import os
import platform
import posixpath
import secrets
import stat
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..errors import FerryError
from ..model.paths import TEMP_SUFFIX, temp_name_for
from ..model.token import Token

log = logging.getLogger("ferry.identity")

T = TypeVar("T")

# (setgroups, setfsuid, setfsgid) syscall numbers. On x86_64 and aarch64 the native calls
# take 32-bit ids (there is no separate *32 variant as on i386/arm).
SYSCALLS: dict[str, tuple[int, int, int]] = {
    "x86_64": (116, 122, 123),
    "aarch64": (159, 151, 152),
}
MAX_ID = 0xFFFFFFFE  # (uid_t)-1 means "no change" to the kernel, so it is never a real id
TEMP_TOKEN_BYTES = 12  # 96 random bits: a name nobody can predict or collide with


class _PerThreadCreds:
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


def _check_id(what: str, value: int) -> None:
    if not 0 <= value <= MAX_ID:
        raise FerryError("E_ACCESSDENIED", f"token {what} {value} is not a valid id")


async def settle(fut: asyncio.Future[T]) -> bool:
    """Wait until ``fut`` (work running on another thread) has finished, even if the caller
    is cancelled meanwhile; returns whether a cancellation arrived.

    A thread cannot be interrupted: while it runs it may still use descriptors the caller
    would close on cancellation, and a closed descriptor number is soon reused by another
    file. So the caller waits for the thread before it cleans up, then re-raises."""
    cancelled = False
    while not fut.done():
        try:
            await asyncio.wait([fut])
        except asyncio.CancelledError:
            cancelled = True
    return cancelled


def new_temp_name(local_name: str) -> str:
    """A fresh temporary name for ``local_name``: ``<dir>/.<basename>.<random>.ferry-part``,
    96 random bits that nobody can predict. Nothing is created: the caller persists the name,
    then creates the file with ``IdentityIO.create_temp``."""
    return temp_name_for(local_name, secrets.token_hex(TEMP_TOKEN_BYTES))


def check_temp_name(local_name: str, temp_name: str) -> None:
    """``temp_name`` is a temporary name of ``local_name`` as ``new_temp_name`` makes them: a
    plain hidden file ``.<basename>.<token>.ferry-part`` in the same directory (no other
    directory, no NUL, no slash or dot in the token). Raises E_INVALIDARG otherwise."""
    directory, base = posixpath.split(temp_name)
    stem = base.removesuffix(TEMP_SUFFIX)
    token = stem.rpartition(".")[2]
    valid = (
        "\x00" not in temp_name
        and directory == posixpath.dirname(local_name)
        and base.startswith(".")
        and stem != base
        and "." in stem[1:]
        and bool(token)
    )
    if valid:
        try:
            valid = temp_name_for(local_name, token) == temp_name
        except FerryError:
            valid = False
    if not valid:
        raise FerryError(
            "E_INVALIDARG", f"{temp_name!r} is not a temporary name of {local_name!r}"
        )


class IdentityIO:
    """Performs file operations as a token on a bounded pool of worker threads."""

    def __init__(self, max_workers: int = 8) -> None:
        self._root = os.geteuid() == 0
        self._creds: _PerThreadCreds | None = None
        # What every worker thread must hold between operations (checked only when root).
        self._base_groups = tuple(os.getgroups())
        self._base = (os.geteuid(), os.getegid(), sorted(self._base_groups))
        if self._root:
            self._creds = _PerThreadCreds(platform.machine())
        self._broken = False
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ferry-id")

    @property
    def switches_identity(self) -> bool:
        """True when operations run with the token's per-thread credentials (ferryd is root)."""
        return self._root

    @property
    def broken(self) -> bool:
        return self._broken

    async def shutdown(self) -> None:
        """Wait for running operations and stop the workers."""
        await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown, True)

    # ---- the identity switch (runs on a worker thread) ---------------------------

    def _poison(self, why: str) -> FerryError:
        self._broken = True
        log.critical("identity switching disabled: %s (thread %s)", why, threading.get_ident())
        return FerryError("E_FAIL", f"identity switching disabled: {why}")

    def _as_token(self, token: Token, fn: Callable[..., T], *args: Any) -> T:
        if self._broken:
            raise FerryError("E_FAIL", "identity switching is disabled after a failure")
        creds = self._creds
        if creds is None:
            if token.uid != os.geteuid():
                raise FerryError(
                    "E_ACCESSDENIED",
                    f"a user-mode ferryd serves only uid {os.geteuid()}, not {token.uid}",
                )
            return fn(*args)
        # Never trust a thread's state: a worker must hold exactly root's credentials now.
        if creds.current() != self._base:
            raise self._poison(f"worker thread credentials are {creds.current()}")
        if token.uid == 0:
            return fn(*args)
        _check_id("uid", token.uid)
        _check_id("gid", token.gid)
        for g in token.groups:
            _check_id("group", g)
        try:
            try:
                creds.setgroups(token.groups)
            except OSError as exc:
                raise FerryError(
                    "E_ACCESSDENIED", f"cannot assume the groups of uid {token.uid}: {exc}"
                ) from None
            creds.setfsgid(token.gid)
            creds.setfsuid(token.uid)
            want = (token.uid, token.gid, sorted(token.groups))
            got = creds.current()
            if got != want:
                raise FerryError(
                    "E_ACCESSDENIED",
                    f"cannot assume the identity of uid {token.uid}: thread has {got}",
                )
            return fn(*args)
        finally:
            self._restore(creds)

    def _restore(self, creds: _PerThreadCreds) -> None:
        # fsuid first: returning it to 0 gives the file capabilities back, after which the
        # group changes are plain CAP_SETGID operations.
        try:
            creds.setfsuid(self._base[0])
            creds.setfsgid(self._base[1])
            creds.setgroups(self._base_groups)
            got = creds.current()
        except OSError as exc:
            raise self._poison(f"cannot restore credentials: {exc}") from None
        if got != self._base:
            raise self._poison(f"restored credentials are {got}, expected {self._base}")

    async def _call(
        self,
        token: Token | None,
        fn: Callable[..., T],
        *args: Any,
        discard: Callable[[T], Awaitable[None]] | None = None,
    ) -> T:
        """Run ``fn`` on a worker (as ``token``, or without switching when None).

        On cancellation the operation is allowed to finish; a result that holds a resource
        (a descriptor, a new file) is handed to ``discard`` so nothing leaks."""
        loop = asyncio.get_running_loop()
        if token is None:
            fut = loop.run_in_executor(self._pool, fn, *args)
        else:
            fut = loop.run_in_executor(self._pool, self._as_token, token, fn, *args)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            await settle(fut)
            if discard is not None and not fut.cancelled() and fut.exception() is None:
                try:
                    await discard(fut.result())
                except Exception as exc:  # the cancellation is what the caller must see
                    log.warning("cleanup after a cancelled %s failed: %s", fn.__name__, exc)
            raise

    # ---- operations ------------------------------------------------------------------

    async def create_temp(
        self, token: Token, local_name: str, temp_name: str | None = None
    ) -> tuple[int, str]:
        """Create the hidden temporary file of ``local_name`` (mode 0600) and open it for
        writing. O_EXCL|O_NOFOLLOW: an existing file or a planted symlink is never opened
        (ERROR_FILE_EXISTS).

        ``temp_name`` is the name to create, chosen beforehand with ``new_temp_name`` so the
        caller can persist it before the file exists (a crash then never leaves a file
        nobody knows); without it a fresh name is chosen here. Either way the name is
        returned with the descriptor."""
        path = new_temp_name(local_name) if temp_name is None else temp_name
        check_temp_name(local_name, path)

        def op() -> tuple[int, str]:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                return os.open(path, flags, 0o600), path
            except OSError as exc:
                raise FerryError.from_oserror(exc, f"cannot create {path}") from None

        async def discard(result: tuple[int, str]) -> None:
            os.close(result[0])
            await self.unlink(token, result[1])

        return await self._call(token, op, discard=discard)

    async def open_temp(self, token: Token, temp_path: str) -> int:
        """Reopen a temporary file after a restart. It must still be the token's own,
        singly-linked regular file: anything else was put there by someone else."""

        def op() -> int:
            flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
            try:
                fd = os.open(temp_path, flags)
            except OSError as exc:
                if exc.errno in (errno.ENXIO, errno.EISDIR):
                    raise FerryError(
                        "E_ACCESSDENIED", f"{temp_path} is not a regular file"
                    ) from None
                raise FerryError.from_oserror(exc, f"cannot open {temp_path}") from None
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise FerryError("E_ACCESSDENIED", f"{temp_path} is not a regular file")
                if st.st_uid != token.uid:
                    raise FerryError(
                        "E_ACCESSDENIED",
                        f"{temp_path} is owned by uid {st.st_uid}, not {token.uid}",
                    )
                if st.st_nlink != 1:
                    raise FerryError(
                        "E_ACCESSDENIED", f"{temp_path} has {st.st_nlink} links; expected 1"
                    )
                _clear_nonblock(fd)
            except BaseException:
                os.close(fd)
                raise
            return fd

        return await self._call(token, op, discard=_close_async)

    async def open_read(self, token: Token, path: str) -> int:
        """Open the source of a file:// transfer for reading. O_NONBLOCK keeps a FIFO planted
        as the source from blocking a worker forever; only regular files are accepted."""

        def op() -> int:
            flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
            try:
                fd = os.open(path, flags)
            except OSError as exc:
                raise FerryError.from_oserror(exc, f"cannot open {path}") from None
            try:
                st = os.fstat(fd)
                if stat.S_ISDIR(st.st_mode):
                    raise FerryError("E_INVALIDARG", f"{path} is a directory")
                if not stat.S_ISREG(st.st_mode):
                    raise FerryError("E_INVALIDARG", f"{path} is not a regular file")
                _clear_nonblock(fd)
            except BaseException:
                os.close(fd)
                raise
            return fd

        return await self._call(token, op, discard=_close_async)

    async def publish_many(
        self, token: Token, pairs: list[tuple[str, str]], mode: int = 0o644
    ) -> tuple[int, FerryError | None]:
        """Publish finished temporary files in order, each (temporary, local name) in one
        directory: its final mode, then the rename. Each temporary file is opened
        O_NOFOLLOW so the chmod cannot be redirected through a symlink. Stops at the first
        failure. Every directory a rename went into is then synced once, so the renames are
        durable before the caller records them — one directory fsync for a job of 1,000
        files, not 1,000. One trip to a worker for the whole list.

        Returns how many were renamed and the failure that stopped the rest; or, when every
        file was renamed, the failure to sync a directory (``done == len(pairs)`` with an
        error: the files are in place, but a crash may still undo the renames, so the caller
        must not report them as durably published). A directory the token may not open
        (write and search permission only, a drop box) cannot be synced by it at all: that
        is logged and the renames count as published, rather than making ``complete``
        impossible there."""
        for temp_path, local_name in pairs:
            _same_directory(temp_path, local_name)

        def op() -> tuple[int, FerryError | None]:
            done = 0
            error: FerryError | None = None
            dirs: dict[str, None] = {}
            try:
                for temp_path, local_name in pairs:
                    _publish_one(temp_path, local_name, mode)
                    dirs[posixpath.dirname(local_name)] = None
                    done += 1
            except FerryError as exc:
                error = exc
            for directory in dirs:
                failure = _sync_directory(directory, token.uid)
                if failure is not None:
                    if error is None:
                        error = failure
                    else:  # the rename's failure is what the caller acts on
                        log.error("%s", failure.message)
            return done, error

        return await self._call(token, op)

    async def unlink(self, token: Token, path: str) -> bool:
        """Delete a file; False when it was already gone."""

        def op() -> bool:
            try:
                os.unlink(path)
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise FerryError.from_oserror(exc, f"cannot delete {path}") from None
            return True

        return await self._call(token, op)

    async def regular_file_size(self, token: Token, path: str) -> int | None:
        """The size of a regular file (not followed if a symlink), or None when there is
        no such file; looked at as ``token``."""

        def op() -> int | None:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise FerryError.from_oserror(exc, f"cannot look at {path}") from None
            return st.st_size if stat.S_ISREG(st.st_mode) else None

        return await self._call(token, op)

    async def check_directory(self, token: Token, local_name: str) -> None:
        """The directory of ``local_name`` exists and the token can search it.

        Stat'ing ``dir/.`` as the token needs search permission on the directory itself
        and fails with ENOTDIR for a non-directory. Write permission is not probed here
        (os.access would use the real uid, not the fsuid); creating the temporary file
        checks it for real."""
        directory = posixpath.dirname(local_name) or "/"

        def op() -> None:
            try:
                os.stat(posixpath.join(directory, "."))
            except (FileNotFoundError, NotADirectoryError):
                raise FerryError(
                    "ERROR_PATH_NOT_FOUND", f"the directory {directory} does not exist"
                ) from None
            except OSError as exc:
                raise FerryError.from_oserror(exc, f"cannot use directory {directory}") from None

        await self._call(token, op)

    async def fsync(self, fd: int) -> None:
        def op() -> None:
            try:
                os.fsync(fd)
            except OSError as exc:
                raise FerryError.from_oserror(exc, "cannot sync the temporary file") from None

        await self._call(None, op)

    async def close(self, fd: int) -> None:
        """Close a descriptor off the event loop (closing can flush, e.g. on NFS)."""
        await self._call(None, _close_quietly, fd)

    async def run_io(self, fn: Callable[..., T], *args: Any) -> T:
        """Blocking data I/O on descriptors that are already open (no identity needed)."""
        return await self._call(None, fn, *args)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError as exc:
        log.warning("closing descriptor %d: %s", fd, exc)


async def _close_async(fd: int) -> None:
    _close_quietly(fd)


def _clear_nonblock(fd: int) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)


def _same_directory(src: str, dst: str) -> None:
    if posixpath.dirname(src) != posixpath.dirname(dst):
        raise FerryError("E_INVALIDARG", f"{src} and {dst} are not in the same directory")


def _publish_one(temp_path: str, local_name: str, mode: int) -> None:
    try:
        fd = os.open(temp_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise FerryError.from_oserror(exc, f"cannot open {temp_path}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FerryError("E_ACCESSDENIED", f"{temp_path} is not a regular file")
        os.fchmod(fd, mode)
    except OSError as exc:
        raise FerryError.from_oserror(exc, f"cannot chmod {temp_path}") from None
    finally:
        os.close(fd)
    try:
        os.rename(temp_path, local_name)
    except OSError as exc:
        raise FerryError.from_oserror(exc, f"cannot rename {temp_path} to {local_name}") from None


def _sync_directory(directory: str, uid: int) -> FerryError | None:
    """fsync ``directory`` (on a worker, as the token): None when its entries are durable,
    or when the token may not open it (logged; see ``publish_many``); the failure else."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except PermissionError as exc:
        log.warning(
            "uid %d may not open %s to sync it (%s): its new entries are in place, "
            "durable once the file system commits them",
            uid,
            directory,
            exc.strerror,
        )
        return None
    except OSError as exc:
        return FerryError.from_oserror(exc, f"renamed into {directory}, but cannot sync it")
    try:
        os.fsync(fd)
    except OSError as exc:
        return FerryError.from_oserror(exc, f"renamed into {directory}, but cannot sync it")
    finally:
        os.close(fd)
    return None
