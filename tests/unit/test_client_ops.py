"""The client's pure parts: routes and bodies, response interpretation, the SSE parser,
socket resolution; plus the sync transport's keep-alive/reconnect logic against a stub
server (no ferryd needed)."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry import FerryError, JobState, JobType, NotifyFlags, Priority
from ferry.client import _ops, sse, views
from ferry.client._ops import DaemonUnavailable
from ferry.client.sockets import SYSTEM_SOCKET, locate_socket, user_socket
from ferry.client.sse import Event, SSEMessage, SSEParser
from ferry.client.sync import Client

# ---- routes and bodies -------------------------------------------------------------------


def test_create_job_body_uses_wire_spellings() -> None:
    call = _ops.create_job("n", JobType.UPLOAD_REPLY, Priority.FOREGROUND, "d")
    assert (call.method, call.target) == ("POST", "/v1/jobs")
    assert call.body is not None
    assert json.loads(call.body) == {
        "display_name": "n",
        "type": "upload-reply",
        "priority": "foreground",
        "description": "d",
    }
    assert call.headers["Content-Type"] == "application/json"


def test_job_names_are_quoted_in_paths() -> None:
    assert _ops.get_job("my job/1?x").target == "/v1/jobs/my%20job%2F1%3Fx"
    assert _ops.list_files("a").target == "/v1/jobs/a/files"
    assert _ops.action("a", "take-ownership").target == "/v1/jobs/a/take-ownership"
    with pytest.raises(FerryError) as e:
        _ops.get_job("")
    assert e.value.code == "E_INVALIDARG"


def test_list_and_events_queries() -> None:
    assert _ops.list_jobs().target == "/v1/jobs"
    assert _ops.list_jobs(all_users=True).target == "/v1/jobs?all_users=true"
    assert _ops.events_target() == "/v1/events"
    assert _ops.events_target("J 1", True) == "/v1/events?job=J+1&all_users=true"


def test_add_files_makes_local_names_absolute_but_not_remotes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    call = _ops.add_files("j", [("http://h/a", "a.bin"), ("/etc/passwd", tmp_path / "b")])
    assert call.body is not None
    files = json.loads(call.body)["files"]
    assert files == [
        {"remote_name": "http://h/a", "local_name": str(tmp_path / "a.bin")},
        {"remote_name": "/etc/passwd", "local_name": str(tmp_path / "b")},
    ]


@pytest.mark.parametrize(
    "bad", [[], [("only-one",)], [("r", "l\x00x")], [("r", "/l", "00" * 32, "extra")]]
)
def test_add_files_rejects_bad_input(bad: list[tuple[str, ...]]) -> None:
    with pytest.raises(FerryError) as e:
        _ops.add_files("j", bad)  # type: ignore[arg-type]
    assert e.value.code == "E_INVALIDARG"


def test_set_job_normalizes_and_refuses_unknown_properties() -> None:
    call = _ops.set_job(
        "j",
        {
            "priority": Priority.LOW,
            "notify_flags": NotifyFlags.JOB_TRANSFERRED | NotifyFlags.FILE_TRANSFERRED,
            "notify_cmdline": "/bin/echo 'hello world'",
        },
    )
    assert call.method == "PATCH"
    assert call.body is not None
    assert json.loads(call.body) == {
        "priority": "low",
        "notify_flags": 0x11,
        "notify_cmdline": ["/bin/echo", "hello world"],
    }
    cleared = _ops.set_job("j", {"notify_cmdline": ""})
    assert cleared.body is not None
    assert json.loads(cleared.body) == {"notify_cmdline": None}
    with pytest.raises(FerryError) as e:
        _ops.set_job("j", {"colour": "red"})
    assert e.value.code == "E_INVALIDARG"


# ---- responses ----------------------------------------------------------------------------


def test_error_responses_become_ferry_errors() -> None:
    body = json.dumps(
        {"error": {"code": "BG_E_INVALID_STATE", "hresult": "0x80200002", "message": "no"}}
    ).encode()
    with pytest.raises(FerryError) as e:
        _ops.get_job("j").finish(409, body)
    assert (e.value.code, e.value.hresult, e.value.message) == (
        "BG_E_INVALID_STATE",
        0x80200002,
        "no",
    )


def test_non_json_error_is_e_fail() -> None:
    with pytest.raises(FerryError) as e:
        _ops.status().finish(502, b"<html>bad gateway</html>")
    assert e.value.code == "E_FAIL"
    assert "502" in e.value.message


def test_action_result_and_lists() -> None:
    job = {"id": "x", "state": "ACKNOWLEDGED"}
    raw = json.dumps(
        {"result": {"code": "BG_S_PARTIAL_COMPLETE", "hresult": "0x00200017"}, "job": job}
    ).encode()
    assert _ops.action("x", "complete").finish(200, raw) == ("BG_S_PARTIAL_COMPLETE", job)
    assert _ops.list_jobs().finish(200, b'{"jobs": [{"id": "a"}]}') == [{"id": "a"}]
    with pytest.raises(FerryError):
        _ops.list_jobs().finish(200, b'{"nope": 1}')


def test_daemon_unavailable_is_an_e_fail_naming_the_socket() -> None:
    e = DaemonUnavailable("/run/x.sock")
    assert isinstance(e, FerryError)
    assert e.code == "E_FAIL" and e.hresult == 0x80004005
    assert "ferryd is not running at /run/x.sock" in e.message


# ---- SSE ------------------------------------------------------------------------------------

STREAM = (
    b": ready\n\n"
    b'event: job-snapshot\ndata: {"type": "job-snapshot", "job_id": "a", "job": {"id": "a",'
    b' "state": "SUSPENDED"}}\n\n'
    b'event: job-modification\r\ndata: {"type": "job-modification",\r\n'
    b'data: "job_id": "a", "job": {"id": "a", "state": "QUEUED"}}\r\n\r\n'
    b"event: x\rdata: 1\r\r"
    b": keepalive\n\n"
)


def _parse_in_chunks(data: bytes, size: int) -> list[SSEMessage]:
    p = SSEParser()
    out: list[SSEMessage] = []
    for i in range(0, len(data), size):
        out.extend(p.feed(data[i : i + size]))
    return out


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
def test_sse_parser_any_split(size: int) -> None:
    msgs = _parse_in_chunks(STREAM, size)
    assert [m.event for m in msgs] == ["job-snapshot", "job-modification", "x"]
    assert msgs[2].data == "1"
    assert json.loads(msgs[1].data)["job"]["state"] == "QUEUED"  # multi-line data joined


def test_sse_parser_line_api_and_bom() -> None:
    p = SSEParser()
    assert p.feed_line("\ufeffevent: e\n") is None
    assert p.feed_line("data:no-space") is None
    assert p.feed_line("id: 7") is None
    assert p.feed_line("") == SSEMessage("e", "no-space", "7")
    assert p.feed_line("") is None  # an empty event is not dispatched


def test_events_from_messages() -> None:
    events = sse.events_from(_parse_in_chunks(STREAM, 5))
    assert [(e.type, e.job_id, e.state) for e in events] == [
        ("job-snapshot", "a", JobState.SUSPENDED),
        ("job-modification", "a", JobState.QUEUED),
    ]
    # Unknown shapes are skipped, not fatal; the SSE name stands in for a missing type.
    assert Event.from_message(SSEMessage("m", "[1]")) is None
    ev = Event.from_message(SSEMessage("job-removed", '{"job": {"id": "b"}}'))
    assert ev is not None and (ev.type, ev.job_id) == ("job-removed", "b")


def test_job_view_observe_decides_when_wait_ends() -> None:
    view = views.JobView({"id": "a", "state": "QUEUED"})

    def ev(kind: str, state: str) -> Event:
        return Event(kind, "a", {"id": "a", "state": state})

    assert view._observe(ev("job-modification", "TRANSFERRING")) is None
    assert view._observe(ev("job-modification", "TRANSIENT_ERROR")) is None
    assert view._observe(Event("job-modification", "other", {"id": "other"})) is None
    assert view._observe(ev("job-transferred", "TRANSFERRED")) is JobState.TRANSFERRED
    assert view.state is JobState.TRANSFERRED
    gone = views.JobView({"id": "a", "state": "SUSPENDED"})
    with pytest.raises(FerryError) as e:
        gone._observe(Event("job-removed", "a", None))
    assert e.value.code == "BG_E_NOT_FOUND"


# ---- socket resolution ------------------------------------------------------------------


def test_socket_resolution_order(tmp_path: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    assert locate_socket("/x.sock", {**env, "FERRY_SOCKET": "/y"}).path == "/x.sock"
    choice = locate_socket(None, {**env, "FERRY_SOCKET": "/y"})
    assert (choice.path, choice.source, choice.explicit) == ("/y", "environment", True)
    # No user daemon socket yet: the system socket.
    choice = locate_socket(None, {**env, "FERRY_SOCKET": ""})
    assert (choice.path, choice.source, choice.explicit) == (SYSTEM_SOCKET, "system", False)
    user = tmp_path / "ferry" / "ferryd.sock"
    user.parent.mkdir()
    user.touch()
    choice = locate_socket(None, env)
    assert (choice.path, choice.source) == (str(user), "user")


def test_user_socket_default_runtime_dir() -> None:
    assert user_socket({}) == f"/run/user/{os.getuid()}/ferry/ferryd.sock"


def test_client_reads_ferry_socket_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_SOCKET", "/nonexistent/ferry.sock")
    c = Client()
    assert c.socket == "/nonexistent/ferry.sock"
    with pytest.raises(FerryError) as e:
        c.status()
    assert e.value.code == "E_FAIL"
    assert "ferryd is not running at /nonexistent/ferry.sock" in e.value.message


# ---- the sync transport against a stub server ------------------------------------------


class StubServer:
    """Answers every request with 200 and a JSON body counting requests; closes each
    connection after ``per_conn`` answers *without* saying so (no Connection: close), the
    way an idle timeout or a restarted daemon looks to a kept-alive client."""

    def __init__(self, path: str, per_conn: int) -> None:
        self.path = path
        self.per_conn = per_conn
        self.requests = 0
        self.connections = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn, conn.makefile("rb") as f:
                for _ in range(self.per_conn):
                    line = f.readline()
                    if not line:
                        break
                    length = 0
                    while (h := f.readline()) not in (b"\r\n", b""):
                        if h.lower().startswith(b"content-length:"):
                            length = int(h.split(b":")[1])
                    f.read(length)
                    self.requests += 1
                    body = json.dumps({"n": self.requests}).encode()
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                    )

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[StubServer]:
    server = StubServer(str(tmp_path / "s.sock"), per_conn=2)
    yield server
    server.close()


def test_sync_client_keeps_alive_and_reconnects_once(stub: StubServer) -> None:
    with Client(stub.path, timeout=5) as c:
        answers = [c.status()["n"] for _ in range(5)]
    assert answers == [1, 2, 3, 4, 5]
    assert stub.connections == 3  # two requests per connection, then a silent close
