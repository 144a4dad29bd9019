"""``ferry bitsadmin /VERB …``: bitsadmin's command syntax on top of the client library, so
scripts written for Windows keep working (docs/bitsadmin.md maps every verb).

Switches are case-insensitive (``/ADDFILE`` is ``/addfile``), as bitsadmin's are. Output is
shaped like bitsadmin's: state names, ``Created job {GUID}.``, ``Transfer complete.``; the
global switches ``/rawreturn`` (bare values, no banner) and ``/wrap`` / ``/nowrap`` come
before the verb. A job is named by its display name or its GUID, with or without braces.

Every verb is one entry of ``VERBS`` (``/name`` -> handler). A verb of a part ferry does not
have yet says so and exits 1 (``E_NOTIMPL``): it is a ``_missing(...)`` entry, and wiring it
later is replacing that one line with its handler. Errors print ``Unable to … - 0xHRESULT``
and the message on stderr and exit 1; a usage error exits 2.

Start-up: only the client library is imported here (no asyncio, aiohttp, rich or ssl).
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import click

from .. import __version__
from ..client import Client, Job, TokenOptions
from ..errors import FerryError, format_hresult, hresult_of
from ..model.types import JobState, JobType, NotifyFlags, Priority

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
SIZE_UNKNOWN = 0xFFFF_FFFF_FFFF_FFFF  # BG_SIZE_UNKNOWN as bitsadmin prints it
CONTEXT_CODES = {
    "NONE": 0,
    "UNKNOWN": 1,
    "GENERAL_QUEUE_MANAGER": 2,
    "QUEUE_MANAGER_NOTIFICATION": 3,
    "LOCAL_FILE": 4,
    "REMOTE_FILE": 5,
    "GENERAL_TRANSPORT": 6,
    "REMOTE_APPLICATION": 7,
    "SERVER_CERTIFICATE_CALLBACK": 8,
}
CONTEXT_TEXT = {
    "GENERAL_QUEUE_MANAGER": "The error occurred in the background transfer queue manager.",
    "QUEUE_MANAGER_NOTIFICATION": "The error occurred while running the notification program.",
    "LOCAL_FILE": "The error occurred while the local file was being processed.",
    "REMOTE_FILE": "The error occurred while the remote file was being processed.",
    "GENERAL_TRANSPORT": "The error occurred in the transport layer.",
    "REMOTE_APPLICATION": "The error occurred in the server application.",
}


class Usage(Exception):
    """A bitsadmin usage error (exit 2)."""


class Session:
    """One ``ferry bitsadmin`` invocation: the client, the output switches."""

    def __init__(self, client: Callable[[bool], Client], raw: bool, wrap: bool) -> None:
        self._client = client
        self.raw = raw
        self.wrap = wrap

    def client(self, transfer: bool = False) -> Client:
        return self._client(transfer)

    def job(self, ref: str, transfer: bool = False) -> Job:
        return self.client(transfer).get_job(job_ref(ref))

    def say(self, text: str) -> None:
        if not self.wrap:
            click.echo(text)
            return
        import shutil
        import textwrap

        width = shutil.get_terminal_size().columns
        for line in text.splitlines() or [""]:
            click.echo(textwrap.fill(line, width) if len(line) > width else line)

    def value(self, text: object) -> None:
        """A /get verb's answer: the bare value (also with /rawreturn)."""
        click.echo(str(text))


def job_ref(ref: str) -> str:
    """A job as bitsadmin names it: ``{GUID}`` (any case) or a display name."""
    inner = ref[1:-1] if ref.startswith("{") and ref.endswith("}") else ref
    if len(inner) == 36 and inner.count("-") == 4:
        try:
            int(inner.replace("-", ""), 16)
            return inner.lower()
        except ValueError:
            pass
    return ref


def _tokens(j: Job) -> TokenOptions:
    """The job's helper-token calls, checked as this caller."""
    return TokenOptions(j.client, job=j.id)


def guid(job_id: str) -> str:
    return "{" + job_id.upper() + "}"


def _args(args: Sequence[str], n: int, usage: str) -> list[str]:
    if len(args) != n:
        raise Usage(usage)
    return list(args)


