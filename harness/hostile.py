"""Phase 2 of the torture run: hostile requests against ferryd's API.

schemathesis fuzzes every operation of /v1/openapi.json (positive and negative cases)
through a TCP->Unix forwarder; raw malformed HTTP and JSON go straight to the socket;
hand-written path and symlink attacks try to make ferryd write where the caller may not.
As root, ferryd runs in system mode and the attacker is ``nobody``. Checks: never a 500,
ferryd never dies, jobs that existed before are unchanged, /etc and a root-owned sentinel
file are untouched. ``fuzz_phase`` is the entry point (torture.py and the short test).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from harness.env import say
from harness.faultserver import FaultServer
from harness.ferryd import Daemon, api_call, status_ok
from harness.files import KIB, MIB, make_file, sha256_file
from harness.report import Report
from harness.wait import wait_state

NOBODY = 65534  # the attacker's uid when the run is root



class Forwarder:
    """127.0.0.1:PORT -> ferryd's Unix socket, for HTTP clients that only speak TCP; each
    upstream connection is made as ``identity`` (uid, gid) when given (root only)."""

    def __init__(self, unix_path: str, identity: tuple[int, int] | None) -> None:
        self.unix_path = unix_path
        self.identity = identity
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self._closing = False
        self._thread = threading.Thread(target=self._accept, name="forwarder", daemon=True)

    def start(self) -> Forwarder:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()

    def upstream(self) -> tuple[socket.socket, Callable[[], None]]:
        return connect(self.unix_path, self.identity)

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            up, release = self.upstream()
        except OSError:
            client.close()
            return
        t = threading.Thread(target=_pump, args=(up, client), daemon=True)
        t.start()
        _pump(client, up)
        t.join(30)
        client.close()
        release()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def connect(
    path: str, identity: tuple[int, int] | None
) -> tuple[socket.socket, Callable[[], None]]:
    """A Unix-socket connection to ferryd, as ``identity`` when given (via ferry's own
    impersonation helper: a forked child connects and passes the socket back)."""
    if identity is None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        return s, s.close
    from ferry.client.impersonation import Identity, connect_as

    imp = connect_as(Identity(identity[0], identity[1], ()), path, timeout=10)
    imp.sock.settimeout(None)
    return imp.sock, imp.close


@contextlib.contextmanager
def as_identity(identity: tuple[int, int] | None) -> Iterator[None]:
    if identity is None:
        yield
        return
    import ferry

    with ferry.impersonate(identity[0], identity[1], []):
        yield


def snapshot_tree(root: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every entry under ``root``: (mode, size, mtime_ns, inode), without following links."""
    snap: dict[str, tuple[int, int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            snap[p] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino)
    return snap


def raw_exchange(path: str, identity: tuple[int, int] | None, data: bytes,
                 timeout: float = 10.0, half_close: bool = False) -> bytes:
    """Send raw bytes to ferryd's socket and read until it closes (or times out). With
    ``half_close`` the sending side is shut down after the data (for requests that are
    incomplete on purpose; a server may then close without answering)."""
    sock, release = connect(path, identity)
    try:
        sock.settimeout(timeout)
        with contextlib.suppress(OSError):
            sock.sendall(data)
        if half_close:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
        chunks = []
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)
    finally:
        release()


def _statuses(reply: bytes) -> list[int]:
    out = []
    for line in reply.split(b"\r\n"):
        if line.startswith(b"HTTP/1."):
            parts = line.split()
            if len(parts) > 1 and parts[1].isdigit():
                out.append(int(parts[1]))
    return out


class Hostile:
    """The attacker's side of phase 2."""

    def __init__(self, d: Daemon, report: Report, identity: tuple[int, int] | None) -> None:
        self.d = d
        self.report = report
        self.identity = identity

    def check_alive(self, after: str) -> bool:
        if not self.d.alive() or not status_ok(self.d.socket, timeout=10):
            self.report.fail(f"ferryd is gone after {after}:\n{self.d.log(3000)}")
            with contextlib.suppress(Exception):
                self.d.kill()
                self.d.start()
            return False
        return True

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """``api`` under the name harness.wait expects."""
        return self.api(method, path, body, what=f"{method} {path}")

    def api(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
            what: str = "") -> tuple[int, Any]:
        """One API call as the attacker; a 500 is a failure."""
        payload = raw if raw is not None else (
            json.dumps(body).encode() if body is not None else None
        )
        head = f"{method} {path} HTTP/1.1\r\nHost: ferryd\r\nConnection: close\r\n"
        if payload is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        reply = raw_exchange(self.d.socket, self.identity,
                             head.encode("utf-8", "surrogateescape") + b"\r\n" + (payload or b""))
        statuses = _statuses(reply)
        status = statuses[0] if statuses else 0
        self.report.raw_requests += 1
        if status >= 500 or status == 0:
            self.report.fail(f"{what or method + ' ' + path} -> {status or 'no answer'}: "
                             f"{reply[:400]!r}")
        body_part = reply.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in reply else b""
        try:
            doc = json.loads(body_part) if body_part else None
        except ValueError:
            doc = body_part
        return status, doc


