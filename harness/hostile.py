"""Phase 2 of the torture run: hostile requests against ferryd's API.

Generated cases for every operation of /v1/openapi.json — harness/apifuzz.py's
schema-driven generator (fast) and a share by schemathesis through a TCP->Unix
forwarder — as ``nobody`` and a second unprivileged uid, aimed at their own jobs, at a
victim uid's jobs (which carry passwords, write-only headers, a client certificate, a
handle and a helper token) and at near misses of the victim's handles; a matrix of every
job operation on the victim's jobs (each must be denied and change nothing); raw
malformed HTTP and JSON straight to the socket; hand-written path and symlink attacks.
Checks after every case: no 5xx, an answer in time, ferryd alive, a BITS error body, no
secret (or its base64) in the answer; at the end, none in ferryd's log or store, jobs
that existed before unchanged, /etc and a root-owned sentinel untouched.
``fuzz_phase`` is the entry point (torture.py and the short test).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

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
    schemathesis_cases: int | None = None,
    identities: bool = True,
    threads: int = 2,
) -> None:
    """Hostile requests; see the module docstring. ``cases`` generated cases in all:
    ``schemathesis_cases`` of them by schemathesis (default: a tenth, at most 1,000; 0
    with ``use_schemathesis`` false) and the rest by harness/apifuzz.py's generator, in
    ``threads`` threads per attacker identity. ``identities`` adds the other-user attacks
    (root only) and the victim's secrets; ``hand_written`` the raw requests + path
    attacks. Ends with the per-route table and a scan of ferryd's log and store."""
    from harness.apifuzz import Checker, secret_needles

    root = os.geteuid() == 0
    identity = (NOBODY, NOBODY) if root else None
    attackers: list[tuple[int, int] | None] = [identity]
    if root and identities:
        attackers.append((ATTACKER2, ATTACKER2))
    if schemathesis_cases is None:
        schemathesis_cases = min(cases // 20, 300) if use_schemathesis else 0
    if not use_schemathesis:
        schemathesis_cases = 0
    own_cases = max(0, cases - schemathesis_cases)
    started = time.monotonic()
    cases_before = report.fuzz_cases
    who = (f"system-mode ferryd, attackers uid {', '.join(str(a[0]) for a in attackers if a)}"
           if root else "user-mode ferryd")
    say(f"phase 2: hostile API ({who})")
    d = Daemon(work / "fz", system=root, config="[daemon]\nsession_poll_interval = 1\n",
               log_level="info")
    src = work / "fz-src"
    src.mkdir(parents=True)
    os.chmod(work, 0o755)
    os.chmod(src, 0o755)
    make_file(src / "small.bin", 20 * KIB)
    make_file(src / "slow.bin", 8 * MIB)
    arena = work / "fz-arena"  # the attacker's own directory
    arena.mkdir(parents=True)
    arenas = {NOBODY: arena, ATTACKER2: work / "fz-arena2"}
    protected = work / "fz-protected"  # root's (or at least not the attacker's)
    protected.mkdir(parents=True)
    os.chmod(protected, 0o755)
    sentinel = protected / "sentinel"
    sentinel.write_bytes(b"do not touch\n")
    os.chmod(sentinel, 0o644)
    if root:
        for uid, a in arenas.items():
            a.mkdir(exist_ok=True)
            make_file(a / "src.bin", 4 * KIB)
            for p in (a, a / "src.bin"):
                os.chown(p, uid, uid)
    sentinel_before = (sha256_file(sentinel), os.lstat(sentinel).st_mtime_ns)
    server = FaultServer(root=src, rate=2 * MIB).start()
    fwd: Forwarder | None = None
    d.start()
    hostile = Hostile(d, report, identity)
    victims = Victims()
    checker = Checker({})
    try:
        bystanders = _make_bystanders(d, identity, server, protected, arena)
        if identities:
            victims = _make_victims(d, server, work, report, root)
        checker = Checker(secret_needles(victims.markers, victims.users))
        before = _jobs_snapshot(d, bystanders)
        etc_before = snapshot_tree(Path("/etc"))
        status, doc = api_call(d.socket, "GET", "/v1/openapi.json")
        if status != 200 or not isinstance(doc, dict):
            report.fail(f"GET /v1/openapi.json -> {status}")
            doc = {"paths": {}}
        if schemathesis_cases:
            fwd = Forwarder(d.socket, identity).start()
            _schemathesis(fwd, d, report, schemathesis_cases, seed, hostile, checker)
            hostile.check_alive("the fuzzing")
            # schemathesis makes fewer than asked for operations it cannot vary: the
            # generator makes up the difference, so ``cases`` are sent in all.
            own_cases = max(0, cases - (report.fuzz_cases - cases_before))
        if own_cases:
            _generated(d, report, doc, attackers, own_cases, seed, victims, arenas, arena,
                       server, checker, threads, root)
            hostile.check_alive("the generated cases")
        if root and identities:
            for attacker in attackers:
                assert attacker is not None
                _identity_attacks(d, report, attacker, victims,
                                  arenas.get(attacker[0], arena), server, checker)
            hostile.check_alive("the other-user attacks")
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
        if root and victims.snapshot:
            from harness.apifuzz import IdClient

            admin = IdClient(d.socket, None)
            try:
                for jid, view in victims.snapshot.items():
                    now = _victim_view(admin, jid)
                    if now != view:
                        report.fail(f"another user's job changed during the attacks: {jid}\n"
                                    f"  before {view!r:.800}\n  after  {now!r:.800}")
            finally:
                admin.close()
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
    if victims.markers:
        db = d.db_path
        _scan_files(report, checker, [d.log_path], "ferryd's log")
        _scan_files(report, checker, [db, Path(f"{db}-wal")], "the store")
        report.secret_scans += 3
    elapsed = time.monotonic() - started
    _route_table(report)
    n = report.fuzz_cases - cases_before
    say(f"  {n} generated cases ({n / elapsed:.0f}/s over the phase), "
        f"{report.identity_attacks} other-user attacks, {report.raw_requests} raw requests, "
        f"{report.attacks} path attacks, {report.secret_scans} answers/files scanned for "
        f"{len(victims.markers)} secrets, {elapsed:.0f} s")


def _generated(d: Daemon, report: Report, doc: dict[str, Any],
               attackers: list[tuple[int, int] | None], cases: int, seed: int,
               victims: Victims, arenas: dict[int, Path], arena: Path, server: FaultServer,
               checker: Any, threads: int, root: bool) -> None:
    """harness/apifuzz.py's cases, ``threads`` threads per attacker, cases shared evenly."""
    lock = threading.Lock()
    fuzzers: list[Fuzzer] = []
    for a_i, attacker in enumerate(attackers):
        home = arenas.get(attacker[0], arena) if attacker else arena
        for t in range(threads):
            f = Fuzzer(d, report, attacker, doc, seed * 1000 + a_i * 100 + t,
                       victims if root else Victims(), home, server, checker, lock)
            fuzzers.append(f)
    per, extra = divmod(cases, len(fuzzers))
    t0 = time.monotonic()
    workers = [threading.Thread(target=f.run, args=(per + (1 if i < extra else 0),),
                                name=f"fuzz-{i}", daemon=True) for i, f in enumerate(fuzzers)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    took = time.monotonic() - t0
    say(f"  schema-driven generator: {cases} cases in {took:.1f} s "
        f"({cases / max(took, 1e-9):.0f}/s, {len(fuzzers)} threads)")


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
    fwd: Forwarder, d: Daemon, report: Report, cases: int, seed: int, hostile: Hostile,
    checker: Any = None,
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
    started = time.monotonic()
    before = report.fuzz_cases
    schema = schemathesis.openapi.from_dict(doc)
    ops = [r.ok() for r in schema.get_all_operations()]  # type: ignore[union-attr]
    per = max(1, cases // max(1, 2 * len(ops)))
    base = f"http://127.0.0.1:{fwd.port}"
    session = requests.Session()
    seen_500: set[str] = set()

    def send(case: Any) -> None:
        report.fuzz_cases += 1
        route = f"{case.method} {case.operation.path}"
        report.fuzz_routes[route] = report.fuzz_routes.get(route, 0) + 1
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
        if checker is not None and not (stream and status < 400):
            report.secret_scans += 1
            verdict = checker.judge(status, list(resp.headers.items()), resp.content)
            if not verdict.ok and status < 500:
                key = f"{route} {verdict.problem[:60]}"
                if key not in seen_500:
                    seen_500.add(key)
                    report.fail(f"{label} -> {verdict.problem} (body {case.body!r:.300})")
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
    n, took = report.fuzz_cases - before, time.monotonic() - started
    say(f"  schemathesis: {n} cases in {took:.1f} s ({n / max(took, 1e-9):.1f}/s)")


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


# ---- hostile identities, the schema-driven fuzzer and the secret scan ----------------------

VICTIM = 40611  # a real unprivileged uid (no passwd entry needed) owning the bystander jobs
ATTACKER2 = 40612  # a second real unprivileged uid, attacking next to ``nobody``
HELPER = 40613  # the helper token of one of the victim's jobs

# Operations only an administrator may perform: an unprivileged caller must be refused.
ADMIN_ONLY = {"POST /v1/logoff", "POST /v1/shutdown", "PUT /v1/network/cost",
              "POST /v1/reload", "GET /v1/fleet"}


@dataclass
class Victims:
    """Other users' jobs with secrets set, and what may reveal those secrets."""

    jobs: dict[str, str] = field(default_factory=dict)  # id -> display name
    handles: list[str] = field(default_factory=list)  # real handles (never given out)
    markers: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    snapshot: dict[str, Any] = field(default_factory=dict)


def _marker(kind: str) -> str:
    return f"FzSecret{kind}{os.urandom(8).hex()}"


def _make_victims(d: Daemon, server: FaultServer, work: Path, report: Report,
                  root: bool) -> Victims:
    """As the victim uid: jobs with server and proxy passwords, write-only custom headers,
    a client certificate, a handle of their own; one of them transferred (a target for
    ``complete``); one with a helper token (of uid HELPER, set through a token-options
    handle an administrator opened) and both helper flags."""
    from harness.apifuzz import IdClient

    v = Victims()
    home = work / "fz-victim"
    home.mkdir(parents=True)
    (home / "client.pem").write_text("not a certificate\n")
    (home / "client.key").write_text("not a key\n")
    if root:
        os.chown(home, VICTIM, VICTIM)
        os.chmod(home, 0o700)
    tag = os.urandom(3).hex()
    # In user mode (not root) the "victim" is the daemon's own user: no access checks to
    # try, but its secrets must still never come back in any answer.
    victim = IdClient(d.socket, (VICTIM, VICTIM) if root else None)
    admin = IdClient(d.socket, None)

    def ok(status: int, doc: Any, what: str) -> Any:
        if status >= 400:
            report.fail(f"setting up the victim's jobs: {what} -> {status} {doc!r:.300}")
        return doc

    try:
        for kind in ("creds", "done", "helper"):
            name = f"victim-{kind}-{tag}"
            job = ok(*victim.call("POST", "/v1/jobs", {"display_name": name,
                                                       "description": "must not change"}),
                     "create")
            if not isinstance(job, dict):
                continue
            jid = job["id"]
            v.jobs[jid] = name
            ok(*victim.call("POST", f"/v1/jobs/{jid}/files", {"files": [
                {"remote_name": server.url("small.bin"), "local_name": str(home / f"{kind}.bin")},
            ]}), "add files")
            server_pw, proxy_pw, header = _marker("Srv"), _marker("Prx"), _marker("Hdr")
            v.markers += [server_pw, proxy_pw, header]
            user = f"vu{kind}"
            v.users += [user, f"vp{kind}"]
            ok(*victim.call("PUT", f"/v1/jobs/{jid}/credentials", {
                "target": "SERVER", "scheme": "BASIC", "user": user, "password": server_pw,
            }), "server credentials")
            ok(*victim.call("PUT", f"/v1/jobs/{jid}/credentials", {
                "target": "PROXY", "scheme": "BASIC", "user": f"vp{kind}", "password": proxy_pw,
            }), "proxy credentials")
            digest_pw = _marker("Dig")
            v.markers.append(digest_pw)
            ok(*victim.call("PUT", f"/v1/jobs/{jid}/credentials", {
                "target": "SERVER", "scheme": "DIGEST", "user": user, "password": digest_pw,
            }), "digest credentials")
            ok(*victim.call("PATCH", f"/v1/jobs/{jid}/http-options", {
                "custom_headers": [f"X-Api-Key: {header}", "X-Plain: visible"],
                "custom_headers_write_only": True,
                "client_certificate": {"cert": str(home / "client.pem"),
                                       "key": str(home / "client.key")},
            }), "HTTP options")
            if kind == "done":
                # No client certificate for the one that transfers (it is not a real one).
                ok(*victim.call("PATCH", f"/v1/jobs/{jid}/http-options",
                                {"client_certificate": None}), "clear the certificate")
                ok(*victim.call("POST", f"/v1/jobs/{jid}/resume", {}), "resume")
            if kind == "creds":
                status, h = victim.call("POST", f"/v1/jobs/{jid}/handles",
                                        {"interface": "job", "ttl": 3600})
                if status == 201 and isinstance(h, dict):
                    v.handles.append(h["handle"])
            if kind == "helper" and root:
                opened = ok(*admin.call("POST", f"/v1/jobs/{jid}/handles",
                                        {"interface": "token-options", "ttl": 3600}),
                            "token-options handle")
                hid = opened.get("handle") if isinstance(opened, dict) else None
                if hid:
                    v.handles.append(hid)
                    helper = IdClient(d.socket, (HELPER, HELPER))
                    try:
                        ok(*helper.call("PUT", f"/v1/handles/{hid}/helper-token", {}),
                           "set the helper token")
                        ok(*helper.call("PUT", f"/v1/handles/{hid}/helper-token/flags",
                                        {"flags": 3}), "helper flags")
                    finally:
                        helper.close()
        done = [j for j, n in v.jobs.items() if "-done-" in n]
        deadline = time.monotonic() + 30
        while done and time.monotonic() < deadline:
            status, doc = admin.call("GET", f"/v1/jobs/{done[0]}")
            if isinstance(doc, dict) and doc.get("state") in ("TRANSFERRED", "ERROR"):
                break
            time.sleep(0.1)
        time.sleep(1.5)  # a session poll or two: the helper token's session is checked
        v.snapshot = {jid: _victim_view(admin, jid) for jid in v.jobs}
    finally:
        victim.close()
        admin.close()
    return v


def _victim_view(admin: Any, jid: str) -> Any:
    """Everything an administrator sees of a job: itself, its files, its credentials
    (never their passwords) and its helper token."""
    return [admin.call("GET", f"/v1/jobs/{jid}{tail}")
            for tail in ("", "/files", "/credentials", "/helper-token")]


class Fuzzer:
    """The schema-driven cases of one attacker identity (a thread each)."""

    def __init__(self, d: Daemon, report: Report, identity: tuple[int, int] | None,
                 doc: dict[str, Any], seed: int, victims: Victims, arena: Path,
                 server: FaultServer, checker: Any, lock: threading.Lock) -> None:
        import random

        from harness.apifuzz import CaseMaker, IdClient, Pools, operations

        self.d, self.report, self.identity = d, report, identity
        self.ops = operations(doc)
        self.pools = Pools()
        self.pools.victim_jobs = [*victims.jobs, *victims.jobs.values()]
        self.pools.fake_handles = [_near_miss(h, i) for h in victims.handles for i in range(4)]
        self.pools.paths = [str(arena / "f.bin"), str(arena / "sub" / "g.bin"), str(arena),
                            str(arena / "r.reply"), "/etc/ferry-fz", "/root/x",
                            *(str(arena.parent / "fz-victim" / n) for n in ("v.bin", "creds.bin"))]
        self.pools.urls = [server.url("small.bin"), server.url("missing.bin"),
                           "http://127.0.0.1:9/refused", f"file://{arena}/src.bin",
                           "file:///etc/shadow", "https://127.0.0.1:9/tls"]
        self.rng = random.Random(seed)
        self.maker = CaseMaker(doc, self.rng, self.pools)
        self.client = IdClient(d.socket, identity, timeout=30)
        self.checker = checker
        self.lock = lock
        self.who = f"uid {identity[0]}" if identity else "the daemon's user"
        self.seen: set[str] = set()

    def fail(self, key: str, msg: str) -> None:
        with self.lock:
            if key in self.seen:
                return
            self.seen.add(key)
            self.report.fail(msg)

    def run(self, cases: int) -> None:
        ops = self.ops
        for i in range(cases):
            op = ops[i % len(ops)]
            self.one(self.maker.make(op, negative=bool((i // len(ops)) % 2)))
        self.client.close()

    def one(self, case: Any) -> None:
        from harness.apifuzz import Case

        assert isinstance(case, Case)
        label = case.op.label
        stream = case.op.path == "/v1/events"
        with self.lock:
            self.report.fuzz_cases += 1
            self.report.fuzz_routes[label] = self.report.fuzz_routes.get(label, 0) + 1
            if case.aim == "victim":
                self.report.identity_attacks += 1
        try:
            status, headers, body = self.client.request(case.method, case.target, case.body,
                                                        case.headers, stream=stream)
        except (OSError, http.client.HTTPException) as exc:
            if self.d.proc is not None and self.d.proc.poll() is not None:
                self.fail("died", f"ferryd died on {label} ({case.target[:200]!r}, body "
                                  f"{case.body!r:.300}): {exc!r}\n{self.d.log(3000)}")
                with self.lock, contextlib.suppress(Exception):
                    if not self.d.alive():
                        self.d.proc = None
                        self.d.start()
            else:
                self.fail(f"hang {label}", f"{self.who}: {label} ({case.target[:200]!r}, body "
                                           f"{case.body!r:.200}): no answer: {exc!r:.200}")
            return
        with self.lock:
            self.report.secret_scans += 1
        verdict = self.checker.judge(status, headers, body)
        if not verdict.ok:
            self.fail(f"{label} {verdict.problem[:60]}",
                      f"{self.who}: {label} ({case.target[:200]!r}, body {case.body!r:.300}) "
                      f"-> {verdict.problem}")
        if status < 400:
            self._learn(case, body)
            if case.aim == "victim" and any(k in case.refs for k in ("job", "handle")):
                self.fail(f"victim {label}", f"{self.who}: {label} on another user's "
                                             f"{case.refs} -> {status}: {body[:300]!r}")
            if label in ADMIN_ONLY or (label == "GET /v1/jobs" and re.search(
                    r"all_users=(true|1|yes)", case.target)):
                self.fail(f"admin {label}", f"{self.who} (not an administrator): "
                                            f"{case.target} -> {status}: {body[:200]!r}")
        if self.d.proc is not None and self.d.proc.poll() is not None:
            self.fail("died", f"ferryd died after {label} ({case.target[:200]!r}, body "
                              f"{case.body!r:.300})\n{self.d.log(3000)}")

    def _learn(self, case: Any, body: bytes) -> None:
        """Keep the jobs and handles the attacker made: later cases aim at them."""
        try:
            doc = json.loads(body)
        except ValueError:
            return
        if not isinstance(doc, dict):
            return
        if case.op.path == "/v1/jobs" and case.method == "POST" and "id" in doc:
            self.pools.own_jobs.append(doc["id"])
            self.pools.own_jobs[:] = self.pools.own_jobs[-200:]
        elif case.op.path.endswith("/handles") and "handle" in doc:
            self.pools.own_handles.append(doc["handle"])
            self.pools.own_handles[:] = self.pools.own_handles[-200:]


def _near_miss(handle: str, i: int) -> str:
    """A handle id that is almost a real one (which is a bearer capability, never given to
    the attacker): one character changed, cut short, upper-cased, padded."""
    if i == 0:
        return handle[:-1] + ("0" if handle[-1] != "0" else "1")
    if i == 1:
        return handle[: len(handle) // 2]
    if i == 2:
        return handle.upper() if handle.upper() != handle else handle.lower() + "x"
    return handle + "0"


def _identity_attacks(d: Daemon, report: Report, identity: tuple[int, int], victims: Victims,
                      arena: Path, server: FaultServer, checker: Any) -> None:
    """Every job operation with a well-formed body, as ``identity``, on each of the victim's
    jobs by id (E_ACCESSDENIED) and by display name (BG_E_NOT_FOUND: names are looked up
    among the caller's own jobs), and on near misses of the victim's handles; the job must
    come out unchanged after each."""
    from harness.apifuzz import IdClient

    who = f"uid {identity[0]}"
    c = IdClient(d.socket, identity, timeout=30)
    admin = IdClient(d.socket, None, timeout=30)
    url = server.url("small.bin")
    ops: list[tuple[str, str, Any]] = [
        ("GET", "", None), ("PATCH", "", {"description": "pwned"}),
        ("PATCH", "", {"priority": "foreground", "notify_cmdline": ["/bin/true"]}),
        ("PATCH", "", {"proxy": {"usage": "OVERRIDE", "list": ["http://127.0.0.1:9"],
                                 "bypass": None}}),
        ("GET", "/files", None),
        ("POST", "/files", {"files": [{"remote_name": url, "local_name": str(arena / "s.bin")}]}),
        ("PUT", "/files/0/remote-name", {"remote_name": "http://127.0.0.1:9/evil"}),
        ("POST", "/replace-remote-prefix", {"old": "http://", "new": "http://127.0.0.1:9/"}),
        *(("POST", f"/{a}", {}) for a in ("resume", "suspend", "cancel", "complete",
                                          "take-ownership")),
        ("PUT", "/reply-file", {"reply_file": str(arena / "stolen.reply")}),
        ("GET", "/reply", None),
        ("PATCH", "/http-options", {"custom_headers": ["X-Evil: 1"]}),
        ("PATCH", "/http-options", {"custom_headers": None, "client_certificate": None}),
        ("PATCH", "/http-options", {"custom_headers_write_only": False}),
        ("POST", "/handles", {"interface": "job"}),
        ("POST", "/handles", {"interface": "token-options", "ttl": 60}),
        ("GET", "/helper-token", None), ("PUT", "/helper-token", {}),
        ("DELETE", "/helper-token", None), ("PUT", "/helper-token/flags", {"flags": 0}),
        ("GET", "/credentials", None),
        ("PUT", "/credentials", {"target": "SERVER", "scheme": "BASIC", "user": "x",
                                 "password": "y"}),
        ("DELETE", "/credentials/SERVER/BASIC", None),
        ("DELETE", "/credentials/PROXY/BASIC", None),
    ]
    try:
        for jid, name in victims.jobs.items():
            for ref, expected in ((jid, {"E_ACCESSDENIED"}), (name, {"BG_E_NOT_FOUND"})):
                q = quote(ref, safe="")
                targets = [(m, f"/v1/jobs/{q}{tail}", b) for m, tail, b in ops]
                targets.append(("GET", f"/v1/events?job={q}", None))
                for method, target, body in targets:
                    report.identity_attacks += 1
                    _one_denial(c, report, checker, who, method, target, body, expected,
                                stream=target.startswith("/v1/events"))
                    after = _victim_view(admin, jid)
                    if after != victims.snapshot[jid]:
                        report.fail(f"{who}: {method} {target} changed another user's job:\n"
                                    f"  before {victims.snapshot[jid]!r:.600}\n"
                                    f"  after  {after!r:.600}")
                        victims.snapshot[jid] = after
        for h in victims.handles:
            for i in range(4):
                fake = quote(_near_miss(h, i), safe="")
                for method, tail, body in (
                    ("GET", "", None), ("POST", "/cancel", {}), ("POST", "/complete", {}),
                    ("GET", "/helper-token", None), ("PUT", "/helper-token", {}),
                    ("PUT", "/helper-token/flags", {"flags": 0}), ("DELETE", "", None),
                ):
                    report.identity_attacks += 1
                    _one_denial(c, report, checker, who, method, f"/v1/handles/{fake}{tail}",
                                body, {"BG_E_NOT_FOUND", "E_ACCESSDENIED", "E_INVALIDARG"})
        for method, target, body in (
            ("GET", "/v1/jobs?all_users=true", None), ("GET", "/v1/events?all_users=true", None),
            ("POST", "/v1/logoff", {"user": VICTIM}), ("PUT", "/v1/network/cost",
                                                       {"cost": "unrestricted"}),
            ("POST", "/v1/reload", {}), ("GET", "/v1/fleet", None),
        ):
            report.identity_attacks += 1
            _one_denial(c, report, checker, who, method, target, body,
                        {"E_ACCESSDENIED", "E_NOTIMPL"}, stream=target.startswith("/v1/events"))
    finally:
        c.close()
        admin.close()


def _one_denial(c: Any, report: Report, checker: Any, who: str, method: str, target: str,
                body: Any, expected: set[str], *, stream: bool = False) -> None:
    data = None if body is None else json.dumps(body).encode()
    try:
        status, headers, raw = c.request(method, target, data,
                                         {"Content-Type": "application/json"}, stream=stream)
    except (OSError, http.client.HTTPException) as exc:
        report.fail(f"{who}: {method} {target}: no answer: {exc!r:.200}")
        return
    report.secret_scans += 1
    verdict = checker.judge(status, headers, raw)
    if not verdict.ok:
        report.fail(f"{who}: {method} {target} -> {verdict.problem}")
    elif status < 400 or verdict.code not in expected:
        report.fail(f"{who}: {method} {target} -> {status} {verdict.code}, expected one of "
                    f"{sorted(expected)}: {raw[:200]!r}")


def _scan_files(report: Report, checker: Any, paths: list[Path], what: str) -> None:
    for p in paths:
        try:
            data = p.read_bytes()
        except OSError:
            continue
        leaked = checker.leaks(data)
        if leaked:
            report.fail(f"secret in {what} {p}: {leaked}")


def _route_table(report: Report) -> None:
    width = max((len(k) for k in report.fuzz_routes), default=10)
    say(f"  generated cases per route ({len(report.fuzz_routes)} routes):")
    for label in sorted(report.fuzz_routes, key=lambda k: k.split(" ", 1)[::-1]):
        say(f"    {label:<{width}} {report.fuzz_routes[label]:>6}")
