"""GSSAPI credentials made from the bytes of an identity's credential cache or keytab (read
as that identity by the engine, SPEC §8.2), without any of it reaching a disk.

* The bytes go into an anonymous memory file (``memfd_create``), which GSSAPI reads as
  ``FILE:/proc/self/fd/N``. A cache's is closed as soon as GSSAPI has copied its tickets
  into a private ``MEMORY:`` cache; a keytab's stays open while its entry lives (GSSAPI
  fetches a ticket with it when one is needed, into a ``MEMORY:`` cache).
* Entries are cached by content (a renewed ticket is new content), at most ``limit`` of
  them. Whoever uses an entry holds a lease on it (``with creds.lease(src) as c``); an
  entry evicted while leased is released when its last lease ends. Releasing closes the
  memory file and destroys the ``MEMORY:`` cache (libkrb5's ``krb5_cc_destroy``; nothing in
  the Python binding does it), so tickets do not pile up in ferryd's memory either.
* GSSAPI gets no client keytab of its own for a user's cache (``NO_CLIENT_KEYTAB``), and
  the credentials it loads from a cache must carry the cache's own default principal.
* Older ferryd versions copied the bytes through ``$TMPDIR/ferry-krb5-*``;
  ``remove_stale_copies`` removes what a crash left there.

Used from worker threads: one lock guards the table; loading runs outside it.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from ..security.ccache import ccache_principal, check_keytab
from .base import KerberosSource

log = logging.getLogger("ferry.auth")

# Where GSSAPI may look for a client keytab when it holds a user's credential cache: a path
# that can never exist (/dev/null is not a directory). Without it, MIT's acquisition falls
# back to the *process's* default client keytab (KRB5_CLIENT_KTNAME, else krb5.conf's
# default_client_keytab_name: root's, for the system ferryd) when the cache names a
# principal but holds no ticket — and would authenticate the user as that principal.
NO_CLIENT_KEYTAB = "FILE:/dev/null/ferry-no-client-keytab"
STALE_PREFIX = "ferry-krb5-"
STALE_MIN_AGE = 60.0  # seconds: younger ones may belong to an older ferryd still running


class CredentialsRefused(Exception):
    """The bytes hold no credentials ferryd will use (said in the text)."""


class _Entry:
    __slots__ = ("creds", "dropped", "fd", "memory", "users")

    def __init__(self, creds: Any, memory: str, fd: int | None) -> None:
        self.creds = creds
        self.memory = memory
        self.fd = fd  # the keytab's memory file, while GSSAPI may read it
        self.users = 0
        self.dropped = False


class GssCredentials:
    def __init__(self, limit: int = 64) -> None:
        self._cache: OrderedDict[Any, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._limit = limit

    def __len__(self) -> int:
        with self._lock:
            return len(self._cache)

    @contextlib.contextmanager
    def lease(self, src: KerberosSource) -> Iterator[Any]:
        """The gssapi credentials of ``src``, usable until the ``with`` block ends. Raises
        gssapi's GSSError or CredentialsRefused when the bytes hold no usable credentials."""
        entry = self._acquire(src)
        try:
            yield entry.creds
        finally:
            self._release(entry)

    def close(self) -> None:
        """Drop every entry (those leased go when their lease ends)."""
        with self._lock:
            entries = list(self._cache.values())
            self._cache.clear()
            idle = []
            for e in entries:
                e.dropped = True
                if e.users == 0:
                    idle.append(e)
        for e in idle:
            _destroy(e)

    def _acquire(self, src: KerberosSource) -> _Entry:
        key = (src.kind, src.uid, hashlib.sha256(src.data).digest())
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                hit.users += 1
                return hit
        fresh = _load(src)
        idle: list[_Entry] = []
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:  # another thread loaded the same bytes meanwhile
                self._cache.move_to_end(key)
                fresh.dropped = True
                idle.append(fresh)
                entry = hit
            else:
                self._cache[key] = entry = fresh
                while len(self._cache) > self._limit:
                    _key, old = self._cache.popitem(last=False)
                    old.dropped = True
                    if old.users == 0:
                        idle.append(old)
            entry.users += 1
        for e in idle:
            _destroy(e)
        return entry

    def _release(self, entry: _Entry) -> None:
        with self._lock:
            entry.users -= 1
            done = entry.dropped and entry.users == 0
        if done:
            _destroy(entry)


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("ferry-krb5", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        raise
    return fd


def _fd_path(fd: int) -> str:
    return f"FILE:/proc/self/fd/{fd}"


def _load(src: KerberosSource) -> _Entry:
    import gssapi

    memory = f"MEMORY:ferry-{uuid.uuid4().hex}"
    try:
        if src.kind == "keytab":
            check_keytab(src.data)
        else:
            principal = ccache_principal(src.data)
    except ValueError as exc:
        raise CredentialsRefused(str(exc)) from None
    fd = _memfd(src.data)
    try:
        if src.kind == "keytab":
            creds = gssapi.Credentials(
                usage="initiate", store={"client_keytab": _fd_path(fd), "ccache": memory}
            )
            return _Entry(creds, memory, fd)
        loaded = gssapi.Credentials(
            usage="initiate", store={"ccache": _fd_path(fd), "client_keytab": NO_CLIENT_KEYTAB}
        )
        if str(loaded.name) != principal:
            raise CredentialsRefused("the credential cache holds another principal's tickets")
        loaded.store(store={"ccache": memory}, usage="initiate", overwrite=True)
        del loaded
        os.close(fd)
        fd = -1
        creds = gssapi.Credentials(
            usage="initiate", store={"ccache": memory, "client_keytab": NO_CLIENT_KEYTAB}
        )
        return _Entry(creds, memory, None)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        destroy_memory_cache(memory)
        raise


def _destroy(entry: _Entry) -> None:
    entry.creds = None
    destroy_memory_cache(entry.memory)
    if entry.fd is not None:
        with contextlib.suppress(OSError):
            os.close(entry.fd)
        entry.fd = None


# ---- libkrb5: destroying a MEMORY cache ----------------------------------------------------

_krb5: Any = None
_krb5_lock = threading.Lock()


def _libkrb5() -> Any:
    global _krb5
    with _krb5_lock:
        if _krb5 is None:
            lib = ctypes.CDLL("libkrb5.so.3")  # the one python-gssapi's GSSAPI library uses
            ptr = ctypes.POINTER(ctypes.c_void_p)
            lib.krb5_init_context.argtypes = [ptr]
            lib.krb5_init_context.restype = ctypes.c_int32
            lib.krb5_cc_resolve.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ptr]
            lib.krb5_cc_resolve.restype = ctypes.c_int32
            lib.krb5_cc_destroy.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
            lib.krb5_cc_destroy.restype = ctypes.c_int32
            lib.krb5_free_context.argtypes = [ctypes.c_void_p]
            lib.krb5_free_context.restype = None
            _krb5 = lib
        return _krb5


