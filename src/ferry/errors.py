"""BITS result codes (name <-> HRESULT) and the one exception type ferry raises.

Values are those BITS reports (see shared/reference/bits-codes.md); HTTP statuses map to
``BG_E_HTTP_ERROR_N`` = 0x80190000 + N, local OS errors to the Win32-style HRESULTs BITS uses.
"""

from __future__ import annotations

import errno as _errno
import re
from typing import Any

CODES: dict[str, int] = {
    "S_OK": 0x00000000,
    "S_FALSE": 0x00000001,
    "BG_S_PARTIAL_COMPLETE": 0x00200017,
    "BG_S_UNABLE_TO_DELETE_FILES": 0x0020001A,
    "BG_E_NOT_FOUND": 0x80200001,
    "BG_E_INVALID_STATE": 0x80200002,
    "BG_E_EMPTY": 0x80200003,
    "BG_E_FILE_NOT_AVAILABLE": 0x80200004,
    "BG_E_PROTOCOL_NOT_AVAILABLE": 0x80200005,
    "BG_E_ERROR_INFORMATION_UNAVAILABLE": 0x8020000F,
    "BG_E_NETWORK_DISCONNECTED": 0x80200010,
    "BG_E_MISSING_FILE_SIZE": 0x80200011,
    "BG_E_INSUFFICIENT_HTTP_SUPPORT": 0x80200012,
    "BG_E_INSUFFICIENT_RANGE_SUPPORT": 0x80200013,
    "BG_E_INVALID_SERVER_RESPONSE": 0x8020001B,
    "BG_E_TOO_MANY_FILES": 0x8020001C,
    "BG_E_LOCAL_FILE_CHANGED": 0x8020001D,
    "BG_E_SESSION_NOT_FOUND": 0x8020001F,
    "BG_E_TOO_LARGE": 0x80200020,
    "BG_E_STRING_TOO_LONG": 0x80200021,
    "BG_E_CLIENT_SERVER_PROTOCOL_MISMATCH": 0x80200022,
    "BG_E_NO_PROGRESS": 0x80200024,
    "BG_E_USERNAME_TOO_LARGE": 0x80200025,
    "BG_E_PASSWORD_TOO_LARGE": 0x80200026,
    "BG_E_INVALID_AUTH_TARGET": 0x80200027,
    "BG_E_INVALID_AUTH_SCHEME": 0x80200028,
    "BG_E_FILE_NOT_FOUND": 0x80200029,
    "BG_E_INVALID_RANGE": 0x8020002B,
    "BG_E_OVERLAPPING_RANGES": 0x8020002C,
    "BG_E_CONNECT_FAILURE": 0x8020002D,
    "BG_E_CONNECTION_CLOSED": 0x8020002E,
    "BG_E_BLOCKED_BY_POLICY": 0x8020003E,
    "BG_E_INVALID_PROXY_INFO": 0x8020003F,
    "BG_E_PROXY_LIST_TOO_LARGE": 0x80200018,
    "BG_E_PROXY_BYPASS_LIST_TOO_LARGE": 0x80200019,
    "BG_E_INVALID_CREDENTIALS": 0x80200040,
    "BG_E_TOO_MANY_JOBS_PER_USER": 0x80200049,
    "BG_E_TOO_MANY_JOBS_PER_MACHINE": 0x80200050,
    "BG_E_TOO_MANY_FILES_IN_JOB": 0x80200051,
    "BG_E_TOO_MANY_RANGES_IN_FILE": 0x80200052,
    "BG_E_VALIDATION_FAILED": 0x80200053,
    "BG_E_MAXDOWNLOAD_TIMEOUT": 0x80200054,
    "BG_E_TOKEN_REQUIRED": 0x80200056,
    "BG_E_UNKNOWN_PROPERTY_ID": 0x80200057,
    "BG_E_READ_ONLY_PROPERTY": 0x80200058,
    "BG_E_BLOCKED_BY_COST_TRANSFER_POLICY": 0x80200059,
    "BG_E_PROPERTY_SUPPORTED_FOR_DOWNLOAD_JOBS_ONLY": 0x80200060,
    "BG_E_READ_ONLY_PROPERTY_AFTER_ADDFILE": 0x80200061,
    "BG_E_READ_ONLY_PROPERTY_AFTER_RESUME": 0x80200062,
    "BG_E_MAX_DOWNLOAD_SIZE_INVALID_VALUE": 0x80200063,
    "BG_E_MAX_DOWNLOAD_SIZE_LIMIT_REACHED": 0x80200064,
    "BG_E_WATCHDOG_TIMEOUT": 0x80200069,
    "BG_E_DATABASE_CORRUPT": 0x8020006C,
    "BG_E_RANDOM_ACCESS_NOT_SUPPORTED": 0x8020006D,
    "BG_E_UNSUPPORTED_JOB_CONFIGURATION": 0x80200072,
    "BG_E_REMOTE_FILE_CHANGED": 0x80200073,
    "BG_E_READ_ONLY_WHEN_JOB_ACTIVE": 0x80200075,
    # Generic COM / Win32-style codes BITS reports for local failures.
    "E_FAIL": 0x80004005,
    "E_NOTIMPL": 0x80004001,
    "E_ACCESSDENIED": 0x80070005,
    "E_INVALIDARG": 0x80070057,
    "ERROR_FILE_NOT_FOUND": 0x80070002,
    "ERROR_PATH_NOT_FOUND": 0x80070003,
    "ERROR_FILE_EXISTS": 0x80070050,
    "ERROR_DISK_FULL": 0x80070070,
    "ERROR_SHARING_VIOLATION": 0x80070020,
    "ERROR_NOT_LOGGED_ON": 0x800704DD,  # a job waits: its owner is logged off (SPEC §10)
    # WinHTTP codes BITS reports for transport failures.
    "ERROR_WINHTTP_TIMEOUT": 0x80072EE2,
    "ERROR_WINHTTP_NAME_NOT_RESOLVED": 0x80072EE7,
    "ERROR_WINHTTP_CANNOT_CONNECT": 0x80072EFD,
    "ERROR_WINHTTP_CONNECTION_ERROR": 0x80072EFE,
    "ERROR_WINHTTP_REDIRECT_FAILED": 0x80072F7C,
    "ERROR_WINHTTP_SECURE_FAILURE": 0x80072F8F,
    "ERROR_WINHTTP_CLIENT_CERT_NO_ACCESS_PRIVATE_KEY": 0x80072F9A,
}

