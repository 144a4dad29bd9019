"""The client's side of the API's operations, with no I/O: requests built from the
contract's routes (``ferry.protocol``), request bodies and response interpretation.

The sync client (``http.client``) and the asyncio client (aiohttp) are thin transports over
this module, so the request logic exists once: a transport sends ``Call.method`` /
``Call.target`` / ``Call.body`` and hands the status and raw body back to ``Call.finish``.
Everything here is unit-testable without a daemon. The event stream's parser is ``sse``;
the job and file views the clients hand out are ``views``.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import urlencode

from ..errors import FerryError
from ..model.ranges import EOF, parse_ranges, ranges_to_wire
from ..model.types import JobType, Priority
from ..protocol import (
    ACTION_BY_NAME,
    INTERFACES,
    PROPERTIES,
    PROPERTY_BY_NAME,
    ROUTE_BY_NAME,
    SETTABLE_PROPERTIES,
)
from ..protocol.contract import wire_value

T = TypeVar("T")
JSONObj = dict[str, Any]

JSON_HEADERS: Mapping[str, str] = {"Content-Type": "application/json"}
SSE_HEADERS: Mapping[str, str] = {"Accept": "text/event-stream"}


class DaemonUnavailable(FerryError):
    """No ferryd answers at the socket. A distinct type so the CLI can decide to start a
    user daemon; its code stays ``E_FAIL`` so callers that only know FerryError see an
    ordinary failure."""

    def __init__(self, path: str, detail: str = "") -> None:
        message = f"ferryd is not running at {path}"
        if detail:
            message += f" ({detail})"
        super().__init__("E_FAIL", message)
        self.path = path


# ---- encoding -------------------------------------------------------------------------


def encode(obj: Any) -> bytes:
    """Compact JSON: requests are small and the sync client is measured in calls per second."""
    return json.dumps(obj, separators=(",", ":")).encode()


def decode(raw: bytes) -> Any:
    """An empty body decodes to None; anything that is not JSON is the daemon's fault and
    becomes an E_FAIL the caller can read, never a bare ValueError."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise FerryError(
            "E_FAIL", f"ferryd sent a response that is not JSON: {raw[:200]!r}"
        ) from None


def _job(job: str) -> str:
    if not isinstance(job, str) or not job:
        raise FerryError("E_INVALIDARG", "a job id or display name is required")
    return job


def _handle(handle: str) -> str:
    if not isinstance(handle, str) or not handle:
        raise FerryError("E_INVALIDARG", "a handle is required")
    return handle


def _call(
    operation: str,
    parse: Callable[[Any], T],
    body: bytes | None = None,
    query: str = "",
    **params: str,
) -> Call[T]:
    """The request of the contract's route ``operation``: its method, and its path with the
    job / handle filled in (quoted, so names with spaces, slashes or ``?`` survive)."""
    route = ROUTE_BY_NAME[operation]
    return Call(route.method, route.target(**params) + query, body, parse)


# ---- calls ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One API request and how to read its answer."""

    method: str
    target: str
    body: bytes | None
    parse: Callable[[Any], T]
    # The answer is text (the metrics), handed to ``parse`` decoded, not as JSON.
    text: bool = False

    @property
    def headers(self) -> Mapping[str, str]:
        return JSON_HEADERS if self.body is not None else {}

    def finish(self, status: int, raw: bytes) -> T:
        """Status >= 400 is an API error body (SPEC §5) and becomes the FerryError the
        daemon meant; anything else goes through ``parse``."""
        if status >= 400:
            try:
                doc = decode(raw)
            except FerryError:
                doc = None
            if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
                raise FerryError.from_json(doc)
            raise FerryError("E_FAIL", f"ferryd answered HTTP {status}: {raw[:200]!r}")
        if self.text:
            return self.parse(raw.decode("utf-8", "replace"))
        return self.parse(decode(raw))


def _as_obj(doc: Any) -> JSONObj:
    if not isinstance(doc, dict):
        raise FerryError("E_FAIL", f"ferryd sent {type(doc).__name__} where an object was due")
    return doc


def _key_list(key: str) -> Callable[[Any], list[JSONObj]]:
    def parse(doc: Any) -> list[JSONObj]:
        items = _as_obj(doc).get(key)
        if not isinstance(items, list):
            raise FerryError("E_FAIL", f"ferryd's answer has no {key!r} list")
        return [_as_obj(i) for i in items]

    return parse


def _action_result(doc: Any) -> tuple[str, JSONObj]:
    obj = _as_obj(doc)
    result = obj.get("result")
    code = result.get("code") if isinstance(result, dict) else None
    return (str(code) if code else "S_OK"), _as_obj(obj.get("job"))


