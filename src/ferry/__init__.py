"""ferry: background intelligent transfers for Linux (the BITS model).

The public client API (SPEC §7)::

    import ferry
    with ferry.Client() as c:
        job = c.create_job("nightly", priority=ferry.Priority.LOW)
        job.add_file("https://example.org/big.iso", "big.iso")
        job.resume()
        if job.wait() is ferry.JobState.TRANSFERRED:
            job.complete()

``import ferry`` is kept cheap (its names load when first used; no aiohttp, no daemon
code): the ``ferry`` command's start-up time depends on it.
"""

from __future__ import annotations

from ._lazy import lazy_exports
from ._version import __version__

# Not typing.TYPE_CHECKING: importing typing (and re with it) is a third of what
# ``ferry --version`` costs. mypy reads any constant of this name the same way.
TYPE_CHECKING = False
if TYPE_CHECKING:
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

# Loaded when first used (PEP 562), so that ``import ferry`` and ``python -m ferry.cli.main
# --version`` import nothing they do not need: public name -> its module.
_WHERE = {
    "AsyncClient": ".client",
    "AsyncJob": ".client",
    "AsyncTokenOptions": ".client",
    "Client": ".client",
    "Event": ".client",
    "FileInfo": ".client",
    "Job": ".client",
    "TokenOptions": ".client",
    "impersonate": ".client",
    "FerryError": ".errors",
    "ErrorContext": ".model.types",
    "JobState": ".model.types",
    "JobType": ".model.types",
    "NotifyFlags": ".model.types",
    "Priority": ".model.types",
    "TokenFlags": ".model.types",
}


__getattr__, __dir__ = lazy_exports(__name__, _WHERE, globals())


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