_BY_VALUE: dict[int, str] = {v: k for k, v in CODES.items()}
_HTTP_RE = re.compile(r"^BG_E_HTTP_ERROR_(\d{3})$")
HTTP_ERROR_BASE = 0x80190000

# Which HTTP status the API answers with for a code (SPEC §5); anything else is 400.
_API_STATUS: dict[str, int] = {
    "BG_E_NOT_FOUND": 404,
    "BG_E_FILE_NOT_FOUND": 404,
    "E_ACCESSDENIED": 403,
    "BG_E_INVALID_STATE": 409,
    "BG_E_EMPTY": 409,
    "BG_E_READ_ONLY_WHEN_JOB_ACTIVE": 409,
    "BG_E_TOO_MANY_JOBS_PER_USER": 429,
    "BG_E_TOO_MANY_JOBS_PER_MACHINE": 429,
    "BG_E_TOO_MANY_FILES_IN_JOB": 429,
    "BG_E_DATABASE_CORRUPT": 503,
    "E_FAIL": 500,
}


def hresult_of(code: str) -> int:
    """The HRESULT value of a code name; raises KeyError for an unknown name."""
    m = _HTTP_RE.match(code)
    if m:
        return HTTP_ERROR_BASE + int(m.group(1))
    return CODES[code]


def name_of(hresult: int) -> str:
    """The code name of an HRESULT (``0x%08X`` when ferry has no name for it)."""
    if HTTP_ERROR_BASE + 100 <= hresult <= HTTP_ERROR_BASE + 599:
        return f"BG_E_HTTP_ERROR_{hresult - HTTP_ERROR_BASE}"
    return _BY_VALUE.get(hresult, f"0x{hresult:08X}")


def http_error_code(status: int) -> str:
    return f"BG_E_HTTP_ERROR_{status}"


def format_hresult(value: int) -> str:
    return f"0x{value:08X}"


def code_for_errno(err: int) -> str:
    """The BITS-style code for a local OS error number."""
    if err in (_errno.EACCES, _errno.EPERM, _errno.EROFS, _errno.ELOOP):
        return "E_ACCESSDENIED"
    if err == _errno.ENOENT:
        return "ERROR_FILE_NOT_FOUND"
    if err == _errno.ENOTDIR:
        return "ERROR_PATH_NOT_FOUND"
    if err in (_errno.ENOSPC, _errno.EDQUOT):
        return "ERROR_DISK_FULL"
    if err == _errno.EEXIST:
        return "ERROR_FILE_EXISTS"
    if err in (_errno.EINVAL, _errno.ENAMETOOLONG):
        return "E_INVALIDARG"
    return "E_FAIL"


class FerryError(Exception):
    """A failure with a BITS result code.

    ``code`` is the name (``BG_E_NOT_FOUND``), ``hresult`` its integer value, ``message`` the
    human text. The same type is raised inside ferryd and by the client library.
    """

    def __init__(self, code: str, message: str = "", *, hresult: int | None = None) -> None:
        self.code = code
        self.hresult = hresult if hresult is not None else hresult_of(code)
        self.message = message or code
        super().__init__(f"{code} ({format_hresult(self.hresult)}): {self.message}")

    @property
    def api_status(self) -> int:
        if _HTTP_RE.match(self.code):
            return 400
        return _API_STATUS.get(self.code, 400)

    def to_json(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.code,
                "hresult": format_hresult(self.hresult),
                "message": self.message,
            }
        }

    @classmethod
    def from_json(cls, body: Any) -> FerryError:
        """Rebuild an error from an API error body; tolerant of malformed bodies."""
        err = body.get("error") if isinstance(body, dict) else None
        if not isinstance(err, dict):
            return cls("E_FAIL", f"malformed error response: {body!r}"[:500])
        code = str(err.get("code", "E_FAIL"))
        message = str(err.get("message", ""))
        raw = err.get("hresult")
        hresult: int | None
        if isinstance(raw, int) and not isinstance(raw, bool):
            hresult = raw
        else:
            try:
                hresult = int(str(raw), 16)
            except ValueError:
                hresult = None
        try:
            return cls(code, message, hresult=hresult)
        except KeyError:
            return cls(code, message, hresult=hresult if hresult is not None else CODES["E_FAIL"])

    @classmethod
    def from_oserror(cls, exc: OSError, what: str) -> FerryError:
        err = exc.errno or 0
        text = exc.strerror or str(exc)
        return cls(code_for_errno(err), f"{what}: {text}")