def status() -> Call[JSONObj]:
    return _call("status", _as_obj)


def create_job(
    display_name: str,
    type: JobType | str = JobType.DOWNLOAD,
    priority: Priority | str = Priority.NORMAL,
    description: str = "",
    krb5ccname: str | None = None,
) -> Call[JSONObj]:
    body: JSONObj = {
        "display_name": display_name,
        "type": wire_value(type),
        "priority": wire_value(priority),
    }
    if description:
        body["description"] = description
    if krb5ccname:
        body["krb5ccname"] = krb5ccname
    return _call("create_job", _as_obj, encode(body))


def get_job(job: str) -> Call[JSONObj]:
    return _call("get_job", _as_obj, job=_job(job))


def list_jobs(all_users: bool = False) -> Call[list[JSONObj]]:
    return _call("list_jobs", _key_list("jobs"), query="?all_users=true" if all_users else "")


def set_job(job: str, props: Mapping[str, Any]) -> Call[JSONObj]:
    """PATCH the job with any of the contract's ``PROPERTIES``, each converted by its
    ``to_wire`` (enums and flags become wire values; a notify command line given as one
    string is split like a shell would, an empty one clears it). Unknown names are refused
    here, before a round trip, because a typo in a keyword argument should fail loudly
    rather than be silently ignored."""
    unknown = sorted(set(props) - SETTABLE_PROPERTIES)
    if unknown:
        raise FerryError("E_INVALIDARG", f"unknown job property: {', '.join(unknown)}")
    if not props:
        raise FerryError("E_INVALIDARG", "no property to set")
    body = {k: PROPERTY_BY_NAME[k].to_wire(v) for k, v in props.items()}
    return _call("set_job", _as_obj, encode(body), job=_job(job))


HTTP_OPTION_NAMES = frozenset(
    {"custom_headers", "custom_headers_write_only", "client_certificate", "security_flags",
     "http_method"}
)


def set_http_options(job: str, opts: Mapping[str, Any]) -> Call[JSONObj]:
    """PATCH /v1/jobs/JOB/http-options (SPEC §8.3): any of ``HTTP_OPTION_NAMES``, all or
    none."""
    unknown = sorted(set(opts) - HTTP_OPTION_NAMES)
    if unknown:
        raise FerryError("E_INVALIDARG", f"unknown HTTP option: {', '.join(unknown)}")
    if not opts:
        raise FerryError("E_INVALIDARG", "no HTTP option to set")
    body = dict(opts)
    if isinstance(body.get("custom_headers"), tuple):
        body["custom_headers"] = list(body["custom_headers"])
    if isinstance(body.get("security_flags"), tuple):
        body["security_flags"] = list(body["security_flags"])
    return _call("set_http_options", _as_obj, encode(body), job=_job(job))


def set_doc(what: str) -> str:
    """The docstring of ``Job.set``/``AsyncJob.set``, listing the contract's properties."""
    lines = [f"Change properties ({what}); keywords, each optional:", ""]
    lines += [f"* ``{p.keyword}``: {p.description}" for p in PROPERTIES]
    lines += [
        "",
        "Enums and flags (``ferry.Priority``, ``ferry.NotifyFlags``) are taken as they are; a",
        "command line may be one string, split like a shell would ('' or None clears it).",
    ]
    return "\n".join(lines)


def list_files(job: str) -> Call[list[JSONObj]]:
    return _call("list_files", _key_list("files"), job=_job(job))


FileSpec = (
    tuple[Any, Any] | tuple[Any, Any, str | None] | tuple[Any, Any, str | None, Any]
)


def file_entries(files: Iterable[FileSpec]) -> list[JSONObj]:
    """``(remote, local)`` or ``(remote, local, sha256)`` tuples as the contract's file
    entries. Local names become absolute against the *client's* working directory: the
    daemon runs elsewhere and refuses relative names, while a user typing ``ferry add J URL
    out.iso`` means the file next to them. Remote names are passed through untouched: only
    URLs are valid remotes, and guessing ``file://`` for a path would hide the mistake. A
    SHA-256 (64 hex digits, None for none) is checked by ferryd when the file is complete."""
    out: list[JSONObj] = []
    for spec in files:
        if not isinstance(spec, tuple | list) or len(spec) not in (2, 3, 4):
            raise FerryError(
                "E_INVALIDARG",
                "files are (remote, local), (remote, local, sha256) or "
                "(remote, local, sha256, ranges) tuples",
            )
        remote, local = spec[0], spec[1]
        sha256 = spec[2] if len(spec) >= 3 else None
        local_str = os.fspath(local)
        if not isinstance(remote, str) or not isinstance(local_str, str):
            raise FerryError("E_INVALIDARG", "remote and local names must be strings")
        if "\x00" in local_str:
            # abspath would happily carry a NUL along; the daemon refuses it, say so early.
            raise FerryError("E_INVALIDARG", "local name contains a NUL byte")
        entry: JSONObj = {"remote_name": remote, "local_name": os.path.abspath(local_str)}
        if sha256 is not None:
            entry["sha256"] = sha256
        if len(spec) == 4 and spec[3] is not None:
            entry["ranges"] = ranges_entry(spec[3])
        out.append(entry)
    if not out:
        raise FerryError("E_INVALIDARG", "no files given")
    return out


