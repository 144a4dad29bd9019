"""nginx as the real-world peer: a 64 MiB download, resume with Range + If-Range against
nginx's own ETag and Last-Modified handling, and a file that changes on the server while a
download of it is suspended."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import pytest
from harness import nginx
from harness.ferryd import Daemon
from harness.wait import wait_state, wait_until

from tests.helpers.jobs import (
    act,
    add,
    assert_error,
    create,
    files,
    get,
    only_temp,
    temps,
)

MiB = 1 << 20
SIZE = 64 * MiB
RATE = 64 * MiB

pytestmark = pytest.mark.skipif(not nginx.available(), reason=f"nginx not found ({nginx.NGINX})")


@pytest.fixture(scope="module")
def www(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("www")
    (root / "data.bin").write_bytes(os.urandom(SIZE))
    return root


@pytest.fixture(scope="module")
def web(www: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[nginx.Nginx]:
    server = nginx.Nginx(www, tmp_path_factory.mktemp("nginx"), rate=RATE)
    server.start()
    yield server
    server.stop()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def suspended_midway(ferryd: Daemon, url: str, local: Path) -> tuple[str, int]:
    """A job that got part of ``url`` and was suspended; returns it and its durable bytes."""
    job = create(ferryd, local.name)
    add(ferryd, job, url, local)
    act(ferryd, job, "resume")
    wait_until(lambda: get(ferryd, job)["progress"]["bytes_transferred"] >= 8 * MiB, "progress")
    body = act(ferryd, job, "suspend")
    assert body["job"]["state"] == "SUSPENDED"
    done = int(body["job"]["progress"]["bytes_transferred"])
    assert 0 < done < SIZE and only_temp(local.parent).stat().st_size >= done
    return job, done


def test_download_64_mib(ferryd: Daemon, web: nginx.Nginx, www: Path, dest: Path) -> None:
    data = (www / "data.bin").read_bytes()
    before = len(web.requests())
    job = create(ferryd, "plain")
    add(ferryd, job, web.url("data.bin"), dest / "data.bin", sha256=sha(data))
    act(ferryd, job, "resume")
    j = wait_state(ferryd, job, "TRANSFERRED", "ERROR", "TRANSIENT_ERROR")
    assert j["state"] == "TRANSFERRED", j
    assert files(ferryd, job)[0]["bytes_total"] == SIZE
    assert act(ferryd, job, "complete")["result"]["code"] == "S_OK"
    assert (dest / "data.bin").read_bytes() == data
    assert temps(dest) == []
    (req,) = web.wait_requests(before, 1)
    assert req.uri == "/f/data.bin"
    assert (req.range, req.status, req.body_bytes) == (None, 200, SIZE)


@pytest.mark.parametrize("route", ["slow", "slow-lm"])
def test_resume_with_ranges(
    ferryd: Daemon, web: nginx.Nginx, www: Path, dest: Path, route: str
) -> None:
    """``slow``: If-Range carries nginx's ETag; ``slow-lm`` (no ETag): its Last-Modified."""
    source = www / "data.bin"
    url, local = web.url("data.bin", route=route), dest / "data.bin"
    before = len(web.requests())
    job, done = suspended_midway(ferryd, url, local)
    act(ferryd, job, "resume")
    j = wait_state(ferryd, job, "TRANSFERRED", "ERROR", "TRANSIENT_ERROR")
    assert j["state"] == "TRANSFERRED", j
    first, second = web.wait_requests(before, 2)
    assert first.range is None
    assert (second.range, second.status, second.body_bytes) == (f"bytes={done}-", 206, SIZE - done)
    st = source.stat()
    if route == "slow":
        assert second.if_range == f'"{int(st.st_mtime):x}-{st.st_size:x}"'
    else:
        assert second.if_range == formatdate(int(st.st_mtime), usegmt=True)
    assert only_temp(dest).read_bytes() == source.read_bytes()
    act(ferryd, job, "complete")
    assert local.read_bytes() == source.read_bytes()


def test_file_changed_on_the_server_while_suspended(
    ferryd: Daemon, web: nginx.Nginx, www: Path, dest: Path
) -> None:
    source = www / "changing.bin"
    source.write_bytes(os.urandom(SIZE))
    url, local = web.url("changing.bin", slow=True), dest / "changing.bin"
    before = len(web.requests())
    job, _ = suspended_midway(ferryd, url, local)
    new = os.urandom(SIZE)  # same size, new content, a later mtime: a new ETag
    source.write_bytes(new)
    later = time.time() + 10
    os.utime(source, (later, later))
    act(ferryd, job, "resume")
    j = wait_state(ferryd, job, "ERROR", "TRANSFERRED", "TRANSIENT_ERROR")
    assert_error(j, "ERROR BG_E_REMOTE_FILE_CHANGED 0x80200073 REMOTE_FILE", url, local)
    assert only_temp(dest).stat().st_size == 0
    reqs = web.wait_requests(before, 2)
    assert reqs[1].if_range and reqs[1].range
    assert reqs[1].status == 200, "If-Range did not match: nginx sent the whole new file"
    act(ferryd, job, "resume")
    j = wait_state(ferryd, job, "TRANSFERRED", "ERROR", "TRANSIENT_ERROR")
    assert j["state"] == "TRANSFERRED", j
    act(ferryd, job, "complete")
    assert local.read_bytes() == new