def _int(text: str, what: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise Usage(f"{what} must be a number, not {text!r}") from None


def _count(v: int | None) -> int:
    return SIZE_UNKNOWN if v is None else int(v)


def _bytes_text(done: int, total: int | None) -> str:
    if total is None:
        return f"{done} / UNKNOWN"
    pct = f" ({done * 100 // total}%)" if total else ""
    return f"{done} / {total}{pct}"


# ---- verbs -----------------------------------------------------------------------------------

Handler = Callable[[Session, list[str]], int]


def _missing(what: str) -> Handler:
    """A verb of a part ferry does not have yet (or never will): says so, exits 1."""

    def handler(s: Session, args: list[str]) -> int:
        raise FerryError("E_NOTIMPL", f"{what} is not available in this ferry")

    handler.missing = what  # type: ignore[attr-defined]
    return handler


def _take_type(args: list[str]) -> tuple[JobType, list[str]]:
    kind = JobType.DOWNLOAD
    rest: list[str] = []
    for a in args:
        low = a.lower()
        if low == "/download":
            kind = JobType.DOWNLOAD
        elif low == "/upload":
            kind = JobType.UPLOAD
        elif low == "/upload-reply":
            kind = JobType.UPLOAD_REPLY
        else:
            rest.append(a)
    return kind, rest


def v_create(s: Session, args: list[str]) -> int:
    kind, rest = _take_type(args)
    (name,) = _args(rest, 1, "/create [/download | /upload | /upload-reply] NAME")
    job = s.client(transfer=True).create_job(name, kind)
    s.value(guid(job.id)) if s.raw else s.say(f"Created job {guid(job.id)}.")
    return EXIT_OK


def v_addfile(s: Session, args: list[str]) -> int:
    job, remote, local = _args(args, 3, "/addfile JOB REMOTE_URL LOCAL_NAME")
    s.job(job, transfer=True).add_file(remote, local)
    s.say(f"Added {remote} -> {local} to job.")
    return EXIT_OK


def v_addfileset(s: Session, args: list[str]) -> int:
    job, listing = _args(args, 2, "/addfileset JOB TEXTFILE")
    try:
        with open(listing, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise FerryError.from_oserror(exc, listing) from None
    pairs: list[tuple[str, str]] = []
    for number, line in enumerate(lines, 1):
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if len(words) != 2:
            raise Usage(f"{listing}:{number}: each line is REMOTE_URL LOCAL_NAME")
        pairs.append((words[0], words[1]))
    s.job(job, transfer=True).add_files(pairs)
    s.say(f"Added {len(pairs)} file(s) to job.")
    return EXIT_OK


def v_addfilewithranges(s: Session, args: list[str]) -> int:
    job, remote, local, ranges = _args(
        args, 4, "/addfilewithranges JOB REMOTE_URL LOCAL_NAME OFFSET:LENGTH[,…] (eof: to the end)"
    )
    s.job(job, transfer=True).add_file(remote, local, ranges=ranges)
    s.say(f"Added {remote} -> {local} to job.")
    return EXIT_OK


def _action(name: str, done: str) -> Handler:
    def handler(s: Session, args: list[str]) -> int:
        (ref,) = _args(args, 1, f"/{name} JOB")
        job = s.job(ref, transfer=name == "resume")
        getattr(job, name.replace("takeownership", "take_ownership"))()
        s.say(done)
        return EXIT_OK

    return handler


def v_complete(s: Session, args: list[str]) -> int:
    (ref,) = _args(args, 1, "/complete JOB")
    code = s.job(ref).complete()
    if code == "BG_S_PARTIAL_COMPLETE":
        s.say(f"Job partially completed. ({format_hresult(hresult_of(code))})")
    else:
        s.say("Job completed.")
    return EXIT_OK


def v_reset(s: Session, args: list[str]) -> int:
    rest = [a for a in args if a.lower() != "/allusers"]
    if rest:
        raise Usage("/reset [/allusers]")
    jobs = [
        j
        for j in s.client().jobs(all_users=len(rest) != len(args))
        if not JobState(j.state).is_final
    ]
    cancelled = 0
    for j in jobs:
        try:
            j.cancel()
            cancelled += 1
        except FerryError as exc:
            s.say(f"Unable to cancel {guid(j.id)} - {format_hresult(exc.hresult)}")
    s.say(f"{cancelled} out of {len(jobs)} jobs canceled.")
    return EXIT_OK if cancelled == len(jobs) else EXIT_ERROR


def _summary_line(j: Job) -> str:
    p = j.progress
    total = p.get("bytes_total")
    return (
        f"{guid(j.id)} '{j.display_name}' {j.state.value} "
        f"{p.get('files_transferred', 0)} / {p.get('files_total', 0)} "
        f"{p.get('bytes_transferred', 0)} / {'UNKNOWN' if total is None else total}"
    )


def _info_lines(j: Job, verbose: bool) -> list[str]:
    d = j.data
    p = j.progress
    owner = d.get("owner") or {}
    who = owner.get("name") or f"uid {owner.get('uid')}"
    lines = [
        f"GUID: {guid(j.id)} DISPLAY: '{j.display_name}'",
        f"TYPE: {j.type.value.upper()} STATE: {j.state.value} OWNER: {who}",
        f"PRIORITY: {j.priority.value.upper()} "
        f"FILES: {p.get('files_transferred', 0)} / {p.get('files_total', 0)} "
        f"BYTES: {p.get('bytes_transferred', 0)} / "
        f"{'UNKNOWN' if p.get('bytes_total') is None else p.get('bytes_total')}",
    ]
    if not verbose:
        return lines
    times = d.get("times") or {}
    cmd = d.get("notify_cmdline")
    helper = d.get("helper_token") or {}
    proxy = _proxy(j)
    lines += [
        f"CREATION TIME: {times.get('created')} MODIFICATION TIME: {times.get('modified')}",
        f"COMPLETION TIME: {times.get('transfer_completed') or 'UNKNOWN'}",
        f"NOTIFY INTERFACE: UNREGISTERED NOTIFICATION FLAGS: {d.get('notify_flags')}",
        f"RETRY DELAY: {d.get('min_retry_delay')} NO PROGRESS TIMEOUT: "
        f"{d.get('no_progress_timeout')} ERROR COUNT: {d.get('error_count', 0)}",
        f"PROXY USAGE: {proxy['usage']} PROXY LIST: {','.join(proxy.get('list') or []) or 'NULL'} "
        f"PROXY BYPASS LIST: {' '.join(proxy.get('bypass') or []) or 'NULL'}",
        f"DESCRIPTION: {d.get('description', '')}",
        f"NOTIFICATION COMMAND LINE: {shlex.join(cmd) if cmd else 'none'}",
        f"HELPER TOKEN FLAGS: {helper.get('flags_value', 0)}",
        f"DYNAMIC CONTENT: {str(bool(d.get('dynamic_content'))).upper()}",
    ]
    if d.get("error"):
        lines += _error_lines(j)
    lines.append("JOB FILES:")
    for f in j.files():
        total = f.bytes_total
        lines.append(
            f"\t{f.bytes_transferred} / {'UNKNOWN' if total is None else total} "
            f"{'WORKING' if not f.completed else 'COMPLETED'} {f.remote_name} -> {f.local_name}"
        )
    return lines


def v_info(s: Session, args: list[str]) -> int:
    verbose = any(a.lower() == "/verbose" for a in args)
    rest = [a for a in args if a.lower() != "/verbose"]
    (ref,) = _args(rest, 1, "/info JOB [/verbose]")
    s.say("\n".join(_info_lines(s.job(ref), verbose)))
    return EXIT_OK


def _list_flags(args: list[str], allowed: set[str]) -> tuple[set[str], list[str]]:
    flags = {a.lower() for a in args if a.lower() in allowed}
    rest = [a for a in args if a.lower() not in allowed]
    return flags, rest


def v_list(s: Session, args: list[str]) -> int:
    flags, rest = _list_flags(args, {"/allusers", "/verbose"})
    if rest:
        raise Usage("/list [/allusers] [/verbose]")
    jobs = s.client().jobs(all_users="/allusers" in flags)
    for j in jobs:
        if "/verbose" in flags:
            s.say("\n".join(_info_lines(j, True)) + "\n")
        else:
            s.say(_summary_line(j))
    s.say(f"Listed {len(jobs)} job(s).")
    return EXIT_OK


def v_listfiles(s: Session, args: list[str]) -> int:
    (ref,) = _args(args, 1, "/listfiles JOB")
    files = s.job(ref).files()
    for f in files:
        total = f.bytes_total
        s.say(
            f"{f.bytes_transferred} / {'UNKNOWN' if total is None else total} "
            f"{'WORKING' if not f.completed else 'COMPLETED'} {f.remote_name} -> {f.local_name}"
        )
    s.say(f"Listed {len(files)} file(s).")
    return EXIT_OK


def v_monitor(s: Session, args: list[str]) -> int:
    flags, rest = _list_flags(args, {"/allusers"})
    refresh = 5.0
    if rest:
        if len(rest) != 2 or rest[0].lower() != "/refresh":
            raise Usage("/monitor [/allusers] [/refresh SECONDS]")
        refresh = max(0.1, float(_int(rest[1], "/refresh")))
    client = s.client()
    clear = sys.stdout.isatty()
    try:
        while True:
            jobs = client.jobs(all_users="/allusers" in flags)
            if clear:
                click.echo("\x1b[H\x1b[2J", nl=False)
            stamp = time.strftime("%H:%M:%S")
            s.say(f"MONITORING BACKGROUND COPY MANAGER({refresh:g} second refresh) {stamp}")
            for j in jobs:
                s.say(_summary_line(j))
            sys.stdout.flush()
            time.sleep(refresh)
    except KeyboardInterrupt:
        return EXIT_OK


def _error_lines(j: Job) -> list[str]:
    e = j.error
    if not e:
        raise FerryError("BG_E_ERROR_INFORMATION_UNAVAILABLE", "the job has no error")
    lines = []
    f = e.get("file")
    if f:
        lines.append(f"ERROR FILE:    {f['remote_name']} -> {f['local_name']}")
    context = str(e.get("context", "NONE"))
    lines += [
        f"ERROR CODE:    {e['hresult']} - {e.get('description') or e.get('code')}",
        f"ERROR CONTEXT: 0x{CONTEXT_CODES.get(context, 1):08x} - "
        f"{CONTEXT_TEXT.get(context, context)}",
    ]
    return lines


def v_geterror(s: Session, args: list[str]) -> int:
    (ref,) = _args(args, 1, "/geterror JOB")
    s.say("\n".join(_error_lines(s.job(ref))))
    return EXIT_OK


def _getter(usage: str, read: Callable[[Job], object]) -> Handler:
    def handler(s: Session, args: list[str]) -> int:
        (ref,) = _args(args, 1, usage)
        s.value(read(s.job(ref)))
        return EXIT_OK

    return handler


def _setter(usage: str, prop: str, parse: Callable[[str], Any], done: str) -> Handler:
    def handler(s: Session, args: list[str]) -> int:
        ref, text = _args(args, 2, usage)
        value = parse(text)
        s.job(ref).set(**{prop: value})
        s.say(done.format(value=text if not isinstance(value, Priority) else value.value.upper()))
        return EXIT_OK

    return handler


def _priority(text: str) -> Priority:
    try:
        return Priority(text.lower())
    except ValueError:
        raise Usage(f"priority is FOREGROUND, HIGH, NORMAL or LOW, not {text!r}") from None


def v_setnotifycmdline(s: Session, args: list[str]) -> int:
    """bitsadmin's two arguments: the program, and its whole command line (which, as
    CreateProcess wants, usually starts with the program again); NULL clears."""
    if len(args) not in (2, 3):
        raise Usage("/setnotifycmdline JOB PROGRAM [PARAMETERS] (NULL clears)")
    ref, program = args[0], args[1]
    if program.upper() == "NULL":
        s.job(ref).set(notify_cmdline=None)
        s.say("notification command line cleared.")
        return EXIT_OK
    params = shlex.split(args[2]) if len(args) == 3 and args[2].upper() != "NULL" else []
    if params and params[0] in (program, program.rsplit("/", 1)[-1]):
        params = params[1:]
    s.job(ref).set(notify_cmdline=[program, *params])
    s.say(f"notification command line set to '{program}' '{' '.join(params)}'.")
    return EXIT_OK


def v_setnotifyflags(s: Session, args: list[str]) -> int:
    ref, text = _args(args, 2, "/setnotifyflags JOB FLAGS")
    flags = _int(text, "FLAGS")
    s.job(ref).set(notify_flags=NotifyFlags(flags) if 0 <= flags <= 0xFF else flags)
    s.say(f"Notification flags set to {flags}.")
    return EXIT_OK


def v_replaceremoteprefix(s: Session, args: list[str]) -> int:
    ref, old, new = _args(args, 3, "/replaceremoteprefix JOB OLD_PREFIX NEW_PREFIX")
    code = s.job(ref).replace_remote_prefix(old, new)
    s.say("No remote names matched." if code == "S_FALSE" else "Remote prefix replaced.")
    return EXIT_OK


def v_setremotename(s: Session, args: list[str]) -> int:
    ref, index, url = _args(args, 3, "/setremotename JOB FILE_INDEX REMOTE_URL")
    s.job(ref).set_remote_name(_int(index, "FILE_INDEX"), url)
    s.say(f"Remote name of file {index} set to {url}.")
    return EXIT_OK


def v_sethelpertokenflags(s: Session, args: list[str]) -> int:
    ref, text = _args(args, 2, "/sethelpertokenflags JOB FLAGS")
    _tokens(s.job(ref)).set_helper_token_flags(_int(text, "FLAGS"))
    s.say(f"Helper token flags set to {text}.")
    return EXIT_OK


def _progress_lines(j: Job) -> str:
    p = j.progress
    return (
        f"DISPLAY: '{j.display_name}' TYPE: {j.type.value.upper()} STATE: {j.state.value}\n"
        f"PRIORITY: {j.priority.value.upper()} "
        f"FILES: {p.get('files_transferred', 0)} / {p.get('files_total', 0)} "
        f"BYTES: {_bytes_text(int(p.get('bytes_transferred') or 0), p.get('bytes_total'))}"
    )


def v_transfer(s: Session, args: list[str]) -> int:
    usage = (
        "/transfer NAME [/download | /upload] [/priority PRIORITY] [/ACLFLAGS FLAGS] "
        "[/DYNAMIC] REMOTE_URL LOCAL_NAME [REMOTE_URL LOCAL_NAME …]"
    )
    if not args:
        raise Usage(usage)
    name, rest = args[0], args[1:]
    kind, rest = _take_type(rest)
    priority, dynamic, names = Priority.NORMAL, False, []
    i = 0
    while i < len(rest):
        low = rest[i].lower()
        if low == "/priority" and i + 1 < len(rest):
            priority, i = _priority(rest[i + 1]), i + 2
        elif low == "/aclflags" and i + 1 < len(rest):
            raise FerryError(
                "E_NOTIMPL", "/ACLFLAGS (copying owner and ACLs) has no ferry counterpart"
            )
        elif low == "/dynamic":
            dynamic, i = True, i + 1
        else:
            names.append(rest[i])
            i += 1
    if not names or len(names) % 2:
        raise Usage(usage)
    client = s.client(transfer=True)
    job = client.create_job(name, kind, priority)
    try:
        if dynamic:
            job.set(dynamic_content=True)
        job.add_files([(names[k], names[k + 1]) for k in range(0, len(names), 2)])
        job.resume()
    except BaseException:
        job.cancel()
        raise
    last = ""
    while True:
        job = job.info()
        text = _progress_lines(job)
        if text != last and not s.raw:
            s.say(text)
            sys.stdout.flush()
            last = text
        if job.state is JobState.TRANSFERRED:
            code = job.complete()
            if code == "BG_S_PARTIAL_COMPLETE":
                raise FerryError(code, "only some files were transferred")
            s.say("Transfer complete.")
            return EXIT_OK
        if job.state is JobState.ERROR:
            lines = _error_lines(job)
            job.cancel()
            click.echo("Unable to complete transfer.", err=True)
            click.echo("\n".join(lines), err=True)
            return EXIT_ERROR
        if job.state.is_final:
            click.echo(f"Unable to complete transfer: the job is {job.state.value}.", err=True)
            return EXIT_ERROR
        time.sleep(0.5)


# ---- network identity, HTTP options and upload-reply (SPEC §8, §9) ---------------------------

# BITS_HTTP_SECURITY_FLAG_* bits (IBackgroundCopyJobHttpOptions::SetSecurityFlags) and the
# names ferry's library takes for them.
SECURITY_BITS: tuple[tuple[int, str], ...] = (
    (0x0001, "ENABLE_CRL_CHECK"),
    (0x0002, "IGNORE_CERT_CN_INVALID"),
    (0x0004, "IGNORE_CERT_DATE_INVALID"),
    (0x0008, "IGNORE_UNKNOWN_CA"),
    (0x0010, "IGNORE_CERT_WRONG_USAGE"),
    (0x0800, "ALLOW_HTTPS_TO_HTTP"),
)
REDIRECT_MASK = 0x0700
REDIRECT_BITS: dict[int, str | None] = {
    0x0000: None,  # BG_HTTP_REDIRECT_POLICY_ALLOW_SILENT, the default
    0x0100: "REDIRECT_POLICY_ALLOW_REPORT",
    0x0200: "REDIRECT_POLICY_DISALLOW",
}
SECURITY_MASK = REDIRECT_MASK | sum(bit for bit, _ in SECURITY_BITS)


def security_names(value: int) -> list[str]:
    """A /setsecurityflags number as the library's flag names; E_INVALIDARG for unknown bits
    or an unknown redirect policy (nothing changes then)."""
    if value < 0 or value & ~SECURITY_MASK or (value & REDIRECT_MASK) not in REDIRECT_BITS:
        raise FerryError("E_INVALIDARG", f"0x{value:04X} is not a BITS HTTP security flag value")
    names = [name for bit, name in SECURITY_BITS if value & bit]
    policy = REDIRECT_BITS[value & REDIRECT_MASK]
    return names + ([policy] if policy else [])


def security_value(names: Sequence[str]) -> int:
    """The job's flag names as bitsadmin's number (/getsecurityflags)."""
    bits = {name: bit for bit, name in SECURITY_BITS}
    bits.update({name: bit for bit, name in REDIRECT_BITS.items() if name})
    return sum(bits.get(str(n), 0) for n in names)


def _null(text: str) -> str | None:
    return None if text.upper() == "NULL" else text


def v_setproxysettings(s: Session, args: list[str]) -> int:
    """/SetProxySettings JOB USAGE [LIST [BYPASS]]: LIST and BYPASS only with OVERRIDE
    (comma- or blank-separated; NULL for none)."""
    usage = "/setproxysettings JOB PRECONFIG|AUTODETECT|NO_PROXY|OVERRIDE [LIST [BYPASS]]"
    if len(args) not in (2, 3, 4):
        raise Usage(usage)
    ref, mode = args[0], args[1].upper()
    proxies = _null(args[2]) if len(args) > 2 else None
    bypass = _null(args[3]) if len(args) > 3 else None
    s.job(ref).set_proxy_settings(mode, proxies, bypass)
    s.say(f"Proxy usage set to {mode}.")
    return EXIT_OK


def v_setcredentials(s: Session, args: list[str]) -> int:
    """/SetCredentials JOB TARGET SCHEME USERNAME PASSWORD; NULL NULL: implicit credentials
    (NTLM and NEGOTIATE answered with the caller's Kerberos ticket)."""
    ref, target, scheme, user, password = _args(
        args, 5, "/setcredentials JOB SERVER|PROXY BASIC|DIGEST|NTLM|NEGOTIATE USER PASSWORD"
    )
    s.job(ref).set_credentials(target.upper(), scheme.upper(), _null(user), _null(password))
    s.say("Credentials set.")
    return EXIT_OK


def v_removecredentials(s: Session, args: list[str]) -> int:
    ref, target, scheme = _args(args, 3, "/removecredentials JOB SERVER|PROXY SCHEME")
    removed = s.job(ref).remove_credentials(target.upper(), scheme.upper())
    s.say("Credentials removed." if removed else "No such credentials (S_FALSE).")
    return EXIT_OK


def v_setcustomheaders(s: Session, args: list[str]) -> int:
    """/SetCustomHeaders JOB HEADER…: each argument one "Name: value" line; NULL clears."""
    if len(args) < 2:
        raise Usage('/setcustomheaders JOB "NAME: VALUE" ["NAME: VALUE" …] (NULL clears)')
    ref, headers = args[0], args[1:]
    clear = len(headers) == 1 and headers[0].upper() == "NULL"
    s.job(ref).set_custom_headers(None if clear else headers)
    s.say("Custom headers cleared." if clear else f"{len(headers)} custom header(s) set.")
    return EXIT_OK


def v_setsecurityflags(s: Session, args: list[str]) -> int:
    ref, text = _args(args, 2, "/setsecurityflags JOB VALUE (BG_SSL_* | BG_HTTP_REDIRECT_* bits)")
    s.job(ref).set_http_options(security_flags=security_names(_int(text, "VALUE")))
    s.say(f"Security flags set to {text}.")
    return EXIT_OK


def v_sethttpmethod(s: Session, args: list[str]) -> int:
    ref, method = _args(args, 2, "/sethttpmethod JOB METHOD")
    s.job(ref).set_http_options(http_method=method)
    s.say(f"HTTP method set to {method}.")
    return EXIT_OK


def v_makecustomheaderswriteonly(s: Session, args: list[str]) -> int:
    (ref,) = _args(args, 1, "/makecustomheaderswriteonly JOB")
    s.job(ref).make_custom_headers_write_only()
    s.say("Custom headers are write-only.")
    return EXIT_OK


def v_setreplyfilename(s: Session, args: list[str]) -> int:
    ref, path = _args(args, 2, "/setreplyfilename JOB FILE")
    s.job(ref).set_reply_file(path)
    s.say(f"Reply file name set to {path}.")
    return EXIT_OK


def v_getreplydata(s: Session, args: list[str]) -> int:
    """The reply in hexadecimal, as bitsadmin prints it (16 bytes a line)."""
    (ref,) = _args(args, 1, "/getreplydata JOB")
    data = s.job(ref).reply_data()
    lines = [data[i : i + 16].hex(" ").upper() for i in range(0, len(data), 16)]
    s.value("\n".join(lines))
    return EXIT_OK


def _proxy(j: Job) -> dict[str, Any]:
    return j.data.get("proxy") or {"usage": "PRECONFIG", "list": None, "bypass": None}


def _reply(j: Job) -> dict[str, Any]:
    reply = j.data.get("reply")
    if reply is None:
        raise FerryError("E_NOTIMPL", "only upload-reply jobs have a reply")
    return dict(reply)


VERBS: dict[str, Handler] = {
    "/create": v_create,
    "/transfer": v_transfer,
    "/addfile": v_addfile,
    "/addfileset": v_addfileset,
    "/addfilewithranges": v_addfilewithranges,
    "/resume": _action("resume", "Job resumed."),
    "/suspend": _action("suspend", "Job suspended."),
    "/cancel": _action("cancel", "Job canceled."),
    "/complete": v_complete,
    "/takeownership": _action("takeownership", "Took ownership of the job."),
    "/reset": v_reset,
    "/info": v_info,
    "/list": v_list,
    "/listfiles": v_listfiles,
    "/monitor": v_monitor,
    "/geterror": v_geterror,
    "/getstate": _getter("/getstate JOB", lambda j: j.state.value),
    "/getbytestotal": _getter(
        "/getbytestotal JOB", lambda j: _count(j.progress.get("bytes_total"))
    ),
    "/getbytestransferred": _getter(
        "/getbytestransferred JOB", lambda j: int(j.progress.get("bytes_transferred") or 0)
    ),
    "/getfilestotal": _getter(
        "/getfilestotal JOB", lambda j: int(j.progress.get("files_total") or 0)
    ),
    "/getfilestransferred": _getter(
        "/getfilestransferred JOB", lambda j: int(j.progress.get("files_transferred") or 0)
    ),
    "/getpriority": _getter("/getpriority JOB", lambda j: j.priority.value.upper()),
    "/gettype": _getter("/gettype JOB", lambda j: j.type.value.upper()),
    "/getdisplayname": _getter("/getdisplayname JOB", lambda j: j.display_name),
    "/getdescription": _getter("/getdescription JOB", lambda j: j.description),
    "/getowner": _getter(
        "/getowner JOB", lambda j: (j.data.get("owner") or {}).get("name") or j.data["owner"]["sid"]
    ),
    "/geterrorcount": _getter("/geterrorcount JOB", lambda j: j.data.get("error_count", 0)),
    "/getminretrydelay": _getter("/getminretrydelay JOB", lambda j: j.data["min_retry_delay"]),
    "/getnoprogresstimeout": _getter(
        "/getnoprogresstimeout JOB", lambda j: j.data["no_progress_timeout"]
    ),
    "/getnotifyflags": _getter("/getnotifyflags JOB", lambda j: j.data["notify_flags"]),
    "/getnotifycmdline": _getter(
        "/getnotifycmdline JOB",
        lambda j: shlex.join(j.data["notify_cmdline"]) if j.data.get("notify_cmdline") else "",
    ),
    "/getcreationtime": _getter("/getcreationtime JOB", lambda j: j.data["times"]["created"]),
    "/getmodificationtime": _getter(
        "/getmodificationtime JOB", lambda j: j.data["times"]["modified"]
    ),
    "/getcompletiontime": _getter(
        "/getcompletiontime JOB",
        lambda j: j.data["times"]["transfer_completed"] or "WORKING",
    ),
    "/gethelpertokenflags": _getter(
        "/gethelpertokenflags JOB", lambda j: int(_tokens(j).helper_token_flags())
    ),
    "/gethelpertokensid": _getter(
        "/gethelpertokensid JOB", lambda j: _tokens(j).helper_token_sid() or ""
    ),
    "/setpriority": _setter(
        "/setpriority JOB PRIORITY", "priority", _priority, "Priority set to {value}."
    ),
    "/setdisplayname": _setter(
        "/setdisplayname JOB NAME", "display_name", str, "Display name set to {value}."
    ),
    "/setdescription": _setter(
        "/setdescription JOB DESCRIPTION", "description", str, "Description set to {value}."
    ),
    "/setminretrydelay": _setter(
        "/setminretrydelay JOB SECONDS",
        "min_retry_delay",
        lambda t: _int(t, "SECONDS"),
        "Minimum retry delay set to {value}.",
    ),  # fmt: skip
    "/setnoprogresstimeout": _setter(
        "/setnoprogresstimeout JOB SECONDS",
        "no_progress_timeout",
        lambda t: _int(t, "SECONDS"),
        "No progress timeout set to {value}.",
    ),  # fmt: skip
    "/setnotifyflags": v_setnotifyflags,
    "/setnotifycmdline": v_setnotifycmdline,
    "/setremotename": v_setremotename,
    "/replaceremoteprefix": v_replaceremoteprefix,
    "/sethelpertokenflags": v_sethelpertokenflags,
    "/setproxysettings": v_setproxysettings,
    "/getproxyusage": _getter("/getproxyusage JOB", lambda j: _proxy(j)["usage"]),
    "/getproxylist": _getter(
        "/getproxylist JOB", lambda j: ",".join(_proxy(j).get("list") or []) or "NULL"
    ),
    "/getproxybypasslist": _getter(
        "/getproxybypasslist JOB", lambda j: " ".join(_proxy(j).get("bypass") or []) or "NULL"
    ),
    "/setcredentials": v_setcredentials,
    "/removecredentials": v_removecredentials,
    "/setcustomheaders": v_setcustomheaders,
    "/getcustomheaders": _getter(
        "/getcustomheaders JOB",
        lambda j: (
            "\n".join(j.data["custom_headers"])
            if isinstance(j.data.get("custom_headers"), list)
            else j.data.get("custom_headers") or "NULL"
        ),
    ),
    "/makecustomheaderswriteonly": v_makecustomheaderswriteonly,
    "/setsecurityflags": v_setsecurityflags,
    "/getsecurityflags": _getter(
        "/getsecurityflags JOB", lambda j: security_value(j.data.get("security_flags") or [])
    ),
    "/sethttpmethod": v_sethttpmethod,
    "/gethttpmethod": _getter("/gethttpmethod JOB", lambda j: j.data.get("http_method") or "GET"),
    "/setreplyfilename": v_setreplyfilename,
    "/getreplyfilename": _getter("/getreplyfilename JOB", lambda j: _reply(j)["file"] or ""),
    "/getreplyprogress": _getter(
        "/getreplyprogress JOB",
        lambda j: _bytes_text(int(_reply(j)["bytes_transferred"] or 0), _reply(j)["bytes_total"]),
    ),
    "/getreplydata": v_getreplydata,
}
GLOBAL_SWITCHES = ("/rawreturn", "/wrap", "/nowrap")


def usage_text() -> str:
    built = sorted(v for v, h in VERBS.items() if not hasattr(h, "missing"))
    later = sorted(v for v, h in VERBS.items() if hasattr(h, "missing"))
    return (
        "Usage: ferry bitsadmin [/rawreturn] [/wrap | /nowrap] /VERB [ARGUMENTS]\n"
        "Switches are case-insensitive; JOB is a display name or a {GUID}.\n\n"
        "Verbs: "
        + " ".join(built)
        + "\n"
        + ("Not available yet: " + " ".join(later) + "\n" if later else "")
        + "See docs/bitsadmin.md for every bitsadmin verb and its ferry counterpart."
    )


def run(args: Sequence[str], client: Callable[[bool], Client]) -> int:
    """Parse and run one bitsadmin command line; returns the exit status."""
    raw, wrap = False, sys.stdout.isatty()
    rest = list(args)
    while rest and rest[0].lower() in GLOBAL_SWITCHES:
        low = rest.pop(0).lower()
        raw = raw or low == "/rawreturn"
        wrap = low == "/wrap" if low != "/rawreturn" else wrap
    if not rest or rest[0].lower() in ("/?", "/help", "-h", "--help"):
        click.echo(usage_text())
        return EXIT_OK if rest else EXIT_USAGE
    verb = rest[0].lower()
    handler = VERBS.get(verb)
    if handler is None:
        click.echo(f"Unknown bitsadmin verb {rest[0]!r}.\n\n{usage_text()}", err=True)
        return EXIT_USAGE
    if raw:
        wrap = False
    elif verb not in ("/monitor",):
        click.echo(f"ferry bitsadmin {__version__}: bitsadmin-compatible commands for ferryd.\n")
    session = Session(client, raw, wrap)
    try:
        return handler(session, rest[1:])
    except Usage as exc:
        click.echo(f"Usage: ferry bitsadmin {exc}", err=True)
        return EXIT_USAGE
    except FerryError as exc:
        action = verb.lstrip("/")
        click.echo(f"Unable to {action} - {format_hresult(exc.hresult)} ({exc.code})", err=True)
        click.echo(exc.message, err=True)
        return EXIT_ERROR


@click.command(
    name="bitsadmin",
    context_settings={"ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bitsadmin(args: tuple[str, ...]) -> None:
    """bitsadmin's syntax: ferry bitsadmin /VERB … (ferry bitsadmin /? lists the verbs)."""
    from .context import current

    c = current()
    sys.exit(run(args, lambda transfer: c.client(transfer=transfer)))
