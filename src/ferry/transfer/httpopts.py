"""What a job's HTTP options (SPEC §8.3) give the http transport for one request: the custom
headers (write-only ones stay sealed until the transport sends them), the security flags,
the method, and a loader of the client certificate that reads it *as the job's owner*
when the transfer starts (security/identity.py), never as ferryd."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import FerryError
from ..model.job import Job
from ..model.types import ErrorContext, TokenFlags
from ..security.identity import IdentityIO
from ..security.secretbox import SecretBox
from .base import TransferError

MAX_PEM = 1 << 20


@dataclass(frozen=True, slots=True)
class ClientCertBytes:
    """A client certificate as read by its owner (the key never logged or repr'd)."""

    cert: bytes = field(repr=False)
    key: bytes | None = field(default=None, repr=False)


def _cert_error(code: str, message: str) -> TransferError:
    return TransferError(code, message, context=ErrorContext.GENERAL_TRANSPORT, transient=False)


def client_cert_loader(
    job: Job, identity: IdentityIO
) -> Callable[[], Awaitable[ClientCertBytes]] | None:
    """None without a client certificate. The BITS rule first: when the owner is not root
    and the job's NETWORK helper token acts, ferry may not use the owner's private key for
    another identity (ERROR_WINHTTP_CLIENT_CERT_NO_ACCESS_PRIVATE_KEY)."""
    cc = job.client_certificate
    if cc is None:
        return None
    owner = job.owner
    network_helper = bool(job.helper_flags & TokenFlags.NETWORK)

    async def load() -> ClientCertBytes:
        if network_helper and owner.uid != 0:
            raise _cert_error(
                "ERROR_WINHTTP_CLIENT_CERT_NO_ACCESS_PRIVATE_KEY",
                "a job whose NETWORK helper token acts cannot use its owner's client "
                "certificate (the owner is not root)",
            )
        cert = await _read_as(identity, job, cc.cert)
        key = None if cc.key is None else await _read_as(identity, job, cc.key)
        return ClientCertBytes(cert, key)

    return load


async def _read_as(identity: IdentityIO, job: Job, path: str) -> bytes:
    """The file's bytes, opened by the owner (its permissions decide), regular files only."""
    try:
        fd = await identity.open_read(job.owner, path)
    except FerryError as exc:
        raise _cert_error(exc.code, f"client certificate: {exc.message}") from None
    try:
        data = await identity.run_io(_read_fd, fd)
    finally:
        await identity.close(fd)
    if len(data) > MAX_PEM:
        raise _cert_error("E_INVALIDARG", f"client certificate: {path} is larger than 1 MiB")
    return data


def _read_fd(fd: int) -> bytes:
    chunks = []
    total = 0
    while total <= MAX_PEM:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def request_options(job: Job, identity: IdentityIO) -> dict[str, Any]:
    """The DownloadRequest fields of the job's HTTP options."""
    return {
        "job_id": job.id,
        "custom_headers": job.custom_headers or (),
        "sealed_headers": job.custom_headers_sealed,
        "security_flags": job.security_flags,
        "http_method": job.http_method,
        "client_cert": client_cert_loader(job, identity),
    }


def record_http_options(request: Any, jf: Any) -> None:
    """What the transport learnt that the HTTP options ask to keep: the last response's
    headers, and with REDIRECT_POLICY_ALLOW_REPORT the final URL as the remote name."""
    if request.response_headers is not None:
        jf.response_headers = request.response_headers
    if (
        "REDIRECT_POLICY_ALLOW_REPORT" in request.security_flags
        and request.final_url
        and request.final_url != jf.remote_name
    ):
        jf.remote_name = request.final_url


# The secret box's associated data for write-only custom headers (a job's credentials use
# their target and scheme): a sealed header set opens only as the headers of its own job.
HEADERS_TARGET = "HTTP"
HEADERS_SLOT = "CUSTOM_HEADERS"


def seal_headers(box: SecretBox, job_id: str, headers: tuple[str, ...] | None) -> str | None:
    if headers is None:
        return None
    return box.seal(json.dumps(list(headers)), job_id, HEADERS_TARGET, HEADERS_SLOT)


def open_sealed_headers(box: SecretBox, job_id: str, sealed: str) -> tuple[str, ...]:
    return tuple(json.loads(box.open(sealed, job_id, HEADERS_TARGET, HEADERS_SLOT)))
