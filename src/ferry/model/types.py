"""The enumerations of the BITS job model, spelled as in SPEC §2 and §6."""

from __future__ import annotations

from enum import IntFlag, StrEnum


class JobState(StrEnum):
    QUEUED = "QUEUED"
    CONNECTING = "CONNECTING"
    TRANSFERRING = "TRANSFERRING"
    SUSPENDED = "SUSPENDED"
    ERROR = "ERROR"
    TRANSIENT_ERROR = "TRANSIENT_ERROR"
    TRANSFERRED = "TRANSFERRED"
    ACKNOWLEDGED = "ACKNOWLEDGED"
    CANCELLED = "CANCELLED"

    @property
    def is_final(self) -> bool:
        # Identity against module constants: ``JobState.X`` inside a method is a lookup
        # through the enum's descriptor each time, and this is asked for every job at start.
        return self is _ACKNOWLEDGED or self is _CANCELLED

    @property
    def is_active(self) -> bool:
        """Waiting for or doing a transfer: the scheduler owns the job."""
        return self is _QUEUED or self is _CONNECTING or self is _TRANSFERRING


_ACKNOWLEDGED, _CANCELLED = JobState.ACKNOWLEDGED, JobState.CANCELLED
_QUEUED, _CONNECTING, _TRANSFERRING = JobState.QUEUED, JobState.CONNECTING, JobState.TRANSFERRING


class JobType(StrEnum):
    DOWNLOAD = "download"
    UPLOAD = "upload"
    UPLOAD_REPLY = "upload-reply"


class Priority(StrEnum):
    FOREGROUND = "foreground"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class ErrorContext(StrEnum):
    NONE = "NONE"
    UNKNOWN = "UNKNOWN"
    GENERAL_QUEUE_MANAGER = "GENERAL_QUEUE_MANAGER"
    QUEUE_MANAGER_NOTIFICATION = "QUEUE_MANAGER_NOTIFICATION"
    LOCAL_FILE = "LOCAL_FILE"
    REMOTE_FILE = "REMOTE_FILE"
    GENERAL_TRANSPORT = "GENERAL_TRANSPORT"
    REMOTE_APPLICATION = "REMOTE_APPLICATION"
    SERVER_CERTIFICATE_CALLBACK = "SERVER_CERTIFICATE_CALLBACK"


class TokenFlags(IntFlag):
    """BG_TOKEN_*: which resources the helper token is used for."""

    LOCAL_FILE = 0x1
    NETWORK = 0x2

    @classmethod
    def all(cls) -> TokenFlags:
        return cls.LOCAL_FILE | cls.NETWORK

    def names(self) -> list[str]:
        return [f.name for f in TokenFlags if f in self and f.name]


class NotifyFlags(IntFlag):
    """BG_NOTIFY_*."""

    JOB_TRANSFERRED = 0x1
    JOB_ERROR = 0x2
    DISABLE = 0x4
    JOB_MODIFICATION = 0x8
    FILE_TRANSFERRED = 0x10

    @classmethod
    def all(cls) -> NotifyFlags:
        return cls(0x1F)


DEFAULT_NOTIFY_FLAGS = NotifyFlags.JOB_TRANSFERRED | NotifyFlags.JOB_ERROR
