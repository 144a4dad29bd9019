"""SetCredentials / RemoveCredentials (SPEC §8.2) and the Kerberos credential caches clients
name (their KRB5CCNAME): checks, encryption of passwords, persistence.

A password is sealed by the secret box (security/secretbox.py) before it reaches the job, so
the job, the store, views and events only ever hold ciphertext (and views not even that).
A credential cache path is checked *as the identity that named it* when it is given: if the
file exists it must be that identity's own regular file reached without symbolic links
(E_ACCESSDENIED otherwise, nothing read); one that does not exist yet is accepted (the user
may run kinit later). It is checked again, and read, as that identity at each use.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..errors import FerryError
from ..model.credentials import (
    Credential,
    check_user_password,
    normalize_ccache,
    parse_scheme,
    parse_target,
)
from ..model.job import Job
from ..model.token import Token
from ..security.identity import IdentityIO
from ..security.secretbox import SecretBox
from ..store.base import JobStore
from .table import JobTable


class Credentials:
    def __init__(
        self,
        table: JobTable,
        store: JobStore,
        identity: IdentityIO,
        box: SecretBox,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._table = table
        self._store = store
        self._identity = identity
        self._box = box
        self._clock = clock

    async def vet_ccache(self, token: Token, name: Any) -> str | None:
        """The normalised path of the cache ``token`` named, checked as ``token``."""
        path = normalize_ccache(name)
        if path is not None:
            await self._identity.check_credential_file(token, path)
        return path

    def list(self, caller: Token, ref: str) -> list[dict[str, Any]]:
        job = self._table.resolve(caller, ref)
        return [c.view() for c in job.credentials]

    async def set(
        self,
        caller: Token,
        ref: str,
        target: Any,
        scheme: Any,
        user: str | None,
        password: str | None,
        ccache: Any = None,
    ) -> Job:
        """Add or replace the (target, scheme) credential. Every check comes before any
        change: a refused call leaves the job as it was."""
        job = self._table.resolve(caller, ref)
        t = parse_target(target)
        s = parse_scheme(scheme)
        check_user_password(s, user, password)
        if job.state.is_final:
            raise FerryError("BG_E_INVALID_STATE", f"job {job.id} is {job.state.value}")
        path = await self.vet_ccache(caller, ccache) if caller.uid == job.owner.uid else None
        secret = None if password is None else self._box.seal(password, job.id, t.value, s.value)
        job.set_credential(Credential(t, s, user, secret), self._clock())
        if path is not None:
            job.owner_ccache = path
        await self._table.commit(job, self._store.save_job_header(job))
        return job

    async def remove(self, caller: Token, ref: str, target: Any, scheme: Any) -> tuple[Job, bool]:
        job = self._table.resolve(caller, ref)
        t = parse_target(target)
        s = parse_scheme(scheme)
        removed = job.remove_credential(t, s, self._clock())
        if removed:
            await self._table.commit(job, self._store.save_job_header(job))
        return job, removed
