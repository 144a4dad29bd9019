"""ferry: background intelligent transfers for Linux (the BITS model).

The public client API (SPEC §7)::

    import ferry
    with ferry.Client() as c:
        job = c.create_job("nightly", priority=ferry.Priority.LOW)
        job.add_file("https://example.org/big.iso", "big.iso")
        job.resume()
        if job.wait() is ferry.JobState.TRANSFERRED:
            job.complete()

``import ferry`` is kept cheap (no aiohttp, no daemon code): the ``ferry`` command's
start-up time depends on it.
"""

from ._version import __version__
from .client import (
    AsyncClient,
    AsyncJob,
    AsyncTokenOptions,
    Client,
    Event,
    FileInfo,
    Job,
    TokenOptions,
    impersonate,
)
from .errors import FerryError
from .model.types import ErrorContext, JobState, JobType, NotifyFlags, Priority, TokenFlags

__all__ = [
    "AsyncClient",
    "AsyncJob",
    "AsyncTokenOptions",
    "Client",
    "ErrorContext",
    "Event",
    "FerryError",
    "FileInfo",
    "Job",
    "JobState",
    "JobType",
    "NotifyFlags",
    "Priority",
    "TokenFlags",
    "TokenOptions",
    "impersonate",
    "__version__",
]
