"""Access rules (SPEC §4.2, §4.4): who may see or change a job, and which token a job's
file and network accesses act for. Pure functions over tokens and jobs."""

from __future__ import annotations

from ..errors import FerryError
from ..model.job import Job
from ..model.token import Token
from ..model.types import TokenFlags


def may_access(caller: Token, job: Job) -> bool:
    """The owner (same uid) and admins may see and operate on a job."""
    return caller.admin or caller.uid == job.owner.uid


def check_access(caller: Token, job: Job) -> None:
    if not may_access(caller, job):
        raise FerryError(
            "E_ACCESSDENIED", f"{caller.sid} may not access job {job.id} owned by {job.owner.sid}"
        )


def may_list_all(caller: Token) -> bool:
    return caller.admin


def _helper_for(job: Job, flag: TokenFlags) -> Token:
    if flag not in job.helper_flags:
        return job.owner
    if job.helper_token is None:
        raise FerryError(
            "BG_E_TOKEN_REQUIRED",
            f"the job's helper token flags include {flag.name} but no helper token is set",
        )
    return job.helper_token


def local_file_token(job: Job) -> Token:
    """The token for the job's local files: temporary file, final rename, upload source."""
    return _helper_for(job, TokenFlags.LOCAL_FILE)


def network_token(job: Job) -> Token:
    """The token for remote access: file:// sources and implicit HTTP credentials."""
    return _helper_for(job, TokenFlags.NETWORK)


# ---- IBitsTokenOptions (SPEC §4.4) -------------------------------------------------------
#
# The check is made against the identity that *opened* the handle (the QueryInterface-time
# token), not the connection that carries the call. An admin opener may do anything. A
# non-admin opener must have the owner's uid, and may neither install an admin helper token
# nor change the flags while an admin helper token is in place.


def _opener_may_use(opener: Token, job: Job, what: str) -> None:
    if opener.admin:
        return
    if opener.uid != job.owner.uid:
        raise FerryError(
            "E_ACCESSDENIED",
            f"{what}: the handle was opened by {opener.sid}, who neither owns the job "
            "nor is an administrator",
        )


def check_read_token_options(opener: Token, job: Job) -> None:
    _opener_may_use(opener, job, "token options")


def check_set_helper_token(opener: Token, job: Job, helper: Token) -> None:
    _opener_may_use(opener, job, "set_helper_token")
    if not opener.admin and helper.admin:
        raise FerryError(
            "E_ACCESSDENIED",
            f"set_helper_token: only an administrator may set an administrator helper token "
            f"({helper.sid})",
        )


def check_set_helper_flags(opener: Token, job: Job) -> None:
    _opener_may_use(opener, job, "set_helper_token_flags")
    if not opener.admin and job.helper_token is not None and job.helper_token.admin:
        raise FerryError(
            "E_ACCESSDENIED",
            "set_helper_token_flags: the job's helper token is an administrator's; only an "
            "administrator may change its flags",
        )


def check_clear_helper_token(opener: Token, job: Job) -> None:
    _opener_may_use(opener, job, "clear_helper_token")