def destroy_memory_cache(name: str) -> bool:
    """Destroy the ``MEMORY:`` cache ``name`` of this process (its tickets are wiped; a
    handle still open on it sees an empty cache). False when it could not be done."""
    if not name.startswith("MEMORY:"):
        return False
    try:
        lib = _libkrb5()
    except OSError as exc:
        log.warning("cannot load libkrb5 to destroy a MEMORY cache: %s", exc)
        return False
    ctx = ctypes.c_void_p()
    if lib.krb5_init_context(ctypes.byref(ctx)) != 0:
        return False
    try:
        cc = ctypes.c_void_p()
        if lib.krb5_cc_resolve(ctx, name.encode(), ctypes.byref(cc)) != 0:
            return False
        return bool(lib.krb5_cc_destroy(ctx, cc) == 0)
    finally:
        lib.krb5_free_context(ctx)


# ---- what older versions left in the temporary directory ----------------------------------


def remove_stale_copies(
    directories: tuple[str, ...] | None = None, min_age: float = STALE_MIN_AGE
) -> int:
    """Remove ``ferry-krb5-*`` directories of ferryd's own user, at least ``min_age``
    seconds old, from the temporary directory (and ``/tmp``): credential copies an older
    ferryd left behind when it crashed. Anyone else's entries, symbolic links and anything
    not a directory are left alone. Answers how many were removed."""
    if directories is None:
        directories = tuple(dict.fromkeys((tempfile.gettempdir(), "/tmp")))
    removed = 0
    now = time.time()
    for top in directories:
        try:
            names = [n for n in os.listdir(top) if n.startswith(STALE_PREFIX)]
        except OSError:
            continue
        for name in names:
            path = os.path.join(top, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                continue
            if now - st.st_mtime < min_age:
                continue
            # shutil.rmtree works through directory descriptors here and never follows a
            # symbolic link inside the tree.
            shutil.rmtree(path, ignore_errors=True)
            if not os.path.lexists(path):
                removed += 1
    return removed
