"""File operations performed *as a token* (SPEC §4.4): the only place where ferryd, running
as root, touches a user's files.

When ferryd is root, each operation runs on a worker thread that first switches **its own**
credentials (supplementary groups, fsgid, fsuid) to the token's, verifies that the switch
took, performs the operation and switches back. Linux keeps credentials per thread, so the
daemon's other threads keep root; glibc's ``setgroups()`` wrapper would broadcast the change
to every thread, which is why the raw syscalls are used (``creds.py``). Changing the fsuid
away from 0 also drops the file capabilities (CAP_DAC_OVERRIDE, CAP_FOWNER, ...) from the
thread's effective set, so the kernel checks every access exactly as it would for the user —
the same technique knfsd and Samba use. A descriptor opened this way keeps the access it was
opened with, so data is then written through it from any thread.

In user mode (ferryd not root) nothing is switched: the daemon serves its own uid only, and
a token for any other uid is refused.

Every failure to switch is fail-closed: the operation is refused (E_ACCESSDENIED), never run
with the daemon's own credentials. A failure to switch *back* poisons the IdentityIO: it
refuses every later identity operation rather than risk running one with the wrong
credentials.

The temporary names ``create_temp`` creates, and checks, are ``tempnames.py``'s.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import platform
import posixpath
import stat
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..errors import FerryError
from ..model.token import Token
from .ccache import check_cache_file, read_cache_file
from .creds import PerThreadCreds, check_id
from .tempnames import check_temp_name, new_temp_name

log = logging.getLogger("ferry.identity")

T = TypeVar("T")


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


class IdentityIO:
    """Performs file operations as a token on a bounded pool of worker threads."""

    def __init__(self, max_workers: int = 8) -> None:
        self._root = os.geteuid() == 0
        self._creds: PerThreadCreds | None = None
        # What every worker thread must hold between operations (checked only when root).
        self._base_groups = tuple(os.getgroups())
        self._base = (os.geteuid(), os.getegid(), sorted(self._base_groups))
        if self._root:
            self._creds = PerThreadCreds(platform.machine())
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
        check_id("uid", token.uid)
        check_id("gid", token.gid)
        for g in token.groups:
            check_id("group", g)
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

    def _restore(self, creds: PerThreadCreds) -> None:
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

    async def create_temp_many(
        self, token: Token, names: Sequence[tuple[str, str]]
    ) -> list[int | FerryError]:
        """``create_temp`` for several files in one trip to a worker (a group of a job's
        small files): each (local name, temporary name chosen and persisted beforehand) is
        created exactly as ``create_temp`` creates it, O_EXCL|O_NOFOLLOW, mode 0600. One
        result per name, in order: the descriptor, or the error of that file alone (e.g.
        ERROR_FILE_EXISTS). Cancelled, the trip still ends, and every file it created is
        closed and unlinked."""
        checked: list[FerryError | None] = []
        for local_name, temp_name in names:
            try:
                check_temp_name(local_name, temp_name)
                checked.append(None)
            except FerryError as exc:  # that file fails; never created
                checked.append(exc)

        def op() -> list[int | FerryError]:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            results: list[int | FerryError] = []
            for (_, path), refused in zip(names, checked, strict=True):
                if refused is not None:
                    results.append(refused)
                    continue
                try:
                    results.append(os.open(path, flags, 0o600))
                except OSError as exc:
                    results.append(FerryError.from_oserror(exc, f"cannot create {path}"))
            return results

        async def discard(results: list[int | FerryError]) -> None:
            for (_, path), r in zip(names, results, strict=True):
                if isinstance(r, int):
                    os.close(r)
                    await self.unlink(token, path)

        if all(c is not None for c in checked):
            return [c for c in checked if c is not None]
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
        await self._call(token, _search_directory, posixpath.dirname(local_name) or "/")

    async def check_destinations(self, token: Token, local_names: Sequence[str]) -> None:
        """Every local name's directory exists and the token can search it (as
        ``check_directory``, once per directory), and no local name is itself a directory:
        a download would otherwise be fetched whole into the parent directory and only fail
        at ``complete``. One trip to a worker for all the names."""

        def op() -> None:
            checked: set[str] = set()
            for local_name in local_names:
                directory = posixpath.dirname(local_name) or "/"
                if directory not in checked:
                    _search_directory(directory)
                    checked.add(directory)
                try:
                    st = os.lstat(local_name)
                except OSError:
                    continue  # absent (the usual case) or unreadable: creating it will tell
                if stat.S_ISDIR(st.st_mode):
                    raise FerryError(
                        "E_INVALIDARG",
                        f"the local name {local_name} is a directory; name the file to "
                        f"write (for example {local_name}/NAME)",
                    )

        await self._call(token, op)

    async def check_credential_file(self, token: Token, path: str) -> bool:
        """Whether the Kerberos credential cache (or keytab) ``path`` exists and is one
        ``token`` may hand to ferryd (security/ccache.py); E_ACCESSDENIED when it exists and
        is not. Checked as the token; nothing is read."""
        return await self._call(token, check_cache_file, path, token.uid)

    async def read_credential_file(self, token: Token, path: str) -> bytes | None:
        """The bytes of ``token``'s credential cache (or keytab) ``path``, read as the
        token after the checks of security/ccache.py; None when it does not exist."""
        return await self._call(token, read_cache_file, path, token.uid)

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


def _search_directory(directory: str) -> None:
    """On a worker, as the token: ``directory`` exists and the token may search it.

    Stat'ing ``dir/.`` needs search permission on the directory itself and fails with
    ENOTDIR for a non-directory."""
    try:
        os.stat(posixpath.join(directory, "."))
    except (FileNotFoundError, NotADirectoryError):
        raise FerryError(
            "ERROR_PATH_NOT_FOUND", f"the directory {directory} does not exist"
        ) from None
    except OSError as exc:
        raise FerryError.from_oserror(exc, f"cannot use directory {directory}") from None
