"""HTTP authentication for the http transport (SPEC §8.2): answering 401 (SERVER) and 407
(PROXY) challenges with a job's credentials.

* BASIC: aiohttp's ``BasicAuth`` encoding. DIGEST: aiohttp's ``DigestAuthMiddleware`` (one
  per job and origin, so its nonce count and preemptive answers carry over).
* NEGOTIATE (SPNEGO/Kerberos): ``gssapi``, the binding of the system's MIT GSSAPI, which can
  load credentials from an explicit credential store — so the acting identity's cache, read
  as that identity by the engine, is handed to GSSAPI as a private copy in a ``MEMORY:``
  cache (through an anonymous memory file, never a file on disk: transfer/gsscreds.py), and
  GSSAPI is never pointed at a user's file. With a user and password,
  ``pyspnego`` does the exchange (it acquires Kerberos credentials with the password through
  GSSAPI, or falls back to its own NTLM).
* NTLM: ``pyspnego``'s NTLM implementation (no system NTLM mechanism needed). NTLM's three
  legs must share a connection; aiohttp hands a released, kept-alive connection back to the
  next request for the same origin, which is what carries them.

A credential is sent only to its target (401 → SERVER, 407 → PROXY) and only over its scheme,
only after that origin asked for it. Once an origin has asked a job for Basic or Negotiate,
later requests of the job to it carry the answer up front (a fresh Kerberos token for each:
an authenticator cannot be replayed), so Negotiate costs one extra round trip per origin and
job, not one per request.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import re
from collections import OrderedDict
from collections.abc import MutableMapping
from typing import Any

import aiohttp
from yarl import URL

from .base import JobAuth, KerberosSource, PlainCredential, TransferError
from .gsscreds import CredentialsRefused, GssCredentials

log = logging.getLogger("ferry.auth")

SPNEGO_OID = "1.3.6.1.5.5.2"
# Strongest first: what the job answers when a server offers several of its schemes.
PREFERENCE = ("NEGOTIATE", "NTLM", "DIGEST", "BASIC")
_CHALLENGE = re.compile(
    r"(?:^|,)\s*(Negotiate|NTLM|Digest|Basic)(?=\s|,|$)\s*([A-Za-z0-9+/=]*)", re.I
)
_MAX_STATE = 1024
_MAX_CREDS = 64
# What ferryd's environment may say about Kerberos that it must not act on: it never uses
# ambient credentials, only the caches and keytabs it reads as the identity they belong to.
AMBIENT_KERBEROS_VARIABLES = ("KRB5CCNAME", "KRB5_CLIENT_KTNAME", "KRB5_KTNAME")


def clear_ambient_kerberos(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Remove the Kerberos credential variables from ferryd's environment (at start-up);
    answers which were set."""
    env = os.environ if environ is None else environ
    return [name for name in AMBIENT_KERBEROS_VARIABLES if env.pop(name, None) is not None]


def challenge_header(target: str) -> str:
    return "Proxy-Authenticate" if target == "PROXY" else "WWW-Authenticate"


def answer_header(target: str) -> str:
    return "Proxy-Authorization" if target == "PROXY" else "Authorization"


def offered(values: list[str]) -> dict[str, str]:
    """The schemes a challenge offers, upper case, each with its token (NTLM/Negotiate)."""
    out: dict[str, str] = {}
    for value in values:
        for m in _CHALLENGE.finditer(value):
            scheme = m.group(1).upper()
            token = m.group(2) if scheme in ("NEGOTIATE", "NTLM") else ""
            out.setdefault(scheme, token)
    return out


def _origin(url: URL) -> str:
    return f"{url.scheme}://{url.host}:{url.port}"


class _Bounded(OrderedDict[Any, Any]):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


