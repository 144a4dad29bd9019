"""TLS for one https request (SPEC §8.3): ferryd's trust (system store plus ``ca_file``)
changed by the job's security flags, with the job's client certificate.

* ``IGNORE_CERT_CN_INVALID``: the name is not checked; the chain still is.
* ``IGNORE_CERT_DATE_INVALID``: OpenSSL's X509_V_FLAG_NO_CHECK_TIME; everything else is.
* ``IGNORE_UNKNOWN_CA``, ``IGNORE_CERT_WRONG_USAGE``: OpenSSL cannot waive only these, so
  the chain is not verified at all (nor, then, the name): use them only for test servers.
* ``ENABLE_CRL_CHECK``: the leaf's revocation is checked against the CRLs in ``ca_file``
  (a certificate without one fails: ERROR_WINHTTP_SECURE_FAILURE).

The client certificate was read as the job's owner (transfer/httpopts.py); its bytes reach
OpenSSL through a memfd (``load_cert_chain`` takes only paths), never through a file ferryd
could be tricked into opening itself. Contexts are cached per (flags, certificate digest).
"""

from __future__ import annotations

import hashlib
import os
import ssl
from collections import OrderedDict
from typing import Any

from .base import HttpJobRequest

X509_V_FLAG_NO_CHECK_TIME = 0x200000
TLS_FLAGS = frozenset(
    {
        "ENABLE_CRL_CHECK",
        "IGNORE_CERT_CN_INVALID",
        "IGNORE_CERT_DATE_INVALID",
        "IGNORE_UNKNOWN_CA",
        "IGNORE_CERT_WRONG_USAGE",
    }
)
_CACHE = 64


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("ferry-client-cert", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
    except BaseException:
        os.close(fd)
        raise
    return fd


class TlsContexts:
    def __init__(self, base: ssl.SSLContext) -> None:
        self._base = base
        self._anchors = base.get_ca_certs(binary_form=True)  # ferryd's extra anchors
        self._cache: OrderedDict[tuple[Any, ...], ssl.SSLContext] = OrderedDict()

    async def for_request(self, request: HttpJobRequest) -> ssl.SSLContext | None:
        """None: ferryd's own context serves (no flag, no client certificate)."""
        flags = frozenset(request.security_flags) & TLS_FLAGS
        cert = await request.client_cert() if request.client_cert is not None else None
        if not flags and cert is None:
            return None
        digest = None
        if cert is not None:
            digest = hashlib.sha256(cert.cert + b"\0" + (cert.key or b"")).digest()
        key = (flags, digest)
        ctx = self._cache.get(key)
        if ctx is None:
            ctx = self._build(flags, cert)
            self._cache[key] = ctx
            while len(self._cache) > _CACHE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return ctx

    def _build(self, flags: frozenset[str], cert: Any) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        for der in self._anchors:
            ctx.load_verify_locations(cadata=der)
        if "IGNORE_UNKNOWN_CA" in flags or "IGNORE_CERT_WRONG_USAGE" in flags:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif "IGNORE_CERT_CN_INVALID" in flags:
            ctx.check_hostname = False
        if "IGNORE_CERT_DATE_INVALID" in flags:
            ctx.verify_flags = ssl.VerifyFlags(int(ctx.verify_flags) | X509_V_FLAG_NO_CHECK_TIME)
        if "ENABLE_CRL_CHECK" in flags:
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        if cert is not None:
            cfd = _memfd(cert.cert)
            kfd = _memfd(cert.key) if cert.key is not None else None
            try:
                # No prompt for an encrypted key (ferryd has no terminal): it fails instead.
                ctx.load_cert_chain(
                    f"/proc/self/fd/{cfd}",
                    None if kfd is None else f"/proc/self/fd/{kfd}",
                    password=lambda: b"",
                )
            except (ssl.SSLError, OSError) as exc:
                from ..model.types import ErrorContext
                from .base import TransferError

                raise TransferError(
                    "ERROR_WINHTTP_CLIENT_CERT_NO_ACCESS_PRIVATE_KEY",
                    f"the client certificate or its key is not usable: {exc}",
                    context=ErrorContext.GENERAL_TRANSPORT,
                    transient=False,
                ) from None
            finally:
                os.close(cfd)
                if kfd is not None:
                    os.close(kfd)
        return ctx