def fuzz_phase(
    work: Path,
    report: Report,
    *,
    cases: int,
    seed: int,
    use_schemathesis: bool = True,
    hand_written: bool = True,
) -> None:
    """Hostile requests; see the module docstring. ``use_schemathesis`` and
    ``hand_written`` select the OpenAPI fuzzing and the raw requests + path attacks."""
    root = os.geteuid() == 0
    identity = (NOBODY, NOBODY) if root else None
    started = time.monotonic()
    who = "system-mode ferryd, attacker uid 65534" if root else "user-mode ferryd"
    say(f"phase 2: hostile API ({who})")
    d = Daemon(work / "fz", system=root, config="[daemon]\nsession_poll_interval = 1\n",
               log_level="info")
    src = work / "fz-src"
    src.mkdir(parents=True)
    os.chmod(src, 0o755)
    make_file(src / "small.bin", 20 * KIB)
    make_file(src / "slow.bin", 8 * MIB)
    arena = work / "fz-arena"  # the attacker's own directory
    arena.mkdir(parents=True)
    protected = work / "fz-protected"  # root's (or at least not the attacker's)
    protected.mkdir(parents=True)
    os.chmod(protected, 0o755)
    sentinel = protected / "sentinel"
    sentinel.write_bytes(b"do not touch\n")
    os.chmod(sentinel, 0o644)
    if root:
        os.chown(arena, NOBODY, NOBODY)
    sentinel_before = (sha256_file(sentinel), os.lstat(sentinel).st_mtime_ns)
    server = FaultServer(root=src, rate=2 * MIB).start()
    fwd: Forwarder | None = None
    d.start()
    hostile = Hostile(d, report, identity)
    try:
        bystanders = _make_bystanders(d, identity, server, protected, arena)
        before = _jobs_snapshot(d, bystanders)
        etc_before = snapshot_tree(Path("/etc"))
        fwd = Forwarder(d.socket, identity).start()
        if use_schemathesis:
            _schemathesis(fwd, d, report, cases, seed, hostile)
        hostile.check_alive("the fuzzing")
        if hand_written:
            _raw_requests(hostile)
            hostile.check_alive("the raw requests")
            _path_attacks(hostile, server, arena, protected, sentinel)
            hostile.check_alive("the path attacks")
        after = _jobs_snapshot(d, bystanders)
        for jid, doc in before.items():
            if after.get(jid) != doc:
                report.fail(f"a job that existed before the attacks changed: {jid}\n"
                            f"  before {doc}\n  after  {after.get(jid)}")
        etc_after = snapshot_tree(Path("/etc"))
        changed = sorted(
            p for p in set(etc_before) | set(etc_after) if etc_before.get(p) != etc_after.get(p)
        )
        if changed:
            report.fail(f"/etc changed during the attacks: {changed[:20]}")
        if (sha256_file(sentinel), os.lstat(sentinel).st_mtime_ns) != sentinel_before:
            report.fail(f"the root-owned sentinel {sentinel} was modified")
    finally:
        if fwd is not None:
            fwd.close()
        code = d.stop() if d.alive() else None
        if code not in (None, 0):
            report.fail(f"ferryd exited with status {code} on SIGTERM:\n{d.log(3000)}")
        server.stop()
    say(f"  {report.fuzz_cases} fuzz cases, {report.raw_requests} raw requests, "
        f"{report.attacks} path attacks, {time.monotonic() - started:.0f} s")


