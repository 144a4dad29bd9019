"""Progress is durable (SPEC §3): a 200 MiB download from nginx (rate-limited, so the test
acts in the middle of it) survives ``kill -9`` of ferryd, a clean restart and a
suspend/resume. Each time the next request asks for a range that starts at or below what
was on disk and at or above what ferryd had announced, so at most one checkpoint window of
bytes is fetched again; the finished file has the right SHA-256, and a completed file is
never truncated by a crash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import nginx
from harness.ferryd import Daemon
from harness.wait import wait_state, wait_until

from ferry.transfer.engine import CHECKPOINT_BYTES
from tests.helpers.jobs import act, add, create, get, only_temp, temps

MiB = 1 << 20
SIZE = 200 * MiB
RATE = 64 * MiB  # bytes per second per connection: a 200 MiB transfer takes ~3 s
STOP_AT = 40 * MiB  # act once ferryd has announced this much
# One checkpoint's worth of bytes, plus what may arrive while its fsync runs and one read
# chunk: the most that may be on disk but not yet announced as durable.
WINDOW = CHECKPOINT_BYTES + 4 * MiB

pytestmark = pytest.mark.skipif(not nginx.available(), reason=f"nginx not found ({nginx.NGINX})")


def sha_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    www = tmp_path_factory.mktemp("www")
    path = www / "big.bin"
    block = hashlib.sha256(b"ferry").digest() * (MiB // 32)
    with open(path, "wb") as f:
        for i in range(SIZE // MiB):
            f.write(i.to_bytes(4, "big") + block[4:])  # every MiB differs
    return path, sha_file(path)


@pytest.fixture(scope="module")
def web(big: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[nginx.Nginx]:
    server = nginx.Nginx(big[0].parent, tmp_path_factory.mktemp("nginx"), rate=RATE)
    server.start()
    yield server
    server.stop()


def nginx_etag(path: Path) -> str:
    st = path.stat()
    return f'"{int(st.st_mtime):x}-{st.st_size:x}"'


def interrupted_download(
    ferryd: Daemon,
    web: nginx.Nginx,
    big: tuple[Path, str],
    dest: Path,
    stop: Callable[[str], int | None],
    go: Callable[[str], object],
) -> str:
    """Start the download, wait until STOP_AT bytes are announced, ``stop`` it (returning
    the bytes ferryd announced as durable at the stop, when it says), look at the disk,
    ``go`` on, and check that the transfer goes on from the checkpoint and finishes with
    the right bytes."""
    path, digest = big
    url = web.url("big.bin", slow=True)
    before = len(web.requests())
    job = create(ferryd, "big", priority="normal")
    add(ferryd, job, url, dest / "big.bin")
    act(ferryd, job, "resume")
    announced = wait_until(
        lambda: (n := get(ferryd, job)["progress"]["bytes_transferred"]) >= STOP_AT and n,
        "the first checkpoints",
    )
    reported = stop(job)
    on_disk = only_temp(dest).stat().st_size
    go(job)
    announced = max(announced, reported or 0)
    assert STOP_AT <= announced <= on_disk < SIZE, "announced bytes are on disk"

    done = wait_state(ferryd, job, "TRANSFERRED", "ERROR", "TRANSIENT_ERROR", timeout=60)
    assert done["state"] == "TRANSFERRED", done
    assert done["error_count"] == 0
    first, second, *more = web.wait_requests(before, 2)
    assert not more, "one request after the interruption"
    assert first.uri == second.uri == "/slow/big.bin"
    assert first.range is None and first.status == 200
    assert second.status == 206
    assert second.if_range == nginx_etag(path)
    assert second.range is not None and second.range.startswith("bytes=")
    start = int(second.range.removeprefix("bytes=").removesuffix("-"))
    assert announced <= start <= on_disk, (announced, start, on_disk)
    assert on_disk - start <= WINDOW, f"{on_disk - start} bytes fetched again"
    assert second.body_bytes == SIZE - start
    temp = only_temp(dest)
    assert temp.stat().st_size == SIZE and sha_file(temp) == digest
    return job


def publish(ferryd: Daemon, job: str, dest: Path, digest: str) -> None:
    assert act(ferryd, job, "complete")["result"]["code"] == "S_OK"
    assert sha_file(dest / "big.bin") == digest
    assert temps(dest) == []


def test_kill_9_mid_transfer_resumes_from_the_checkpoint(
    ferryd: Daemon, web: nginx.Nginx, big: tuple[Path, str], dest: Path
) -> None:
    # The job was TRANSFERRING: the new ferryd queues it again at once.
    job = interrupted_download(
        ferryd, web, big, dest, lambda job: ferryd.kill(), lambda job: ferryd.start()
    )
    # A crash after the transfer loses nothing either, nor does one after complete.
    temp = only_temp(dest)
    ferryd.kill()
    ferryd.start()
    assert get(ferryd, job)["state"] == "TRANSFERRED"
    assert temp.stat().st_size == SIZE and sha_file(temp) == big[1]
    publish(ferryd, job, dest, big[1])
    ferryd.kill()
    ferryd.start()
    assert get(ferryd, job)["state"] == "ACKNOWLEDGED"
    assert sha_file(dest / "big.bin") == big[1] and temps(dest) == []


def test_clean_restart_mid_transfer_resumes_from_the_checkpoint(
    ferryd: Daemon, web: nginx.Nginx, big: tuple[Path, str], dest: Path
) -> None:
    def stop(job: str) -> None:
        assert ferryd.stop() == 0, ferryd.log()

    job = interrupted_download(ferryd, web, big, dest, stop, lambda job: ferryd.start())
    publish(ferryd, job, dest, big[1])


def test_suspend_and_resume_mid_transfer(
    ferryd: Daemon, web: nginx.Nginx, big: tuple[Path, str], dest: Path
) -> None:
    def suspend(job: str) -> int:
        body = act(ferryd, job, "suspend")
        assert body["job"]["state"] == "SUSPENDED"
        return int(body["job"]["progress"]["bytes_transferred"])

    def resume(job: str) -> None:
        assert act(ferryd, job, "resume")["job"]["state"] in ("QUEUED", "CONNECTING")

    job = interrupted_download(ferryd, web, big, dest, suspend, resume)
    publish(ferryd, job, dest, big[1])


def test_cancel_mid_transfer_leaves_no_temporary_file(
    ferryd: Daemon, web: nginx.Nginx, dest: Path
) -> None:
    job = create(ferryd, "cancel")
    add(ferryd, job, web.url("big.bin", slow=True), dest / "big.bin")
    act(ferryd, job, "resume")
    wait_until(lambda: get(ferryd, job)["progress"]["bytes_transferred"] > 0, "progress")
    assert act(ferryd, job, "cancel")["job"]["state"] == "CANCELLED"
    assert list(dest.iterdir()) == []