def ranges_entry(ranges: Any) -> list[JSONObj]:
    """AddFileWithRanges' ranges for the wire: ``"OFFSET:LENGTH,…"`` (``eof`` as a length)
    or ``(offset, length)`` pairs (``None`` or ``"eof"`` as a length); ferryd checks them."""
    if isinstance(ranges, str):
        ranges = parse_ranges(ranges)
    pairs: list[tuple[Any, Any]] = []
    for item in ranges:
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise FerryError("E_INVALIDARG", "ranges are (offset, length) pairs")
        pairs.append((item[0], None if item[1] == EOF else item[1]))
    return [dict(r) for r in ranges_to_wire(pairs)]


def add_files(job: str, files: Iterable[FileSpec]) -> Call[JSONObj]:
    body = {"files": file_entries(files)}
    return _call("add_files", _as_obj, encode(body), job=_job(job))


def set_remote_name(job: str, index: int, url: str) -> Call[JSONObj]:
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise FerryError("E_INVALIDARG", "the file index must be an integer >= 0")
    if not isinstance(url, str):
        raise FerryError("E_INVALIDARG", "the remote name must be a string")
    return _call(
        "set_remote_name", _as_obj, encode({"remote_name": url}), job=_job(job), index=str(index)
    )


def set_reply_file(job: str, path: str | os.PathLike[str]) -> Call[JSONObj]:
    """SetReplyFileName; a relative path is made absolute against this process's cwd."""
    local = os.fspath(path)
    if not isinstance(local, str) or not local:
        raise FerryError("E_INVALIDARG", "the reply file must be a path")
    if "\x00" in local:
        raise FerryError("E_INVALIDARG", "the reply file contains a NUL byte")
    body = encode({"reply_file": os.path.abspath(local)})
    return _call("set_reply_file", _as_obj, body, job=_job(job))


def _reply_bytes(doc: Any) -> bytes:
    obj = _as_obj(doc)
    try:
        return base64.b64decode(str(obj["data"]), validate=True)
    except (KeyError, ValueError) as exc:
        raise FerryError("E_FAIL", f"ferryd sent a malformed reply: {exc}") from None


def reply_data(job: str) -> Call[bytes]:
    """GetReplyData: the reply of a TRANSFERRED upload-reply job (at most 1 MiB)."""
    return _call("get_reply", _reply_bytes, job=_job(job))


def replace_remote_prefix(job: str, old: str, new: str) -> Call[tuple[str, JSONObj]]:
    """The answer carries ``S_OK``, or ``S_FALSE`` when no remote name matched."""
    if not isinstance(old, str) or not isinstance(new, str):
        raise FerryError("E_INVALIDARG", "the prefixes must be strings")
    body = encode({"old": old, "new": new})
    return _call("replace_remote_prefix", _action_result, body, job=_job(job))


def action(job: str, name: str) -> Call[tuple[str, JSONObj]]:
    """resume / suspend / cancel / complete / take-ownership: the answer carries the BITS
    result code (``S_OK`` or ``BG_S_PARTIAL_COMPLETE``) and the job after the change."""
    act = ACTION_BY_NAME.get(name)
    if act is None:
        raise ValueError(f"unknown job action {name!r}")
    return _call(act.operation, _action_result, b"{}", job=_job(job))


def events_target(
    job_id: str | None = None, all_users: bool = False, all_events: bool = False
) -> str:
    """``all_events``: receive every change whatever the jobs' notify_flags (an observer,
    such as ``wait``), not only what the flags ask for (a callback)."""
    query: list[tuple[str, str]] = []
    if job_id:
        query.append(("job", job_id))
    if all_users:
        query.append(("all_users", "true"))
    if all_events:
        query.append(("all_events", "true"))
    return ROUTE_BY_NAME["events"].path + (f"?{urlencode(query)}" if query else "")


# ---- handles and IBitsTokenOptions (SPEC §4.3, §4.4) --------------------------------------


