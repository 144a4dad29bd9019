"""Driving a real ferryd through its raw API in transfer tests: create, add, act, and look
at what is on disk (waiting for a state is harness.wait.wait_state)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from harness.ferryd import Daemon

TEMP_SUFFIX = ".ferry-part"


def create(d: Daemon, name: str = "job", **props: Any) -> str:
    """A new job (foreground unless told: it starts at once); ``props`` are PATCHed."""
    body = {"display_name": name, "priority": props.pop("priority", "foreground")}
    status, job = d.call("POST", "/v1/jobs", body)
    assert status == 201, job
    if props:
        status, job = d.call("PATCH", f"/v1/jobs/{job['id']}", props)
        assert status == 200, job
    return str(job["id"])


def add(d: Daemon, job: str, remote: str, local: Path | str, sha256: str | None = None) -> Any:
    item: dict[str, Any] = {"remote_name": remote, "local_name": str(local)}
    if sha256 is not None:
        item["sha256"] = sha256
    status, body = d.call("POST", f"/v1/jobs/{job}/files", {"files": [item]})
    assert status == 200, body
    return body


def act(d: Daemon, job: str, action: str) -> dict[str, Any]:
    status, body = d.call("POST", f"/v1/jobs/{job}/{action}", {})
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def get(d: Daemon, job: str) -> dict[str, Any]:
    status, body = d.call("GET", f"/v1/jobs/{job}")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def files(d: Daemon, job: str) -> list[dict[str, Any]]:
    status, body = d.call("GET", f"/v1/jobs/{job}/files")
    assert status == 200, body
    return body["files"]  # type: ignore[no-any-return]


def temps(directory: Path) -> list[Path]:
    """The hidden temporary files of downloads in ``directory``."""
    return sorted(p for p in directory.iterdir() if p.name.endswith(TEMP_SUFFIX))


def only_temp(directory: Path) -> Path:
    found = temps(directory)
    assert len(found) == 1, found
    return found[0]


def when(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def assert_error(
    job: dict[str, Any],
    expected: str,
    remote: str | None = None,
    local: Path | str | None = None,
) -> None:
    """The job's state and error as SPEC §2.3 describes them; ``expected`` is
    "STATE CODE HRESULT CONTEXT", e.g. "ERROR BG_E_HTTP_ERROR_404 0x80190194 REMOTE_FILE"."""
    state, code, hresult, context = expected.split()
    assert job["state"] == state, job
    err = job["error"]
    assert err is not None, job
    assert (err["code"], err["hresult"], err["context"]) == (code, hresult, context), err
    assert err["description"]
    if remote is not None:
        assert err["file"] == {"remote_name": remote, "local_name": str(local)}, err


def cancel_all(d: Daemon, ids: Iterable[str]) -> None:
    for job in ids:
        status, body = d.call("GET", f"/v1/jobs/{job}")
        if status == 200 and body["state"] not in ("ACKNOWLEDGED", "CANCELLED"):
            d.call("POST", f"/v1/jobs/{job}/cancel", {})


def owned_dir(path: Path, uid: int, mode: int) -> Path:
    """A directory owned by ``uid`` (and its same-numbered group) with ``mode``."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, uid, uid)
    os.chmod(path, mode)
    return path
