"""Command-line notifications (SPEC §2.6, BITS SetNotifyCmdLine): when one is due, and the
record that carries it through the store's outbox until its program has run. Pure: no I/O.

A notification is due when a job *enters* TRANSFERRED (flag JOB_TRANSFERRED) or ERROR (flag
JOB_ERROR), the job has a command line and DISABLE is not set. The pending record is a
snapshot taken at that moment — the owner it runs as, the command line, the state — so it
means the same thing after a restart, after ``take_ownership`` or after the job was purged.
``NotificationStatus`` is how the last one went, as the job carries it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import format_hresult, hresult_of
from .token import Token
from .types import ErrorContext, JobState, NotifyFlags

JOB_TRANSFERRED = "JOB_TRANSFERRED"
JOB_ERROR = "JOB_ERROR"

# The job object's ``notification.state``.
PENDING = "PENDING"
DELIVERED = "DELIVERED"
FAILED = "FAILED"


@dataclass(slots=True)
class PendingNotification:
    """One run of a job's notification command line that is owed (an outbox entry)."""

    job_id: str
    event: str  # JOB_TRANSFERRED or JOB_ERROR
    job_state: str
    owner: Token
    cmdline: list[str]
    created: float
    retry_cap: float  # the job's min_retry_delay when it became due: the longest backoff
    attempts: int = 0
    next_attempt: float = 0.0
    id: int | None = None  # the outbox row, once stored

    def to_record(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "event": self.event,
            "job_state": self.job_state,
            "owner": self.owner.to_json(),
            "cmdline": list(self.cmdline),
            "created": self.created,
            "retry_cap": self.retry_cap,
            "attempts": self.attempts,
        }

    @classmethod
    def from_record(cls, d: dict[str, Any], id: int, next_attempt: float) -> PendingNotification:
        return cls(
            job_id=str(d["job_id"]),
            event=str(d["event"]),
            job_state=str(d["job_state"]),
            owner=Token.from_json(d["owner"]),
            cmdline=[str(a) for a in d["cmdline"]],
            created=float(d["created"]),
            retry_cap=float(d.get("retry_cap", 0)),
            attempts=int(d.get("attempts", 0)),
            next_attempt=next_attempt,
            id=id,
        )


def due(
    job_id: str,
    state: JobState,
    flags: NotifyFlags,
    cmdline: list[str] | None,
    owner: Token,
    retry_cap: float,
    now: float,
) -> PendingNotification | None:
    """The command-line notification that a job having just entered ``state`` owes."""
    if not cmdline or flags & NotifyFlags.DISABLE:
        return None
    if state is JobState.TRANSFERRED and flags & NotifyFlags.JOB_TRANSFERRED:
        event = JOB_TRANSFERRED
    elif state is JobState.ERROR and flags & NotifyFlags.JOB_ERROR:
        event = JOB_ERROR
    else:
        return None
    return PendingNotification(
        job_id=job_id,
        event=event,
        job_state=state.value,
        owner=owner,
        cmdline=list(cmdline),
        created=now,
        retry_cap=retry_cap,
        next_attempt=now,
    )


@dataclass(frozen=True, slots=True)
class NotificationError:
    """Why the last attempt failed (the job object's ``notification.error``)."""

    code: str
    hresult: int
    description: str
    context: ErrorContext = ErrorContext.QUEUE_MANAGER_NOTIFICATION

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "hresult": format_hresult(self.hresult),
            "context": self.context.value,
            "description": self.description,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> NotificationError:
        return cls(
            code=str(d["code"]),
            hresult=int(str(d["hresult"]), 16),
            description=str(d.get("description", "")),
            context=ErrorContext(d["context"]),
        )


@dataclass(frozen=True, slots=True)
class NotificationStatus:
    """The job's ``notification`` field: how its last command-line notification went.
    ``to_json`` is both what the store keeps and what clients see."""

    last_event: str  # JOB_TRANSFERRED or JOB_ERROR
    state: str  # PENDING, DELIVERED or FAILED
    attempts: int
    error: NotificationError | None = None

    @property
    def settled(self) -> bool:
        """Delivered, or failed for the last time: the outbox is done with it."""
        return self.state != PENDING

    def to_json(self) -> dict[str, Any]:
        return {
            "last_event": self.last_event,
            "state": self.state,
            "attempts": self.attempts,
            "error": None if self.error is None else self.error.to_json(),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> NotificationStatus:
        error = d.get("error")
        return cls(
            last_event=str(d["last_event"]),
            state=str(d["state"]),
            attempts=int(d["attempts"]),
            error=None if error is None else NotificationError.from_json(error),
        )


def status(
    n: PendingNotification,
    state: str,
    error_code: str | None = None,
    description: str = "",
    hresult: int | None = None,
) -> NotificationStatus:
    """The status of ``n`` after an attempt (or when it became due)."""
    error: NotificationError | None = None
    if error_code is not None:
        error = NotificationError(
            error_code, hresult if hresult is not None else hresult_of(error_code), description
        )
    return NotificationStatus(n.event, state, n.attempts, error)