class Authenticator:
    """Per-daemon authentication state for the http transport."""

    def __init__(self) -> None:
        self._wants = _Bounded(_MAX_STATE)  # (job, target, origin) -> scheme it asked for
        # (job, target, origin) -> how a Negotiate origin treats a kept-alive connection
        # that authenticated once: "probe" (not known yet: the next request goes without a
        # token), "bound" (it stays authenticated, as IIS does by default and Apache's
        # mod_auth_gssapi with GssapiConnectionBound: only a new connection is challenged),
        # "each" (every request must carry a token: a fresh one goes up front).
        self._mode = _Bounded(_MAX_STATE)
        self._digest = _Bounded(_MAX_STATE)  # (job, origin) -> DigestAuthMiddleware
        self._legs = _Bounded(_MAX_STATE)  # (job, target, origin, request) -> multi-leg context
        self._handshakes = _Bounded(_MAX_STATE)  # (job, target, origin) -> asyncio.Lock
        self._gss = GssCredentials(_MAX_CREDS)

    def close(self) -> None:
        self._gss.close()

    def handshake_lock(self, auth: JobAuth, url: URL, target: str) -> asyncio.Lock | None:
        """For a job with an explicit NTLM credential for ``target``: the lock its requests
        to ``url``'s origin hold from their first send to their last leg. NTLM's legs must
        share one connection, and between legs it is back in the session's pool: without
        the lock, another file of the same job (up to eight go at once) would take it and
        both handshakes would fail."""
        cred = _find(auth.for_target(target), "NTLM")
        if cred is None or cred.implicit:
            return None
        key = (auth.key, target, _origin(url))
        lock = self._handshakes.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._handshakes.put(key, lock)
        return lock

    # ---- what a request carries -------------------------------------------------------

    def middlewares(self, auth: JobAuth | None, url: URL) -> tuple[Any, ...]:
        """aiohttp's Digest middleware for a job with a SERVER DIGEST credential."""
        if auth is None:
            return ()
        cred = _find(auth.for_target("SERVER"), "DIGEST")
        if cred is None or cred.user is None:
            return ()
        key = (
            auth.key,
            _origin(url),
            cred.user,
            hashlib.sha256((cred.password or "").encode()).digest(),
        )
        mw = self._digest.get(key)
        if mw is None:
            mw = aiohttp.DigestAuthMiddleware(cred.user, cred.password or "")
            self._digest.put(key, mw)
        return (mw,)

    async def preemptive(self, auth: JobAuth | None, url: URL, target: str) -> dict[str, str]:
        """The answer sent up front to an origin that asked this job before."""
        if auth is None:
            return {}
        key = (auth.key, target, _origin(url))
        scheme = self._wants.get(key)
        if scheme not in ("BASIC", "NEGOTIATE"):
            return {}
        if scheme == "NEGOTIATE" and self._mode.get(key) != "each":
            return {}
        cred = _find(auth.for_target(target), scheme)
        if cred is None:
            return {}
        try:
            value = await self._make(auth, cred, url, target, "")
        except Exception as exc:  # a token we cannot make now: let the server ask
            log.debug("no preemptive %s answer for %s: %s", scheme, url, exc)
            return {}
        return {} if value is None else {answer_header(target): value}

    def accepted(self, auth: JobAuth, url: URL, target: str) -> None:
        """A request sent without a token was answered without a challenge: the origin
        keeps a connection authenticated ("bound")."""
        key = (auth.key, target, _origin(url))
        if self._mode.get(key) == "probe":
            self._mode.put(key, "bound")

    async def answer(
        self,
        auth: JobAuth,
        url: URL,
        challenges: list[str],
        target: str,
        sent: set[str],
        preempted: bool = False,
    ) -> tuple[dict[str, str] | None, str | None]:
        """The header answering a 401/407 with ``challenges``; (None, why) when the job has
        nothing (more) to answer with. ``sent`` is the schemes already answered for this
        request: a scheme is tried once (NTLM's later legs excepted). It also names the
        request's own multi-leg exchange: parallel requests of one job to one origin (the
        files of a job go up to eight at a time) each have theirs, never one another's."""
        offers = offered(challenges)
        creds = auth.for_target(target)
        why: str | None = None
        for scheme in PREFERENCE:
            if scheme not in offers or scheme == "DIGEST":
                continue  # DIGEST is the middleware's (SERVER) — or not answered (PROXY)
            cred = _find(creds, scheme)
            if cred is None:
                continue
            origin_key = (auth.key, target, _origin(url))
            leg_key = (*origin_key, id(sent))
            continuing = scheme in sent and offers[scheme] and leg_key in self._legs
            if scheme in sent and not continuing:
                why = f"the {scheme} credentials were refused"
                continue
            try:
                value = await self._make(
                    auth, cred, url, target, offers[scheme] if continuing else "", leg_key
                )
            except _NoCredentials as exc:
                why = str(exc)
                continue
            except TransferError:
                raise  # the acting identity's cache refused (E_ACCESSDENIED): the job's error
            except Exception as exc:  # noqa: BLE001 - one failure is this scheme's, not ferryd's
                self._legs.pop(leg_key, None)
                log.warning("job %s: no %s answer for %s: %s: %s", auth.key, scheme,
                            url.host, type(exc).__name__, exc)  # fmt: skip
                why = f"{scheme} failed ({type(exc).__name__})"
                continue
            if value is None:
                continue
            if scheme == "NEGOTIATE" and not sent and not preempted:
                # Challenged without a token: first time, learn; after a probe, every
                # request needs one; a bound origin challenges only new connections.
                mode = self._mode.get(origin_key)
                self._mode.put(origin_key, "probe" if mode is None else
                               "each" if mode == "probe" else mode)  # fmt: skip
            sent.add(scheme)
            if scheme in ("BASIC", "NEGOTIATE"):
                self._wants.put(origin_key, scheme)
            return {answer_header(target): value}, None
        self._legs.pop((auth.key, target, _origin(url), id(sent)), None)  # this request's
        return None, why

    # ---- making answers ------------------------------------------------------------------

    async def _make(
        self,
        auth: JobAuth,
        cred: PlainCredential,
        url: URL,
        target: str,
        token_in: str,
        leg_key: tuple[Any, ...] | None = None,
    ) -> str | None:
        """``leg_key``: the request's multi-leg exchange (answer); None for a one-leg
        answer sent up front."""
        if cred.scheme == "BASIC":
            assert cred.user is not None
            return aiohttp.BasicAuth(cred.user, cred.password or "").encode()
        host = url.host or "localhost"
        if leg_key is None:
            leg_key = (auth.key, target, _origin(url), None)
        if cred.scheme == "NEGOTIATE" and cred.implicit:
            if auth.kerberos is None:
                raise _NoCredentials(
                    "the acting identity has no Kerberos credentials ferryd may use"
                )
            src = await auth.kerberos()
            if src is None:
                raise _NoCredentials("the acting identity has no Kerberos credential cache")
            token = await asyncio.to_thread(self._kerberos_token, src, host)
            return "Negotiate " + base64.b64encode(token).decode("ascii")
        if cred.implicit:
            raise _NoCredentials("implicit NTLM needs a system NTLM mechanism")
        # Explicit NTLM or NEGOTIATE: pyspnego, possibly over several legs.
        import spnego

        ctx: Any = self._legs.get(leg_key) if token_in else None
        if ctx is None:
            protocol = "ntlm" if cred.scheme == "NTLM" else "negotiate"
            ctx = await asyncio.to_thread(
                spnego.client,
                cred.user,
                cred.password,
                hostname=host,
                service="HTTP",
                protocol=protocol,
            )
        try:
            data = base64.b64decode(token_in, validate=True) if token_in else None
        except ValueError:
            self._legs.pop(leg_key, None)
            raise _NoCredentials(f"the {cred.scheme} challenge is not base64") from None
        try:
            out = await asyncio.to_thread(ctx.step, data)
        except Exception as exc:
            self._legs.pop(leg_key, None)
            raise _NoCredentials(f"{cred.scheme} failed: {exc}") from None
        if ctx.complete:
            self._legs.pop(leg_key, None)
        else:
            self._legs.put(leg_key, ctx)
        if not out:
            return None
        word = "NTLM" if cred.scheme == "NTLM" else "Negotiate"
        return f"{word} " + base64.b64encode(out).decode("ascii")

    def _kerberos_token(self, src: KerberosSource, host: str) -> bytes:
        """A fresh SPNEGO/Kerberos token for HTTP@host (worker thread)."""
        import gssapi
        from gssapi.raw.misc import GSSError

        try:
            with self._gss.lease(src) as creds:
                ctx = gssapi.SecurityContext(
                    name=gssapi.Name(f"HTTP@{host}", gssapi.NameType.hostbased_service),
                    creds=creds,
                    usage="initiate",
                    mech=gssapi.OID.from_int_seq(SPNEGO_OID),
                    flags=gssapi.RequirementFlag.out_of_sequence_detection,
                )
                token = ctx.step()
                del ctx
        except GSSError as exc:
            raise _NoCredentials(f"Kerberos: {exc.gen_message()}") from None
        except CredentialsRefused as exc:
            raise _NoCredentials(f"Kerberos: {exc}") from None
        if not token:
            raise _NoCredentials("Kerberos produced no token")
        return bytes(token)


class _NoCredentials(Exception):
    """The job's credential cannot answer this challenge (said in the error's text)."""


def _find(creds: tuple[PlainCredential, ...], scheme: str) -> PlainCredential | None:
    for c in creds:
        if c.scheme == scheme:
            return c
    return None
