"""``ferry transfer``: the ``bitsadmin /transfer`` of ferry — create, add, resume, follow
with a live progress bar, complete on success.

The progress bar is driven by the job's event stream (ferryd publishes every durable
progress step, at most every ``min_notification_interval_ms``), so it costs no polling, and
it is drawn without rich (``progress.py``), once per event. The bar goes to stderr, leaving
stdout for the result. A failure leaves the job in place for ``ferry resume``; Ctrl-C
cancels it, because an interactive transfer the user abandoned should not linger in the
queue.
"""

from __future__ import annotations

import json
import os
import posixpath
import sys
import time
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

from ..client.sync import Client, Job
from ..errors import FerryError, hresult_of
from ..model.types import JobState, Priority
from .context import partial_complete_text, retry_text

EXIT_INTERRUPTED = 130


def run_transfer(
    client: Client,
    pairs: Sequence[tuple[str, str]],
    name: str,
    priority: Priority,
    json_mode: bool,
    props: dict[str, Any] | None = None,
) -> int:
    """Returns the exit status. FerryErrors from the set-up calls propagate to the CLI's
    uniform error report, after the half-made job has been cancelled."""
    pairs = [(remote, destination(remote, local)) for remote, local in pairs]
    job = client.create_job(name, priority=priority)
    try:
        try:
            if props:
                job.set(**props)
            job.add_files(pairs)
            job.resume()
        except FerryError:
            with suppress(FerryError):
                job.cancel()
            raise
        started = time.monotonic()
        if json_mode:
            final = job.wait()
        elif sys.stderr.isatty():
            final = _follow(job)
        else:
            final = _follow_lines(job)
    except KeyboardInterrupt:
        with suppress(FerryError):
            job.cancel()
        if json_mode:
            _emit({"error": _interrupted().to_json()["error"], "job": job.data})
        print(f"Interrupted: job {job.id} cancelled.", file=sys.stderr)
        return EXIT_INTERRUPTED
    elapsed = time.monotonic() - started

    if final is JobState.TRANSFERRED:
        code = job.complete()
        return _report_done(job, code, elapsed, json_mode)
    if final is JobState.ACKNOWLEDGED:  # someone else completed it meanwhile
        return _report_done(job, "S_OK", elapsed, json_mode)
    return _report_failed(job, final, json_mode)


def destination(remote: str, local: str) -> str:
    """``ferry transfer URL DIR`` (or ``DIR/``) writes into DIR under the file's name in the
    URL, as ``curl -O`` and ``wget`` do. Only ``transfer`` does this; ``ferry add`` takes a
    local name as given, and ferryd refuses one that is a directory."""
    if not (local.endswith("/") or os.path.isdir(local)):
        return local
    from urllib.parse import unquote, urlsplit

    name = unquote(posixpath.basename(urlsplit(remote).path))
    if name in ("", ".", "..") or "/" in name or "\x00" in name:
        raise FerryError(
            "E_INVALIDARG",
            f"{local} is a directory and {remote} names no file in it: give the local file name",
        )
    return os.path.join(local, name)


def _interrupted() -> FerryError:
    return FerryError("E_FAIL", "interrupted; the job was cancelled")


def _emit(doc: Any) -> None:
    print(json.dumps(doc, indent=2))


def status_line(job: dict[str, Any]) -> str:
    """One line for a state the job entered; for a TRANSIENT_ERROR, the error, which try
    comes next and when."""
    state = str(job.get("state", ""))
    err = job.get("error")
    if state == JobState.TRANSIENT_ERROR.value and isinstance(err, dict):
        tries = int(job.get("error_count") or 0) + 1
        line = f"transient error {err.get('code')} (try {tries})"
        retry = retry_text(job)
        if retry:
            line += f": {retry}"
        return f"{line} — {err.get('description', '')}"
    p = job.get("progress") or {}
    return f"{state.lower()} ({p.get('files_transferred', 0)}/{p.get('files_total', 0)} files)"