def _make_bystanders(
    d: Daemon, identity: tuple[int, int] | None, server: FaultServer, protected: Path,
    arena: Path,
) -> list[str]:
    """Jobs that exist before the attacks and must come out unchanged: one of the daemon
    user's (root's in system mode) and, in system mode, one of the attacker's."""
    import ferry

    ids = []
    tag = os.urandom(6).hex()
    with ferry.Client(socket=d.socket) as c:
        job = c.create_job(f"bystander-owner-{tag}", description="must not change")
        job.add_file(server.url("small.bin"), str(protected / "bystander.bin"))
        ids.append(job.id)
    if identity is not None:
        with as_identity(identity), ferry.Client(socket=d.socket) as c:
            job = c.create_job(f"bystander-attacker-{tag}")
            job.add_file(server.url("small.bin"), str(arena / "bystander.bin"))
            ids.append(job.id)
    return ids


def _jobs_snapshot(d: Daemon, ids: list[str]) -> dict[str, Any]:
    out = {}
    for jid in ids:
        status, doc = api_call(d.socket, "GET", f"/v1/jobs/{jid}")
        out[jid] = (status, doc)
    return out


def _schemathesis(
    fwd: Forwarder, d: Daemon, report: Report, cases: int, seed: int, hostile: Hostile
) -> None:
    try:
        import requests
        import schemathesis
        from hypothesis import HealthCheck, Phase, given, settings
        from hypothesis import seed as hypothesis_seed
        from schemathesis import GenerationMode
    except ImportError:
        report.note("schemathesis is not installed: OpenAPI fuzzing skipped")
        return
    status, doc = api_call(d.socket, "GET", "/v1/openapi.json")
    if status != 200 or not isinstance(doc, dict):
        report.fail(f"GET /v1/openapi.json -> {status}")
        return
    schema = schemathesis.openapi.from_dict(doc)
    ops = [r.ok() for r in schema.get_all_operations()]  # type: ignore[union-attr]
    per = max(1, cases // max(1, 2 * len(ops)))
    base = f"http://127.0.0.1:{fwd.port}"
    session = requests.Session()
    seen_500: set[str] = set()

    def send(case: Any) -> None:
        report.fuzz_cases += 1
        label = f"{case.method} {case.formatted_path}"
        # The event stream never ends: a short read timeout ends it (an error answer, the
        # only thing checked there, comes at once and whole).
        stream = case.operation.path == "/v1/events"
        try:
            resp = case.call(base_url=base, session=session, timeout=(10, 0.5 if stream else 30),
                             allow_redirects=False)
        except requests.exceptions.RequestException as exc:
            if not d.alive():
                report.fail(f"ferryd died on {label}: {exc}\n{d.log(3000)}")
                hostile.check_alive(label)
            elif not stream:
                report.fail(f"{label}: no answer: {exc!r:.200}")
            return
        status = resp.status_code
        text = resp.text[:400] if status >= 500 else ""
        if status >= 500:
            key = f"{case.method} {case.operation.path} {text[:120]}"
            if key not in seen_500:
                seen_500.add(key)
                report.fail(f"{label} -> {status}: {text} (body {case.body!r:.300}, "
                            f"query {case.query!r:.200})")

    for op in ops:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                strategy = op.as_strategy(generation_mode=mode)
            except Exception as exc:  # an operation schemathesis cannot generate for
                report.note(f"schemathesis: no {mode.value} cases for {op.label}: {exc}")
                continue

            @settings(
                max_examples=per,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @hypothesis_seed(seed)
            @given(case=strategy)
            def run(case: Any) -> None:
                send(case)

            try:
                run()
            except Exception as exc:  # generation trouble, never ferry's answer
                if type(exc).__name__ != "Unsatisfiable":  # no negative case for a bare path
                    report.note(f"schemathesis: {op.label} ({mode.value}) stopped: "
                                f"{exc!r:.300}")
        if not d.alive():
            hostile.check_alive(f"fuzzing {op.label}")
    session.close()


def _raw_requests(h: Hostile) -> None:
    """Malformed HTTP and JSON, straight to the socket."""
    sock = h.d.socket
    raw_cases: list[tuple[str, bytes]] = [
        ("garbage", b"\x00\xff\xfe GARBAGE \r\n\r\n"),
        ("no version", b"GET /v1/status\r\n\r\n"),
        ("negative length", b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"),
        ("huge length", b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999"
                        b"\r\n\r\n{}"),
        ("bad chunk", b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"zz\r\n{}\r\n0\r\n\r\n"),
        ("both lengths", b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("long path", b"GET /v1/jobs/" + b"a" * 200_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("long header", b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-A: " + b"b" * 200_000
                        + b"\r\n\r\n"),
        ("many headers", b"GET /v1/status HTTP/1.1\r\nHost: x\r\n"
                         + b"".join(b"X-%d: y\r\n" % i for i in range(5000)) + b"\r\n"),
        ("non-UTF-8 path", b"GET /v1/jobs/\xff\xfe\x80 HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("NUL in path", b"GET /v1/jobs/a%00b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        ("dot-dot path", b"GET /v1/jobs/..%2F..%2Fv1%2Fstatus HTTP/1.1\r\nHost: x\r\n"
                         b"Connection: close\r\n\r\n"),
        ("pipelined", b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n" * 50
                      + b"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        ("HTTP/1.0", b"GET /v1/status HTTP/1.0\r\n\r\n"),
        ("HTTP/9", b"GET /v1/status HTTP/9.9\r\nHost: x\r\n\r\n"),
        ("CONNECT", b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("absolute URI", b"GET http://evil/v1/status HTTP/1.1\r\nHost: evil\r\n"
                         b"Connection: close\r\n\r\n"),
    ]
    for what, data in raw_cases:
        reply = raw_exchange(sock, h.identity, data, timeout=15, half_close=True)
        h.report.raw_requests += 1
        if any(s >= 500 for s in _statuses(reply)):
            h.report.fail(f"raw request '{what}' -> {_statuses(reply)}: {reply[:300]!r}")
        h.check_alive(f"the raw request '{what}'")

    deep = b"[" * 100_000 + b"]" * 100_000
    json_cases: list[tuple[str, str, str, bytes]] = [
        ("invalid JSON", "POST", "/v1/jobs", b"{display_name: x}"),
        ("invalid UTF-8", "POST", "/v1/jobs", b'{"display_name": "\xff\xfe"}'),
        ("deep nesting", "POST", "/v1/jobs", deep),
        ("deep nesting in a field", "POST", "/v1/jobs",
         b'{"display_name": "x", "description": ' + deep + b"}"),
        ("array body", "POST", "/v1/jobs", b"[1, 2]"),
        ("huge number", "POST", "/v1/jobs", b'{"display_name": 1e999999}'),
        ("NaN", "POST", "/v1/jobs", b'{"display_name": NaN}'),
        ("duplicate keys", "POST", "/v1/jobs", b'{"display_name": "a", "display_name": 7}'),
        ("lone surrogate", "POST", "/v1/jobs", b'{"display_name": "\\ud800"}'),
        ("17 MiB body", "POST", "/v1/jobs", b'{"display_name": "' + b"x" * (17 * MIB) + b'"}'),
        ("all_users=maybe", "GET", "/v1/jobs?all_users=maybe", b""),
        ("events for nothing", "GET", "/v1/events?job=no-such-job", b""),
        ("logoff session 2**70", "POST", "/v1/logoff", b'{"session": 1180591620717411303424}'),
        ("logoff user ../..", "POST", "/v1/logoff", b'{"user": "../../etc"}'),
    ]
    for what, method, path, body in json_cases:
        h.api(method, path, raw=body if body or method != "GET" else None, what=what)
        h.check_alive(what)

    # Properties at the edges of their types, on a job of the attacker's own.
    status, job = h.api("POST", "/v1/jobs", {"display_name": "edge-" + os.urandom(4).hex()})
    if status == 201 and isinstance(job, dict):
        jid = job["id"]
        for props in (
            {"min_retry_delay": 10**400},
            {"min_retry_delay": 2**63},
            {"no_progress_timeout": 10**400},
            {"notify_flags": 2**64},
            {"priority": "\u0000"},
            {"display_name": "\udcff" * 10},
            {"notify_cmdline": ["/bin/true", "\x00"]},
            {"notify_cmdline": ["relative"]},
            {"description": "x" * 100_000},
        ):
            h.api("PATCH", f"/v1/jobs/{jid}", raw=json.dumps(props).encode(),
                  what=f"PATCH {list(props)[0]}")
        h.api("GET", f"/v1/jobs/{jid}", what="GET after edge PATCHes")
        # A huge retry delay meets a transient error: the scheduler adds it to a float clock.
        h.api("PATCH", f"/v1/jobs/{jid}", {"min_retry_delay": 10**30, "display_name": "x" + jid})
        h.api("POST", f"/v1/jobs/{jid}/files",
              {"files": [{"remote_name": "http://127.0.0.1:9/refused",
                          "local_name": "/tmp/ferry-torture-never-written"}]})
        h.api("POST", f"/v1/jobs/{jid}/resume", {})
        time.sleep(1.0)
        h.check_alive("a transient error with a huge retry delay")
        h.api("GET", f"/v1/jobs/{jid}", what="GET after the huge-delay error")
        h.api("POST", f"/v1/jobs/{jid}/cancel", {})
        for flags in (2**70, -1, 4):
            h.api("PUT", f"/v1/jobs/{jid}/helper-token/flags", {"flags": flags},
                  what=f"helper flags {flags}")
        for ttl in (0, -5, 10**20, 3601):
            h.api("POST", f"/v1/jobs/{jid}/handles", {"interface": "job", "ttl": ttl},
                  what=f"handle ttl {ttl}")


def _wait_state(h: Hostile, jid: str, states: set[str], timeout: float = 30.0) -> str:
    """The job's state once it is one of ``states``, or as last seen after ``timeout``: an
    attack goes on either way (its checks look at the state)."""
    try:
        return str(wait_state(h, jid, states, timeout=timeout, every=0.1)["state"])
    except AssertionError as exc:  # StateTimeout, or a GET that did not answer 200
        return str(getattr(exc, "last", {}).get("state", "?"))


def _path_attacks(
    h: Hostile, server: FaultServer, arena: Path, protected: Path, sentinel: Path
) -> None:
    """Local names and symlinks meant to make ferryd write where the attacker may not."""
    url = server.url("small.bin")
    tag = os.urandom(4).hex()

    def new_job(name: str) -> str | None:
        status, doc = h.api("POST", "/v1/jobs", {"display_name": f"{name}-{tag}"})
        return doc["id"] if status == 201 and isinstance(doc, dict) else None

    def add(jid: str, local: str, remote: str = url) -> int:
        h.report.attacks += 1
        status, _ = h.api(
            "POST", f"/v1/jobs/{jid}/files",
            raw=json.dumps({"files": [{"remote_name": remote, "local_name": local}]}).encode(),
            what=f"add {local[:80]!r}",
        )
        return status

    # Names that must be refused outright.
    jid = new_job("names")
    if jid:
        for local in (
            f"{arena}/../etc/ferry-torture",
            f"{arena}/a\x00b",
            "relative/name",
            "",
            f"{arena}/",
            f"{arena}/.",
            f"{arena}/" + "n" * 300,
            "/" + "d/" * 3000 + "f",
        ):
            status = add(jid, local)
            if status != 400:
                h.report.fail(f"local name {local[:60]!r} was not refused (status {status})")
        for remote in ("file:///etc/../etc/shadow", "ftp://x/y", "http://user:pw@h/x",
                       "file://remotehost/etc/passwd", "http:///nohost", "javascript:alert(1)"):
            status = add(jid, f"{arena}/r.bin", remote)
            if status != 400:
                h.report.fail(f"remote name {remote!r} was not refused (status {status})")
        h.api("POST", f"/v1/jobs/{jid}/cancel", {})

    # A non-UTF-8 name (lone surrogates = undecodable bytes): refused or written as those
    # bytes inside the arena, never anywhere else.
    jid = new_job("bytes")
    if jid and add(jid, f"{arena}/\udcff\udcfe-name.bin") in (200, 201):
        h.api("POST", f"/v1/jobs/{jid}/resume", {})
        st = _wait_state(h, jid, {"TRANSFERRED", "ERROR"})
        h.api("POST", f"/v1/jobs/{jid}/complete", {})
        if st == "TRANSFERRED" and not (arena.joinpath(os.fsdecode(b"\xff\xfe-name.bin"))).exists():
            h.report.fail("a non-UTF-8 local name was accepted but its file is not there")

    # Destination directories that are symlinks to /etc and to a root-owned directory.
    links = {"etc": Path("/etc"), "prot": protected}
    for name, target in links.items():
        link = arena / f"link-{name}"
        link.symlink_to(target)
        if os.geteuid() == 0:
            os.lchown(link, NOBODY, NOBODY)
        jid = new_job(f"symlink-dir-{name}")
        if jid is None:
            continue
        local = f"{link}/ferry-torture-{tag}"
        if add(jid, local) in (200, 201):
            h.api("POST", f"/v1/jobs/{jid}/resume", {})
            st = _wait_state(h, jid, {"TRANSFERRED", "ERROR"})
            h.api("POST", f"/v1/jobs/{jid}/complete", {})
            if st == "TRANSFERRED" and h.identity is not None:
                h.report.fail(f"a download through {link} -> {target} succeeded as uid "
                              f"{h.identity[0]}")
        if (target / f"ferry-torture-{tag}").exists() and h.identity is not None:
            h.report.fail(f"{target / f'ferry-torture-{tag}'} was written through a symlink")

    # A symlink planted at the local name: complete replaces the link, never its target.
    planted = arena / "planted.bin"
    planted.symlink_to(sentinel)
    jid = new_job("planted-local")
    if jid and add(jid, str(planted)) in (200, 201):
        h.api("POST", f"/v1/jobs/{jid}/resume", {})
        _wait_state(h, jid, {"TRANSFERRED", "ERROR"})
        h.api("POST", f"/v1/jobs/{jid}/complete", {})

    # The temporary file swapped for a symlink (and for a FIFO) while the job is suspended.
    for swap in ("symlink", "fifo", "directory"):
        jid = new_job(f"swap-{swap}")
        swapped = arena / f"swap-{swap}.bin"
        if not jid or add(jid, str(swapped), server.url("slow.bin")) not in (200, 201):
            continue
        h.api("POST", f"/v1/jobs/{jid}/resume", {})
        deadline = time.monotonic() + 20
        temps: list[Path] = []
        while time.monotonic() < deadline:
            status, doc = h.api("GET", f"/v1/jobs/{jid}")
            temps = list(arena.glob(f".{swapped.name}.*.ferry-part"))
            if temps and isinstance(doc, dict) and doc["progress"]["bytes_transferred"] > 0:
                break
            time.sleep(0.05)
        h.api("POST", f"/v1/jobs/{jid}/suspend", {})
        for temp in temps:
            temp.unlink()
            if swap == "symlink":
                temp.symlink_to(sentinel)
            elif swap == "fifo":
                os.mkfifo(temp)
            else:
                temp.mkdir()
            if os.geteuid() == 0:
                os.lchown(temp, NOBODY, NOBODY)
        h.api("POST", f"/v1/jobs/{jid}/resume", {}, what=f"resume after a {swap} swap")
        _wait_state(h, jid, {"TRANSFERRED", "ERROR"}, timeout=15)
        h.check_alive(f"the temporary file became a {swap}")
        h.api("POST", f"/v1/jobs/{jid}/complete", {}, what=f"complete after a {swap} swap")
        h.report.attacks += 1
        for temp in temps:
            if temp.is_dir() and not temp.is_symlink():
                with contextlib.suppress(OSError):
                    temp.rmdir()
            elif temp.exists() or temp.is_symlink():
                temp.unlink()

    # Sources the attacker may not read, or that are not files.
    fifo = arena / "source.fifo"
    os.mkfifo(fifo)
    if os.geteuid() == 0:
        os.chown(fifo, NOBODY, NOBODY)
    for remote in ("file:///etc/shadow", "file:///dev/zero", f"file://{fifo}",
                   f"file://{sentinel.parent}"):
        jid = new_job("source")
        if jid and add(jid, f"{arena}/from-{hashlib.sha1(remote.encode()).hexdigest()[:8]}",
                       remote) in (200, 201):
            h.api("POST", f"/v1/jobs/{jid}/resume", {})
            st = _wait_state(h, jid, {"TRANSFERRED", "ERROR"}, timeout=15)
            if st == "TRANSFERRED" and remote == "file:///etc/shadow" and h.identity is not None:
                h.report.fail("uid 65534 downloaded /etc/shadow")
            h.api("POST", f"/v1/jobs/{jid}/cancel", {})

    # Someone else's job, by id and by name.
    status, doc = api_call(h.d.socket, "GET", "/v1/jobs")  # the daemon user's own view
    if status == 200 and isinstance(doc, dict) and h.identity is not None:
        for j in doc["jobs"]:
            if j["owner"]["uid"] == h.identity[0]:
                continue
            for ref in (j["id"], j["display_name"]):
                for method, path in (("GET", f"/v1/jobs/{ref}"),
                                     ("POST", f"/v1/jobs/{ref}/cancel"),
                                     ("PATCH", f"/v1/jobs/{ref}")):
                    status, _ = h.api(method, path, {} if method != "GET" else None)
                    h.report.attacks += 1
                    if status < 400:
                        h.report.fail(f"uid {h.identity[0]}: {method} {path} -> {status}")