def open_handle(job: str, interface: str = "job", ttl: int | None = None) -> Call[JSONObj]:
    """QueryInterface: ferryd checks access now, with this connection's identity."""
    if interface not in INTERFACES:
        raise FerryError("E_INVALIDARG", f"unknown interface {interface!r}")
    body: JSONObj = {"interface": interface}
    if ttl is not None:
        body["ttl"] = ttl
    return _call("open_handle", _as_obj, encode(body), job=_job(job))


def release_handle(handle: str) -> Call[JSONObj]:
    return _call("release_handle", _as_obj, handle=_handle(handle))


def _token_options(
    operation: str, job: str | None, handle: str | None, body: bytes | None = None
) -> Call[JSONObj]:
    """With a handle the call is judged by whoever opened it; without one, the caller is
    treated as having opened a handle this very moment."""
    if (job is None) == (handle is None):
        raise FerryError("E_INVALIDARG", "give a job or a handle")
    if handle is not None:
        return _call(f"handle_{operation}", _as_obj, body, handle=_handle(handle))
    return _call(f"job_{operation}", _as_obj, body, job=_job(job or ""))


def get_helper_token(job: str | None = None, handle: str | None = None) -> Call[JSONObj]:
    return _token_options("get_helper_token", job, handle)


def set_helper_token(
    job: str | None = None, handle: str | None = None, krb5ccname: str | None = None
) -> Call[JSONObj]:
    body = encode({"krb5ccname": krb5ccname}) if krb5ccname else b"{}"
    return _token_options("set_helper_token", job, handle, body)


# ---- credentials (SPEC §8.2) ----------------------------------------------------------


def default_ccache() -> str | None:
    """The Kerberos credential cache of the identity calls connect as: its KRB5CCNAME, else
    MIT's default file cache for its uid. Under ``ferry.impersonate`` that is the
    impersonated uid's default (the caller's own KRB5CCNAME is not that identity's)."""
    from .impersonation import current

    ident = current()
    if ident is not None:
        return f"FILE:/tmp/krb5cc_{ident.uid}"
    name = os.environ.get("KRB5CCNAME")
    if name:
        return name if name.startswith("FILE:") or name.startswith("/") else None
    return f"FILE:/tmp/krb5cc_{os.getuid()}"


def list_credentials(job: str) -> Call[list[JSONObj]]:
    return _call("list_credentials", lambda d: list(_as_obj(d)["credentials"]), job=_job(job))


def set_credentials(
    job: str,
    target: str,
    scheme: str,
    user: str | None = None,
    password: str | None = None,
    krb5ccname: str | None = None,
) -> Call[JSONObj]:
    body: JSONObj = {"target": str(target), "scheme": str(scheme)}
    if user is not None:
        body["user"] = user
    if password is not None:
        body["password"] = password
    if krb5ccname:
        body["krb5ccname"] = krb5ccname
    return _call("set_credentials", _as_obj, encode(body), job=_job(job))


def remove_credentials(job: str, target: str, scheme: str) -> Call[JSONObj]:
    return _call(
        "remove_credentials", _as_obj, job=_job(job), target=str(target), scheme=str(scheme)
    )


def clear_helper_token(job: str | None = None, handle: str | None = None) -> Call[JSONObj]:
    return _token_options("clear_helper_token", job, handle)


def set_helper_token_flags(
    flags: int, job: str | None = None, handle: str | None = None
) -> Call[JSONObj]:
    if isinstance(flags, bool) or not isinstance(flags, int):
        raise FerryError("E_INVALIDARG", "helper token flags must be an integer")
    body = encode({"flags": int(flags)})
    return _token_options("set_helper_token_flags", job, handle, body)


def metrics() -> Call[str]:
    """GET /v1/metrics: the Prometheus text exposition."""
    route = ROUTE_BY_NAME["metrics"]
    return Call(route.method, route.target(), None, str, text=True)


def shutdown() -> Call[JSONObj]:
    return _call("shutdown", _as_obj, b"{}")


def fleet() -> Call[JSONObj]:
    return _call("fleet", _as_obj)


# ---- SPEC §10: the network and the bandwidth policy ----------------------------------------


def get_network() -> Call[JSONObj]:
    return _call("get_network", _as_obj)


def set_network_cost(cost: str) -> Call[JSONObj]:
    if not isinstance(cost, str) or not cost:
        raise FerryError("E_INVALIDARG", "the network cost must be a name")
    return _call("set_network_cost", _as_obj, encode({"cost": cost.strip().lower()}))


def reload() -> Call[JSONObj]:
    return _call("reload", _as_obj, b"{}")


def logoff(user: str | int | None = None, session: int | None = None) -> Call[JSONObj]:
    if (user is None) == (session is None):
        raise FerryError("E_INVALIDARG", "give exactly one of user and session")
    body: JSONObj = {"user": user} if user is not None else {"session": session}
    return _call("logoff", _as_obj, encode(body))