def _follow_lines(job: Job) -> JobState:
    """Not on a terminal (a log, a pipe, a CI job): one line on stderr per state change, so
    a retry that waits minutes reads as a retry, not a hang; no progress bar."""
    last: tuple[Any, ...] = ()
    for ev in job.follow():
        key = (job.state, job.data.get("error_count"), job.data.get("retry_at"))
        if key != last:
            last = key
            print(status_line(job.data), file=sys.stderr, flush=True)
        done = job._observe(ev)
        if done is not None:
            return done
    raise AssertionError("unreachable")  # pragma: no cover


def _follow(job: Job) -> JobState:
    """Follow the job's events with a progress bar until it is TRANSFERRED, ERROR or final.
    TRANSIENT_ERROR is shown with the try that comes next and when, and waited out: ferryd
    retries by itself, as BITS does. The bar (``progress.Bar``, no rich) is redrawn once
    per event and never in between."""
    from .progress import DIM, YELLOW, Bar

    bar = Bar(sys.stderr, job.display_name)
    try:
        for ev in job.follow():
            p = job.progress
            total = p.get("bytes_total")
            note, sgr = "", ""
            if job.state is JobState.TRANSIENT_ERROR and job.error:
                tries = int(job.data.get("error_count") or 0) + 1
                retry = retry_text(job.data, countdown=False) or "retrying"
                note, sgr = f"{job.error.get('code')} (try {tries}): {retry}", YELLOW
            elif job.state in (JobState.QUEUED, JobState.CONNECTING):
                note, sgr = job.state.value.lower(), DIM
            bar.update(
                int(p.get("bytes_transferred") or 0),
                total if isinstance(total, int) else None,
                f"{p.get('files_transferred', 0)}/{p.get('files_total', 0)} files",
                note,
                sgr,
            )
            done = job._observe(ev)
            if done is not None:
                return done
    finally:
        bar.close()
    raise AssertionError("unreachable")  # pragma: no cover


def _report_done(job: Job, code: str, elapsed: float, json_mode: bool) -> int:
    if json_mode:
        _emit({"result": {"code": code, "hresult": f"0x{hresult_of(code):08X}"}, "job": job.data})
        return 0
    from .table import decimal

    p = job.progress
    total = int(p.get("bytes_transferred") or 0)
    rate = f", {decimal(int(total / elapsed))}/s" if elapsed > 0 else ""
    print(f"Transferred {decimal(total)} in {elapsed:.1f} s{rate}. Files:")
    for f in job.files():
        mark = "" if f.completed else "   (not transferred)"
        print(f"  {f.local_name}{mark}")
    if code == "BG_S_PARTIAL_COMPLETE":
        print(f"{code}: {partial_complete_text(job.data)}", file=sys.stderr)
    elif code != "S_OK":
        print(f"{code}", file=sys.stderr)
    return 0


def _report_failed(job: Job, final: JobState, json_mode: bool) -> int:
    err = job.error
    if err is not None:
        code = str(err.get("code"))
        hres = str(err.get("hresult"))
        message = str(err.get("description", ""))
        f = err.get("file")
        if isinstance(f, dict):
            message += f" [{f.get('remote_name')} -> {f.get('local_name')}]"
    else:
        code, message = "BG_E_INVALID_STATE", f"the job was {final.value}"
        hres = f"0x{hresult_of(code):08X}"
    if json_mode:
        _emit({"error": {"code": code, "hresult": hres, "message": message}, "job": job.data})
    print(f"{code} ({hres}): {message}", file=sys.stderr)
    if final is JobState.ERROR:
        print(
            f"The job {job.id} is kept with what it transferred: fix the cause, then "
            f"`ferry resume {job.id}` (or `ferry cancel {job.id}`).",
            file=sys.stderr,
        )
    return 1
