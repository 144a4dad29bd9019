"""ferry-server fuzzing (issue #16): hypothesis-generated raw BITS requests on sockets to a
real ``ferry-server`` process, with invariants checked after every case.

``server_fuzz_phase(work, report, seed=..., q=..., requests=N)`` starts ``ferry-server`` with
its own ``--root`` (and ``--state-dir``) in ``work`` beside a sentinel tree, then runs
hypothesis-generated *cases* until N fuzz requests have been sent. A case is one or a few
raw requests written by hand on a socket:

* BITS packets of every type (Ping, Create-Session, Fragment, Close-Session, Cancel-Session),
  unknown and missing types, types in odd case, other methods and the POST override;
* header names in odd case, duplicated headers, huge header values, many headers, huge URLs;
* Content-Range edge cases against the session's real state: the next bytes, overlaps
  (whose already-stored bytes are sent *wrong*: the server must drop them), gaps, negative
  and reversed ranges, beyond the total, a changed total, ``*``, malformed and enormous
  numbers; Content-Length absent, duplicated or disagreeing with the range;
* bodies shorter than Content-Length (then the socket is closed, half-closed or held open),
  longer than it, chunked, sent slowly in pieces;
* connections abandoned in the middle of the headers or the body, and connections held
  open across later cases (released a few cases later);
* destinations that try to leave the root: ``..`` plain and percent-encoded (``%2e%2e``,
  ``%2f``, ``%5c``, ``%00``, overlong UTF-8 ``%c0%ae``), through symbolic links placed inside
  the root pointing out of it (to a directory, to a file, a loop), reserved names;
* session ids forged (random GUIDs, not GUIDs, huge), reused (closed or cancelled sessions,
  another session's id on another URL, with and without braces, in lower case);
* well-formed sessions driven through their life: Create, fragments with random edge cases,
  then Close or Cancel; and a few GETs of destinations that must not exist yet.

Every fragment body carries the session's real bytes for its range (a per-session pattern),
except the overlapped part, which carries wrong bytes; so the bytes a session stores are
always checkable. Invariants, after every case:

* **outside the root nothing changes**: the sentinel tree beside the root (files, a
  directory the root's symbolic links point to) and the work directory's own entries are
  snapshotted (type, mode, size, mtime, inode) and compared;
* **nothing visible before Close-Session**: every entry of the root is either one that was
  there at the start (unchanged) or the destination of a session whose Close-Session
  answered 200 (then it holds exactly that session's bytes); no ``.ferry-upload-`` temporary
  is left;
* **received offset = bytes durably stored**: every ``BITS-Received-Content-Range`` the
  server states (on 200 and 416 Fragment Acks) equals the size of the session's ``data``
  file at that moment, and the file holds exactly the session's bytes (so no overlap was
  rewritten, no byte past Content-Length stored); every ``CHECK_EVERY`` cases (and at the
  end) every open session is probed (a Fragment whose answer states the offset without
  storing anything new, or storing exactly the last byte) and checked the same way;
* **the server lives**: its process is alive after every case, and every ``CHECK_EVERY``
  cases and at the end a good client (Ping, a whole upload in fragments, Close, GET and a
  ranged GET of the file) gets the right answers and bytes;
* **no 5xx except where the protocol says so**: [MC-BUP] and the reference summary allow
  a 500 only with ``BG_E_SESSION_NOT_FOUND`` (0x8020001F; unknown, expired, closed or
  cancelled session) or ``BG_E_TOO_LARGE`` (0x80200020; an upload larger than
  ``--max-upload-size``) — disk full (0x80070112) cannot happen here, 501 is for disabled
  uploads (never here), and a 503 would mean a session lock held for a minute (the fuzzer
  never leaves a held connection on a session it uses again). Any other 5xx is a failure;
* **BITS answers are Acks**: an answer to a well-formed BITS_POST (one the HTTP parser
  accepts) carries ``BITS-Packet-Type: Ack`` and ``Content-Length: 0``, and one with an
  error status carries ``BITS-Error-Code`` and ``BITS-Error-Context``;
* **no traceback in the server's log** (read as it grows, after every case);
* **no hang**: every answer comes within ``ANSWER_TIMEOUT``.

Counts go to ``Report.server_requests`` (fuzz requests; the probes and the good client's
requests are counted in ``Report.server_checks``) and failures to ``report.fail(msg,
"server-fuzz")``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import stat
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hseed
from hypothesis import strategies as st
from hypothesis.errors import FlakyStrategyDefinition, HypothesisWarning

from harness.env import say
from harness.report import Report
from harness.upserver import PROTOCOL, FerryServer, read_answer
from harness.upserver import Answer as Ans

__all__ = ["World", "server_fuzz_phase"]

KIND = "server-fuzz"
ANSWER_TIMEOUT = 30.0
CHECK_EVERY = 25  # cases between good-client runs and full session probes
MAX_UPLOAD = 8 << 20  # --max-upload-size: totals above it get BG_E_TOO_LARGE (a 500)
MAX_HELD = 12
SESSION_NOT_FOUND = "0x8020001F"
TOO_LARGE = "0x80200020"
TRACE_MARKS = ("Traceback", "Unhandled exception", "Task exception")
SINGLETONS = ("content-length", "content-range", "content-type", "host", "transfer-encoding")
PATTERN = bytes(range(251)) * 2200  # > 512 KiB + 251: any [off, off+n) of a session's bytes


def content(salt: int, off: int, n: int) -> bytes:
    """Bytes [off, off+n) of a session's upload (a 251-periodic pattern shifted by salt)."""
    out = bytearray()
    while n > 0:
        start = (salt + off) % 251
        take = min(n, len(PATTERN) - start - 251)
        out += PATTERN[start : start + take]
        off += take
        n -= take
    return bytes(out)


def wrong(salt: int, off: int, n: int) -> bytes:
    return bytes(b ^ 0xA5 for b in content(salt, off, n))


# ---- the world the fuzzer keeps -----------------------------------------------------------------


@dataclass
class Sess:
    sid: str
    url: str  # the raw URL path it was created for
    rel: tuple[str, ...]  # its destination under the root
    salt: int
    state: str = "open"  # open | closed | cancelled | gone
    received: int = 0  # the last offset the server stated
    held: bool = False  # a held-open connection is on it: not used until released
    unsettled: bool = False  # a request on it was cut: the server may hold more than stated


@dataclass
class Held:
    sock: socket.socket
    release_at: int
    session: Sess | None


@dataclass(repr=False)
class World:
    server: FerryServer
    base: Path
    root: Path
    state: Path
    outside: Path
    report: Report
    rng: random.Random
    sessions: list[Sess] = field(default_factory=list)
    held: list[Held] = field(default_factory=list)
    committed: dict[tuple[str, ...], Sess] = field(default_factory=dict)
    root_before: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    outside_before: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    log_offset: int = 0
    cases: int = 0
    requests: int = 0
    checks: int = 0
    good_runs: int = 0
    names: int = 0
    failed: int = 0
    flaky: int = 0
    stored_total: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)  # cases run, by kind
    case_desc: str = ""

    def __repr__(self) -> str:  # hypothesis shows the arguments of strategies: keep it short
        return "World()"

    # -- failures --------------------------------------------------------------------------

    def fail(self, msg: str) -> None:
        self.failed += 1
        if self.failed <= 200:  # the first ones say it all; the count says the rest
            self.report.fail(f"server fuzz case {self.cases} ({self.case_desc}): {msg}", KIND)

    # -- sockets ---------------------------------------------------------------------------

    def connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.server.port), ANSWER_TIMEOUT)
        s.settimeout(ANSWER_TIMEOUT)
        return s

    def session_dir(self, s: Sess) -> Path:
        return self.state / "sessions" / s.sid.strip("{}")

    def data_size(self, s: Sess) -> int | None:
        try:
            return (self.session_dir(s) / "data").stat().st_size
        except FileNotFoundError:
            return None

    def meta_total(self, s: Sess) -> int | None:
        try:
            total = json.loads((self.session_dir(s) / "meta.json").read_text()).get("total")
            return int(total) if total is not None else None
        except (FileNotFoundError, ValueError):
            return None

    def session_exists(self, s: Sess) -> bool:
        return self.session_dir(s).is_dir()


# ---- snapshots ----------------------------------------------------------------------------------


def _entry(path: str) -> tuple[Any, ...]:
    st_ = os.lstat(path)
    kind = stat.S_IFMT(st_.st_mode)
    target = os.readlink(path) if stat.S_ISLNK(st_.st_mode) else ""
    return (kind, st_.st_mode, st_.st_size, st_.st_mtime_ns, st_.st_ino, target)


def _tree(
    top: Path, skip: frozenset[str] = frozenset(), names_only: set[tuple[str, ...]] | None = None
) -> dict[str, tuple[Any, ...]]:
    """Every entry under top (relative path -> type, mode, size, mtime, inode, link target);
    entries in ``names_only`` (as path tuples) are listed without an lstat (cheap)."""
    out: dict[str, tuple[Any, ...]] = {}
    stack = [(str(top), "")]
    while stack:
        d, prefix = stack.pop()
        try:
            entries = list(os.scandir(d))
        except (NotADirectoryError, FileNotFoundError):
            continue
        for e in entries:
            rel = prefix + e.name
            if rel in skip:
                continue
            if names_only is not None and tuple(rel.split("/")) in names_only:
                out[rel] = ()
            else:
                out[rel] = _entry(e.path)
            if e.is_dir(follow_symlinks=False):
                stack.append((e.path, rel + "/"))
    return out


def _outside(w: World) -> dict[str, tuple[Any, ...]]:
    """The work directory minus the root, the state directory and the server's log (whose
    mtime moves): the sentinel tree and the work directory's own entries."""
    skip = {"root", "state"} | {p.name for p in w.base.glob("ferry-server-*.log")}
    return _tree(w.base, frozenset(skip))


def _layout(base: Path) -> tuple[Path, Path, Path]:
    root, state, outside = base / "root", base / "state", base / "outside"
    for d in (root, state, outside, outside / "sub", root / "d", root / "d" / "e"):
        d.mkdir(parents=True, exist_ok=True)
    (outside / "secret.txt").write_text("sentinel: must never change\n")
    (outside / "sub" / "victim.bin").write_bytes(b"\x00" * 100)
    (root / "kept.txt").write_text("a file that was in the root before\n")
    (root / "d" / "e" / "f.txt").write_text("deeper\n")
    # symbolic links inside the root pointing out of it (and one loop, one into the root)
    os.symlink(outside, root / "out")
    os.symlink(outside / "secret.txt", root / "outf")
    os.symlink("../../outside", root / "d" / "rel")
    os.symlink("..", root / "d" / "up")
    os.symlink("loop", root / "loop")
    os.symlink(outside / "sub" / "victim.bin", root / "d" / "victim.bin")
    return root, state, outside


# ---- requests -----------------------------------------------------------------------------------


@dataclass
class Req:
    """One raw request: a head (request line and headers) and a body, and how it is sent."""

    method: str = "BITS_POST"
    url: str = "/x"
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    content_length: int | None = -1  # -1: the body's length; None: no Content-Length
    mode: str = "whole"  # whole | slow | cut | halfclose | hold | chunked | headcut | headhold
    raw: bytes | None = None  # sent as is (garbage)
    http_ok: bool = True  # the HTTP parser should accept it (then the answer is a BITS one)

    def wire(self, port: int) -> tuple[bytes, bytes]:
        if self.raw is not None:
            return self.raw, b""
        items = list(self.headers)
        names = {k.lower() for k, _ in items}
        if "host" not in names:
            items.insert(0, ("Host", f"127.0.0.1:{port}"))
        body = self.body
        if self.mode == "chunked":
            items.append(("Transfer-Encoding", "chunked"))
            pieces = [body[i : i + 7] for i in range(0, len(body), 7)]
            body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        if self.content_length == -1 and self.mode != "chunked":
            items.append(("Content-Length", str(len(self.body))))
        elif self.content_length is not None and self.content_length >= 0:
            items.append(("Content-Length", str(self.content_length)))
        head = f"{self.method} {self.url} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in items)
        return head.encode("utf-8", "surrogateescape") + b"\r\n", body


def send(w: World, req: Req, held_session: Sess | None = None) -> Ans | None:
    """Send one request as its mode says; the answer, or None when none is awaited (cut,
    held) or the server closed the connection without one (the HTTP layer refusing)."""
    w.requests += 1
    head, body = req.wire(w.server.port)
    s = w.connect()
    keep = False
    try:
        if req.mode in ("headcut", "headhold"):
            s.sendall(head[: max(1, len(head) // 2)])
            if req.mode == "headhold":
                keep = True
                w.held.append(Held(s, w.cases + w.rng.randint(1, 15), None))
            return None
        if req.mode in ("cut", "halfclose", "hold"):
            part = body[: len(body) // 2] if body else b""
            s.sendall(head + part)
            if req.mode == "cut":
                return None
            if req.mode == "hold":
                keep = True
                if held_session is not None:
                    held_session.held = True
                w.held.append(Held(s, w.cases + w.rng.randint(1, 15), held_session))
                return None
            s.shutdown(socket.SHUT_WR)
            return _read(w, s, req, allow_close=True)
        if req.mode == "slow":
            data = head + body
            cuts = sorted({w.rng.randrange(len(data)) for _ in range(4)})
            prev = 0
            for c in [*cuts, len(data)]:
                if c > prev:
                    s.sendall(data[prev:c])
                    time.sleep(0.003)
                prev = c
        else:
            s.sendall(head + body)
        if req.raw is not None:
            # garbage may not be a whole request: the server may wait for the rest (its
            # keep-alive timeout closes the connection), answer 400, or just close
            s.settimeout(1.0)
            with contextlib.suppress(TimeoutError, ConnectionError, ValueError, IndexError):
                a = read_answer(s, "GET", final=True)
                check_answer(w, req, a)
            return None
        return _read(w, s, req, allow_close=not req.http_ok)
    except TimeoutError:
        w.fail(f"no answer within {ANSWER_TIMEOUT:.0f} s to {head[:200]!r}")
        return None
    except (BrokenPipeError, ConnectionResetError):
        if req.http_ok and req.mode not in ("cut", "halfclose"):
            # the server may close on a body longer than declared, after answering
            return None
        return None
    finally:
        if not keep:
            s.close()


def _read(w: World, s: socket.socket, req: Req, *, allow_close: bool) -> Ans | None:
    try:
        a = read_answer(s, req.method, final=True)
    except ConnectionError:
        if not allow_close:
            w.fail(
                f"connection closed without an answer to a well-formed request "
                f"{req.method} {req.url[:80]} {req.headers[:6]}"
            )
        return None
    check_answer(w, req, a)
    return a


def check_answer(w: World, req: Req, a: Ans) -> None:
    """The 5xx rule and the Ack shape (module docstring)."""
    code = (a.headers.get("bits-error-code") or "").upper().replace("0X", "0x")
    if a.status >= 500 and not (a.status == 500 and code in (SESSION_NOT_FOUND, TOO_LARGE)):
        w.fail(
            f"{a.status} {code or '(no BITS-Error-Code)'} to {req.method} "
            f"{req.url[:80]} {req.headers[:8]}"
        )
    if req.raw is not None or not req.http_ok:
        return
    override = any(
        k.lower() == "x-http-method-override" and v.strip().upper() == "BITS_POST"
        for k, v in req.headers
    )
    if not (req.method == "BITS_POST" or (req.method == "POST" and override)):
        return
    if a.headers.get("bits-packet-type", "").lower() != "ack":
        w.fail(f"answer {a.status} to a BITS_POST is not an Ack: {a.headers}")
        return
    if a.headers.get("content-length") != "0":
        w.fail(f"Ack {a.status} without Content-Length: 0: {a.headers}")
    if a.status >= 300 and not (code and a.headers.get("bits-error-context")):
        w.fail(f"error Ack {a.status} without BITS-Error-Code/Context: {a.headers}")


def stated(a: Ans | None) -> int | None:
    if a is None or a.status not in (200, 416):
        return None
    v = a.headers.get("bits-received-content-range")
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


# ---- strategies ---------------------------------------------------------------------------------

NAME = st.text("abcxyz019-_.~é", min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))
GOOD_DIRS = st.sampled_from(["", "d/", "d/e/"])

ATTACK_PATHS = [
    "/../outside/new",
    "/..%2foutside%2fnew",
    "/%2e%2e/outside/new",
    "/%2E%2E/outside/new",
    "/d/%2e%2e/%2e%2e/outside/new",
    "/d/../../outside/new",
    "/%2e%2e%2foutside%2fnew",
    "/..%5coutside%5cnew",
    "/%c0%ae%c0%ae/outside/new",
    "/%c0%ae%c0%ae%c0%afoutside",
    "/%e0%80%ae%e0%80%ae/outside/new",
    "/new%00.txt",
    "/%00",
    "/out/new",
    "/out/secret.txt",
    "/outf",
    "/d/rel/new",
    "/d/rel/secret.txt",
    "/d/up/new",
    "/loop/new",
    "/loop",
    "/d/victim.bin",
    "/out/sub/victim.bin",
    "/.ferry-server/x",
    "/.ferry-upload-x.tmp",
    "/%2e",
    "/.",
    "//outside/new",
    "/",
    "",
    "*",
    "/d/",
    "/d",
    "/kept.txt",
    "/d/e/f.txt",
    "/%ff%fe",
    "/a%0d%0aX-Injected:%201",
    "/%25%32%65%25%32%65/outside/new",
    "/" + "a" * 300,
    "/" + "b/" * 2100 + "c",
    "/x?q=../../outside/new",
    "/x#../../y",
    "http://127.0.0.1/../outside/new",
    "/d/e/%2e%2e/%2e%2e/%2e%2e/outside/new",
    "/out%2fnew",
    "/\\..\\outside\\new",
    "/%7e/..",
    "/d/e/../../../outside/new",
]

PACKET_NAMES = ["Ping", "Create-Session", "Fragment", "Close-Session", "Cancel-Session"]


def _case_variants(name: str) -> st.SearchStrategy[str]:
    return st.sampled_from(
        [
            name,
            name.upper(),
            name.lower(),
            name.swapcase(),
            " " + name + " ",
            name.replace("-", "_"),
            name + "x",
        ]
    )


def header_name(name: str) -> st.SearchStrategy[str]:
    return st.sampled_from([name, name.lower(), name.upper(), name.swapcase()])


@st.composite
def dest(draw: st.DrawFn, w: World) -> str:
    """A URL path: mostly a fresh good name, sometimes a reused one or an attack."""
    r = draw(st.integers(0, 99))
    if r < 70:
        w.names += 1
        return "/" + draw(GOOD_DIRS) + f"n{w.names}-" + draw(NAME).replace(".", "_")
    if r < 80 and w.sessions:
        return draw(st.sampled_from(w.sessions[-50:])).url
    return draw(st.sampled_from(ATTACK_PATHS))


@st.composite
def extra_headers(draw: st.DrawFn) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for _ in range(draw(st.integers(0, 2))):
        out.append(
            draw(
                st.sampled_from(
                    [
                        ("X-Junk", "1"),
                        ("Accept-Encoding", "gzip"),
                        ("Content-Encoding", "gzip"),
                        ("Content-Encoding", "identity"),
                        ("Expect", "100-continue"),
                        ("Connection", "close"),
                        ("BITS-Host-Id", "elsewhere"),
                        ("X-Forwarded-Host", "evil.example"),
                        ("X-Forwarded-Proto", "gopher"),
                        ("Range", "bytes=0-1"),
                        ("X-Big", "v" * 5000),
                        ("BITS-Original-Request-URL", "/../../x"),
                    ]
                )
            )
        )
    return out


def protocols() -> st.SearchStrategy[str | None]:
    return st.sampled_from(
        [
            PROTOCOL,
            PROTOCOL.upper(),
            PROTOCOL.strip("{}"),
            f"{{00000000-0000-0000-0000-000000000000}} {PROTOCOL}",
            f"{{11111111-1111-1111-1111-111111111111}},{PROTOCOL}",
            "{11111111-1111-1111-1111-111111111111}",
            "",
            "   ",
            ",,,",
            "garbage",
            PROTOCOL * 200,
            None,
        ]
    )


def sid_variants(s: Sess) -> st.SearchStrategy[str]:
    g = s.sid.strip("{}")
    return st.sampled_from([s.sid, g, g.lower(), "{" + g.lower() + "}", " " + s.sid + " "])


FORGED_IDS = [
    "{00000000-0000-0000-0000-000000000000}",
    "not-a-guid",
    "",
    "{",
    "}",
    "{}",
    "../../outside",
    "{../../../etc}",
    "%7B00000000-0000-0000-0000-000000000000%7D",
    "{" + "A" * 5000 + "}",
    "{12345678-1234-1234-1234-1234567890AB}x",
    "\u0661" * 8 + "-1234-1234-1234-1234567890ab",
]


def random_guid(draw: st.DrawFn) -> str:
    return "{" + str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1)))).upper() + "}"


# ---- cases --------------------------------------------------------------------------------------


def pick_session(draw: st.DrawFn, w: World, *, open_only: bool) -> Sess | None:
    cands = [s for s in w.sessions if not s.held and (s.state == "open" or not open_only)]
    if not cands:
        return None
    recent = cands[-40:]
    return draw(st.sampled_from(recent))


def bits_headers(draw: st.DrawFn, ptype: str, sid: str | None) -> list[tuple[str, str]]:
    h = [(draw(header_name("BITS-Packet-Type")), ptype)]
    if sid is not None:
        h.append((draw(header_name("BITS-Session-Id")), sid))
    if draw(st.integers(0, 9)) == 0:  # a duplicate of the packet type or the session
        h.append(draw(st.sampled_from(h)))
    return h


def do_create(
    draw: st.DrawFn, w: World, url: str | None = None, *, lifecycle: bool = False
) -> Sess | None:
    url = url if url is not None else draw(dest(w))
    ptype = "Create-Session" if lifecycle else draw(_case_variants("Create-Session"))
    h = bits_headers(draw, ptype, None if lifecycle or draw(st.booleans()) else random_guid(draw))
    proto = PROTOCOL if lifecycle else draw(protocols())
    if proto is not None:
        h.append((draw(header_name("BITS-Supported-Protocols")), proto))
    body = b"" if lifecycle or draw(st.integers(0, 9)) else b"unexpected"
    if not lifecycle:
        h += draw(extra_headers())
    req = Req(
        url=url,
        headers=h,
        body=body,
        mode="whole" if lifecycle else draw(st.sampled_from(["whole"] * 8 + ["slow"])),
        http_ok=_http_ok(url, h),
    )
    w.case_desc += f" create {url[:60]!r}"
    a = send(w, req)
    if a is None or a.status != 200:
        if lifecycle and a is not None and a.status >= 500:
            w.fail(f"Create-Session of {url!r} answered {a.status}")
        return None
    sid = a.headers.get("bits-session-id")
    if not sid:
        w.fail(f"Create-Session 200 without a session id: {a.headers}")
        return None
    rel = _rel(url)
    if rel is None:
        w.fail(f"Create-Session accepted {url!r}, which names nothing under the root")
        rel = ("?",)
    s = Sess(sid=sid, url=url, rel=rel, salt=draw(st.integers(0, 250)))
    w.sessions.append(s)
    if not w.session_exists(s):
        w.fail(f"Create-Session answered {sid} but its directory does not exist")
    return s


def _http_ok(url: str, headers: list[tuple[str, str]]) -> bool:
    """Whether aiohttp's parser is expected to accept the request (then the application
    answers it, with an Ack)."""
    if not url.startswith("/") or len(url) > 8000 or any(ord(c) > 126 or ord(c) < 33 for c in url):
        return False
    names = [k.lower() for k, _ in headers]
    if any(names.count(n) > 1 for n in SINGLETONS):
        return False  # aiohttp refuses a repeated Content-Range, Host, ... (RFC 9110 §5.3)
    return all(len(v) <= 8000 and all(32 <= ord(c) < 127 for c in v) for _, v in headers)


def _rel(url: str) -> tuple[str, ...] | None:
    from urllib.parse import unquote

    if not url.startswith("/"):
        return None
    parts = [unquote(p) for p in url.split("?")[0].split("#")[0][1:].split("/")]
    if any(p in ("", ".", "..") or "/" in p for p in parts):
        return None
    return tuple(parts)


@st.composite
def range_case(draw: st.DrawFn, w: World, s: Sess) -> tuple[str | None, int, int, bytes, str]:
    """(Content-Range value, first, last, body, label) for a fragment on s."""
    total = w.meta_total(s)
    T = total if total is not None else draw(st.sampled_from([0, 1, 2, 100, 4096, 70_000, 300_000]))
    r = s.received
    kind = draw(
        st.sampled_from(
            [
                "next",
                "next",
                "next",
                "next",
                "overlap",
                "overlap",
                "gap",
                "beyond",
                "total",
                "star",
                "negative",
                "reversed",
                "malformed",
                "huge",
                "tail",
                "whole",
                "tooLarge",
            ]
        )
    )

    def body(first: int, last: int) -> bytes:
        n = last - first + 1
        if n <= 0:
            return b""
        cut = max(0, min(n, r - first))
        return wrong(s.salt, first, cut) + content(s.salt, first + cut, n - cut)

    if kind in ("next", "overlap", "tail", "whole") and r < T:
        if kind == "overlap" and r > 0:
            first = r - draw(st.integers(1, min(r, 5000)))
        elif kind == "whole":
            first = 0
        else:
            first = r
        n = draw(st.integers(1, min(T - first, 65_536)))
        if kind == "tail":
            n = T - first
        last = first + n - 1
        return f"bytes {first}-{last}/{T}", first, last, body(first, last), kind
    if kind == "gap" and r + 1 < T:
        first = draw(st.integers(r + 1, T - 1))
        last = draw(st.integers(first, min(T - 1, first + 1000)))
        return f"bytes {first}-{last}/{T}", first, last, body(first, last), kind
    if kind == "beyond":
        first = draw(st.integers(0, max(r, 0)))
        last = T + draw(st.integers(0, 100))
        return f"bytes {first}-{last}/{T}", first, last, body(first, min(last, first + 200)), kind
    if kind == "total":
        T2 = T + draw(st.sampled_from([-1, 1, 1000, -T]))
        first = r
        last = max(first, min(T2 - 1, first + 100))
        return f"bytes {first}-{last}/{T2}", first, last, body(first, last), kind
    if kind == "tooLarge":
        T2 = MAX_UPLOAD + draw(st.integers(1, 10**12))
        return f"bytes {r}-{r}/{T2}", r, r, body(r, r), kind
    if kind == "star":
        v = draw(st.sampled_from([f"bytes */{T}", "bytes */0", "bytes 0--1/0", "bytes */*", "*"]))
        return v, 0, -1, b"", kind
    if kind == "negative":
        v = draw(
            st.sampled_from(
                [f"bytes -5-10/{T}", f"bytes -1-0/{T}", f"bytes 0-5/-{T or 1}", f"bytes {r}--5/{T}"]
            )
        )
        return v, 0, 5, body(0, 5), kind
    if kind == "reversed":
        return f"bytes {r + 5}-{r}/{T}", r, r + 5, body(r, r + 5), kind
    if kind == "huge":
        big = draw(st.sampled_from(["9" * 30, str(2**63), str(2**64 + 1), "1" + "0" * 5000]))
        v = draw(
            st.sampled_from(
                [f"bytes {big}-{big}/{big}", f"bytes 0-{big}/{big}", f"bytes {r}-{r}/{big}"]
            )
        )
        return v, r, r, body(r, r), kind
    bad: str | None = draw(
        st.sampled_from(
            [
                None,
                "",
                "bytes",
                f"bytes={r}-{r}/{T}",
                f"{r}-{r}/{T}",
                f"bytes {r}-{r}",
                f"BYTES {r}-{r}/{T}",
                f"bytes {r} - {r} / {T}",
                f"bytes {r}-{r}/{T}, bytes 0-0/{T}",
                f"bytes \u0661-\u0661/{T}",
                f"bits {r}-{r}/{T}",
                f"bytes {r}-{r}/{T}x",
                f"bytes 0x0-0x1/{T}",
            ]
        )
    )
    return bad, r, r, body(r, r), "malformed"


def do_fragment(draw: st.DrawFn, w: World, s: Sess, *, lifecycle: bool = False) -> Ans | None:
    rng_v, first, last, body, label = draw(range_case(w, s))
    if lifecycle and label not in ("next", "overlap", "tail", "whole"):
        label += "!"
    ptype = "Fragment" if lifecycle else draw(_case_variants("Fragment"))
    sid = s.sid if lifecycle else draw(sid_variants(s))
    h = bits_headers(draw, ptype, sid)
    if rng_v is not None:
        h.append((draw(header_name("Content-Range")), rng_v))
        if draw(st.integers(0, 19)) == 0:
            h.append(("Content-Range", f"bytes 0-0/{first + 1}"))
    if not lifecycle:
        h += draw(extra_headers())
    url = s.url if lifecycle or draw(st.integers(0, 9)) else draw(dest(w))
    cl: int | None = -1
    mode = "whole"
    r = draw(st.integers(0, 99))
    if not lifecycle or r < 30:
        if r < 8:
            mode = "cut"
        elif r < 12:
            mode = "halfclose"
        elif r < 14 and len(w.held) < MAX_HELD:
            mode = "hold"
        elif r < 18:
            mode = "chunked"
        elif r < 22:
            mode = "slow"
        elif r < 26:
            cl = len(body) + draw(st.sampled_from([-1, 1, 100]))  # disagrees with the body
            if cl < 0:
                cl = 0
        elif r < 28:
            cl = None
        elif r < 30:
            cl = len(body)  # the bytes past Content-Length must never be stored
            body = body + b"GARBAGE-AFTER-THE-BODY" * draw(st.integers(1, 3))
    if mode in ("cut", "halfclose", "hold") and not body:
        mode = "whole"
    req = Req(
        url=url,
        headers=h,
        body=body,
        content_length=cl,
        mode=mode,
        http_ok=_http_ok(url, h) and (cl is not None or not body or mode == "chunked"),
    )
    if cl is not None and cl != -1 and cl > len(body):
        # a body shorter than its Content-Length: the server waits for the rest; close after
        req.mode = "halfclose" if mode == "whole" else mode
    if req.mode in ("cut", "halfclose"):
        req.http_ok = False  # an incomplete request: the HTTP parser may answer it (400)
    if cl is not None and cl != -1 and cl < len(body):
        # Bytes past Content-Length are the start of a next request on the connection; when
        # they are not HTTP and arrive in the same read, aiohttp's parser answers 400 for the
        # whole read and drops the request it had already parsed: no Ack is owed then (the
        # stored bytes are still checked below).
        req.http_ok = False
    w.case_desc += f" frag[{label} {rng_v!r} {req.mode} cl={cl}]"
    size_before = w.data_size(s)
    a = send(w, req, s)
    cut = req.mode in ("cut", "halfclose", "hold") or a is None
    if cut and (req.mode == "hold" or w.session_exists(s)):
        s.unsettled = True
    after = w.data_size(s)
    if size_before is not None and after is not None and after < size_before:
        w.fail(f"{s.sid}: stored bytes went down from {size_before} to {after}")
    n = stated(a)
    if n is not None and not s.held:
        check_stated(w, s, n)
    return a


def check_stated(w: World, s: Sess, n: int) -> None:
    size = w.data_size(s)
    if size is None:
        w.fail(f"{s.sid}: the server states {n} received but the session has no data")
        return
    if size != n:
        w.fail(f"{s.sid}: the server states {n} received, {size} bytes are stored")
    elif n < s.received and not s.unsettled:
        w.fail(f"{s.sid}: the received offset went back from {s.received} to {n}")
    check_data(w, s, size)
    s.received = n
    s.unsettled = False


def check_data(w: World, s: Sess, size: int) -> None:
    try:
        data = (w.session_dir(s) / "data").read_bytes()[:size]
    except FileNotFoundError:
        return
    want = content(s.salt, 0, len(data))
    if data != want:
        bad = next(i for i in range(len(data)) if data[i] != want[i])
        w.fail(f"{s.sid}: stored bytes differ from the upload's at offset {bad} of {len(data)}")


def do_close_cancel(
    draw: st.DrawFn, w: World, s: Sess, which: str, *, lifecycle: bool = False
) -> None:
    ptype = which if lifecycle else draw(_case_variants(which))
    sid = s.sid if lifecycle else draw(sid_variants(s))
    h = bits_headers(draw, ptype, sid)
    url = s.url if lifecycle or draw(st.integers(0, 7)) else draw(dest(w))
    body = b"" if lifecycle or draw(st.integers(0, 9)) else b"x"
    req = Req(url=url, headers=h, body=body, http_ok=_http_ok(url, h))
    w.case_desc += f" {which} {s.sid[:9]}"
    total = w.meta_total(s)
    size = w.data_size(s)
    a = send(w, req)
    if a is None:
        return
    canon = which.lower() == ptype.strip().lower()
    if which == "Close-Session" and a.status == 200 and canon and s.state == "open":
        if total is None:
            total = 0
        if size != total:
            w.fail(f"Close-Session of {s.sid} answered 200 with {size} of {total} bytes stored")
        s.state = "closed"
        prev = w.committed.get(s.rel)
        if prev is not None and prev is not s:
            w.fail(f"{s.url}: a second upload was stored over {prev.sid} without --allow-overwrite")
        w.committed[s.rel] = s
        verify_committed(w, s, total)
    elif which == "Cancel-Session" and a.status == 200 and canon and s.state == "open":
        s.state = "cancelled"
        if w.session_exists(s):
            w.fail(f"Cancel-Session of {s.sid} answered 200 but the session is still there")
    elif a.status == 200 and canon and s.state in ("cancelled", "gone"):
        w.fail(f"{which} of a {s.state} session {s.sid} answered 200")
    if s.state == "open" and not w.session_exists(s):
        s.state = "gone"  # deleted by the server (an incomplete Close, say)


def verify_committed(w: World, s: Sess, total: int) -> None:
    w.stored_total[s.sid] = total
    p = w.root.joinpath(*s.rel)
    try:
        st_ = os.lstat(p)
    except FileNotFoundError:
        w.fail(f"Close-Session of {s.sid} answered 200 but {s.url} is not in the root")
        return
    if not stat.S_ISREG(st_.st_mode):
        w.fail(f"{s.url} is not a regular file after Close-Session")
        return
    data = p.read_bytes()
    if data != content(s.salt, 0, total):
        w.fail(
            f"{s.url}: the stored upload ({len(data)} bytes) differs from what was sent "
            f"({total} bytes)"
        )


# ---- case kinds ---------------------------------------------------------------------------------


def case_lifecycle(draw: st.DrawFn, w: World) -> None:
    """Create → fragments with random edge cases → Close or Cancel (or left open)."""
    w.names += 1
    url = "/" + draw(GOOD_DIRS) + f"life{w.names}"
    s = do_create(draw, w, url, lifecycle=True)
    if s is None:
        return
    for _ in range(draw(st.integers(1, 6))):
        if s.held or s.state != "open":
            break
        a = do_fragment(draw, w, s, lifecycle=True)
        if a is not None and a.status == 400 and not w.session_exists(s):
            s.state = "gone"
        if draw(st.integers(0, 3)) == 0:
            get_before_close(w, s)
    if s.held or s.state != "open":
        return
    end = draw(st.sampled_from(["close", "close", "cancel", "open", "finish"]))
    if end == "finish":
        finish(w, s)
        end = "close"
    if end == "close":
        do_close_cancel(draw, w, s, "Close-Session", lifecycle=True)
    elif end == "cancel":
        do_close_cancel(draw, w, s, "Cancel-Session", lifecycle=True)


def finish(w: World, s: Sess) -> None:
    """Send the rest of s in order (after a probe settles its offset)."""
    total = w.meta_total(s)
    if total is None:
        total = 3000
    probe(w, s)
    if s.state != "open":
        return
    off = s.received
    while off < total:
        n = min(total - off, 50_000)
        a = checked_fragment(w, s, off, n, total)
        if a is None or a.status != 200:
            return
        off = s.received


def checked_fragment(w: World, s: Sess, off: int, n: int, total: int) -> Ans | None:
    h = [("BITS-Packet-Type", "Fragment"), ("BITS-Session-Id", s.sid)]
    if n:
        h.append(("Content-Range", f"bytes {off}-{off + n - 1}/{total}"))
    else:
        h.append(("Content-Range", f"bytes */{total}"))
    cut = max(0, min(n, s.received - off))
    body = wrong(s.salt, off, cut) + content(s.salt, off + cut, n - cut)
    w.checks += 1
    w.requests -= 1  # counted as a check, not a fuzz request
    a = send(w, Req(url=s.url, headers=h, body=body))
    v = stated(a)
    if v is not None:
        check_stated(w, s, v)
    elif a is not None and a.status == 500 and not w.session_exists(s):
        s.state = "gone"
    return a


def probe(w: World, s: Sess) -> None:
    """Make the server state s's offset, storing nothing new (or exactly the last byte)."""
    if s.state != "open" or s.held:
        return
    if not w.session_exists(s):
        if s.state == "open":
            s.state = "gone"
        return
    total = w.meta_total(s)
    size = w.data_size(s) or 0
    if total is None:
        if size:
            w.fail(f"{s.sid}: {size} bytes stored before any total was accepted")
        return
    if total == 0:
        checked_fragment(w, s, 0, 0, 0)
    elif size < total - 1:
        a = checked_fragment(w, s, total - 1, 1, total)
        if a is not None and a.status not in (416, 500):
            w.fail(f"{s.sid}: probe beyond the offset answered {a.status}")
    elif size == total - 1:
        checked_fragment(w, s, total - 1, 1, total)
    else:
        checked_fragment(w, s, 0, 1, total)


def get_before_close(w: World, s: Sess) -> None:
    w.requests += 1
    a = send_get(w, s.url)
    if a is not None and a.status == 200 and s.rel not in w.committed:
        w.fail(f"GET {s.url} answered 200 before its Close-Session")


def send_get(w: World, url: str, extra: str = "") -> Any:
    s = w.connect()
    try:
        s.sendall(f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode())
        a = read_answer(s, "GET")
    except (ConnectionError, TimeoutError):
        return None
    finally:
        s.close()
    if a.status >= 500:
        w.fail(f"GET {url[:80]} answered {a.status}")
    return a


def case_create(draw: st.DrawFn, w: World) -> None:
    do_create(draw, w)


def case_fragment(draw: st.DrawFn, w: World) -> None:
    s = pick_session(draw, w, open_only=draw(st.integers(0, 4)) > 0)
    if s is None:
        s = do_create(draw, w, lifecycle=True)
        if s is None:
            return
    do_fragment(draw, w, s)


def case_close(draw: st.DrawFn, w: World) -> None:
    s = pick_session(draw, w, open_only=draw(st.integers(0, 3)) > 0)
    if s is not None:
        do_close_cancel(draw, w, s, draw(st.sampled_from(["Close-Session", "Cancel-Session"])))


def case_ping(draw: st.DrawFn, w: World) -> None:
    h = bits_headers(
        draw, draw(_case_variants("Ping")), draw(st.sampled_from([None, "x", PROTOCOL]))
    )
    h += draw(extra_headers())
    url = draw(dest(w))
    w.case_desc += f" ping {url[:40]!r}"
    send(
        w,
        Req(
            url=url,
            headers=h,
            body=draw(st.sampled_from([b"", b"", b"body"])),
            http_ok=_http_ok(url, h),
        ),
    )


def case_unknown(draw: st.DrawFn, w: World) -> None:
    """Unknown or missing packet types, other methods, the POST override."""
    url = draw(dest(w))
    ptype = draw(
        st.sampled_from(
            [
                "",
                "Ack",
                "Frag",
                "Create",
                "Fragment-Session",
                "Ping ",
                "PING\tX",
                "Close",
                "*",
                "ping" * 2000,
                "Create-Session\x00",
            ]
        )
    )
    method = draw(
        st.sampled_from(
            [
                "BITS_POST",
                "BITS_POST",
                "POST",
                "PUT",
                "DELETE",
                "bits_post",
                "BITS_GET",
                "OPTIONS",
                "PATCH",
                "HEAD",
            ]
        )
    )
    h: list[tuple[str, str]] = []
    if draw(st.booleans()):
        h.append((draw(header_name("BITS-Packet-Type")), ptype))
    if method == "POST" and draw(st.booleans()):
        h.append(
            (
                draw(header_name("X-Http-Method-Override")),
                draw(st.sampled_from(["BITS_POST", "bits_post", " BITS_POST ", "GET"])),
            )
        )
        h.append(("BITS-Packet-Type", draw(st.sampled_from(PACKET_NAMES))))
        h.append(("BITS-Supported-Protocols", PROTOCOL))
    w.case_desc += f" {method} {ptype[:20]!r}"
    send(
        w, Req(method=method, url=url, headers=h, http_ok=_http_ok(url, h) and "\x00" not in ptype)
    )


def case_forged(draw: st.DrawFn, w: World) -> None:
    """A packet on a forged id, or on a session that is closed, cancelled, gone or another
    URL's."""
    ptype = draw(st.sampled_from(PACKET_NAMES[2:]))
    old = pick_session(draw, w, open_only=False)
    r = draw(st.integers(0, 3))
    if r == 0 or old is None:
        sid = draw(st.sampled_from(FORGED_IDS)) if draw(st.booleans()) else random_guid(draw)
        url = draw(dest(w))
    else:
        sid = draw(sid_variants(old))
        url = old.url if r == 1 else draw(dest(w))
    h = bits_headers(draw, ptype, sid)
    h.append(("Content-Range", "bytes 0-0/1"))
    w.case_desc += f" forged {ptype} {sid[:40]!r} {url[:40]!r}"
    target = old if (old is not None and r != 0) else None
    # a real id on its own URL is a real fragment: it carries the session's byte 0
    body = b"" if ptype != "Fragment" else content(target.salt, 0, 1) if target else b"\x00"
    size_before = w.data_size(target) if target is not None else None
    a = send(w, Req(url=url, headers=h, body=body, http_ok=_http_ok(url, h)))
    if target is not None:
        if (
            a is not None
            and a.status == 200
            and ptype == "Cancel-Session"
            and target.state == "open"
        ):
            target.state = "cancelled"
        elif (
            a is not None
            and a.status == 200
            and ptype == "Close-Session"
            and target.state == "open"
        ):
            if url == target.url:  # a Close by id variant: treat as its real close
                target.state = "closed"
                w.committed[target.rel] = target
                verify_committed(w, target, w.meta_total(target) or 0)
            else:
                w.fail(f"Close-Session of {target.sid} on another URL {url!r} answered 200")
        if target.state == "open" and not w.session_exists(target):
            target.state = "gone"
        n = stated(a)
        if n is not None and target.state == "open":
            check_stated(w, target, n)
        elif size_before is not None and ptype == "Fragment" and target.state == "open":
            after = w.data_size(target)
            if after is not None and after < size_before:
                w.fail(f"{target.sid}: a forged fragment shrank it")


def case_garbage(draw: st.DrawFn, w: World) -> None:
    """Malformed HTTP, huge headers and URLs, half-sent heads (closed or held open)."""
    port = w.server.port
    kind = draw(
        st.sampled_from(
            [
                "bigheader",
                "manyheaders",
                "bigurl",
                "badline",
                "headcut",
                "headhold",
                "dupcl",
                "nul",
                "binary",
                "pipeline",
                "idle",
                "lf",
                "obsfold",
                "te-cl",
            ]
        )
    )
    w.case_desc += f" garbage {kind}"
    base = "BITS-Packet-Type: Ping\r\nContent-Length: 0\r\n"
    raw: bytes
    if kind == "bigheader":
        n = draw(st.sampled_from([4097, 9000, 70_000, 1_000_000]))
        raw = f"BITS_POST /x HTTP/1.1\r\nHost: h\r\n{base}X-Big: {'a' * n}\r\n\r\n".encode()
    elif kind == "manyheaders":
        n = draw(st.sampled_from([101, 1000, 20_000]))
        raw = (
            f"BITS_POST /x HTTP/1.1\r\nHost: h\r\n{base}".encode()
            + b"".join(b"X-%d: v\r\n" % i for i in range(n))
            + b"\r\n"
        )
    elif kind == "bigurl":
        n = draw(st.sampled_from([5000, 9000, 100_000]))
        raw = f"BITS_POST /{'u' * n} HTTP/1.1\r\nHost: h\r\n{base}\r\n".encode()
    elif kind == "badline":
        raw = draw(
            st.sampled_from(
                [
                    b"BITS_POST\r\n\r\n",
                    b"BITS_POST /x\r\n\r\n",
                    b"BITS_POST /x HTTP/9.9\r\n\r\n",
                    b" /x HTTP/1.1\r\n\r\n",
                    b"BITS POST /x HTTP/1.1\r\n\r\n",
                    b"\r\n\r\n\r\n",
                    b"BITS_POST /x HTTP/1.1\r\nNoColon\r\n\r\n",
                    b"BITS_POST /x HTTP/1.1\r\n: empty\r\n\r\n",
                ]
            )
        )
    elif kind in ("headcut", "headhold"):
        req = Req(
            url="/x",
            headers=[
                ("BITS-Packet-Type", "Create-Session"),
                ("BITS-Supported-Protocols", PROTOCOL),
            ],
            mode=kind if (kind == "headcut" or len(w.held) < MAX_HELD) else "headcut",
        )
        send(w, req)
        return
    elif kind == "dupcl":
        raw = (
            b"BITS_POST /x HTTP/1.1\r\nHost: h\r\nBITS-Packet-Type: Ping\r\n"
            b"Content-Length: 0\r\nContent-Length: 5\r\n\r\nhello"
        )
    elif kind == "nul":
        raw = (
            b"BITS_POST /x\x00y HTTP/1.1\r\nHost: h\r\nBITS-Packet-Type: Ping\x00\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
    elif kind == "binary":
        raw = bytes(draw(st.binary(min_size=1, max_size=300)))
    elif kind == "pipeline":
        one = f"BITS_POST /x HTTP/1.1\r\nHost: h\r\n{base}\r\n".encode()
        raw = one * draw(st.integers(2, 50))
    elif kind == "idle":
        s = w.connect()
        if len(w.held) < MAX_HELD:
            w.held.append(Held(s, w.cases + draw(st.integers(1, 15)), None))
        else:
            s.close()
        w.requests += 1
        return
    elif kind == "lf":
        raw = f"BITS_POST /x HTTP/1.1\nHost: h\n{base}\n".replace("\r\n", "\n").encode()
    elif kind == "obsfold":
        raw = (
            b"BITS_POST /x HTTP/1.1\r\nHost: h\r\nBITS-Packet-Type: Pi\r\n ng\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
    else:
        raw = (
            b"BITS_POST /x HTTP/1.1\r\nHost: h\r\nBITS-Packet-Type: Ping\r\n"
            b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n"
        )
    del port
    send(w, Req(raw=raw, http_ok=False))


def case_get(draw: st.DrawFn, w: World) -> None:
    url = draw(dest(w))
    w.case_desc += f" GET {url[:60]!r}"
    w.requests += 1
    a = send_get(
        w,
        url if url.startswith("/") else "/" + url,
        draw(
            st.sampled_from(
                [
                    "",
                    "Range: bytes=0-0\r\n",
                    "Range: bytes=-1\r\n",
                    "Range: bytes=99999999-\r\n",
                    'If-Range: "x"\r\nRange: bytes=0-0\r\n',
                ]
            )
        ),
    )
    if a is None or a.status != 200:
        return
    rel = _rel(url)
    body = a.body
    if b"sentinel" in body or body == b"\x00" * 100:
        w.fail(f"GET {url!r} served a file outside the root")
    if rel is not None and rel[:1] == ("state",):
        w.fail(f"GET {url!r} served the state directory")


CASES = [
    (case_lifecycle, 20),
    (case_fragment, 30),
    (case_create, 8),
    (case_close, 8),
    (case_ping, 5),
    (case_unknown, 6),
    (case_forged, 8),
    (case_garbage, 8),
    (case_get, 4),
]
_KIND_LIST = [fn for fn, weight in CASES for _ in range(weight)]


# ---- invariants ---------------------------------------------------------------------------------


def check_world(w: World, *, full: bool) -> None:
    if not w.server.alive():
        w.fail(f"ferry-server died:\n{w.server.log(3000)}")
        raise ServerDied
    if _outside(w) != w.outside_before:
        after = _outside(w)
        diff = sorted(
            k for k in set(after) | set(w.outside_before) if after.get(k) != w.outside_before.get(k)
        )
        w.fail(f"outside the root changed: {diff[:10]}")
        w.outside_before = after
    check_root(w)
    check_log(w)
    release_due(w)
    if full:
        live = [s for s in w.sessions if s.state == "open" and not s.held]
        sample = live[-30:] + w.rng.sample(live[:-30], min(10, max(0, len(live) - 30)))
        for s in sample:  # the recent ones and a few older (all of them at the end)
            probe(w, s)
        good_client(w)


class ServerDied(Exception):
    pass


def check_root(w: World) -> None:
    now = _tree(w.root, names_only=set(w.committed))  # stored uploads: checked at the end
    for rel, entry in now.items():
        parts = tuple(rel.split("/"))
        if rel in w.root_before:
            if entry != w.root_before[rel] and not stat.S_ISDIR(entry[0]):
                w.fail(f"a file that was in the root changed: {rel}")
                w.root_before[rel] = entry
            continue
        if parts in w.committed:
            continue
        if parts[-1].startswith(".ferry-upload-"):
            w.fail(f"a temporary upload file was left: {rel}")
        else:
            w.fail(f"{rel} appeared in the root without a Close-Session answered 200")
        w.root_before[rel] = entry  # report each once


def check_log(w: World) -> None:
    log = w.server._log
    try:
        with open(log, "rb") as f:
            f.seek(w.log_offset)
            new = f.read()
    except FileNotFoundError:
        return
    w.log_offset += len(new)
    text = new.decode("utf-8", "replace")
    if any(m in text for m in TRACE_MARKS):
        w.fail(f"traceback in the server's log:\n{text[-3000:]}")


def release_due(w: World, *, everything: bool = False) -> None:
    keep = []
    for h in w.held:
        if everything or h.release_at <= w.cases:
            h.sock.close()
            if h.session is not None:
                h.session.held = False
                h.session.unsettled = True
        else:
            keep.append(h)
    w.held = keep


def good_client(w: World) -> None:
    """Ping, a whole upload in fragments, Close, GET and a ranged GET: all must work."""
    w.good_runs += 1
    w.names += 1
    url = f"/d/good{w.names}.bin"
    desc, w.case_desc = w.case_desc, "good client"
    try:
        w.checks += 1
        from harness.upserver import raw_request

        a = raw_request(
            w.server.port, "BITS_POST", url, {"BITS-Packet-Type": "Ping"}, timeout=ANSWER_TIMEOUT
        )
        if a.status != 200:
            w.fail(f"Ping answered {a.status}")
            return
        w.checks += 1
        a = raw_request(
            w.server.port,
            "BITS_POST",
            url,
            {"BITS-Packet-Type": "Create-Session", "BITS-Supported-Protocols": PROTOCOL},
            timeout=ANSWER_TIMEOUT,
        )
        sid = a.h("BITS-Session-Id")
        if a.status != 200 or not sid:
            w.fail(f"Create-Session answered {a.status} {a.headers}")
            return
        s = Sess(sid=sid, url=url, rel=("d", f"good{w.names}.bin"), salt=w.rng.randrange(251))
        w.sessions.append(s)
        total = w.rng.choice([0, 1, 5000, 70_000, 200_000])
        off = 0
        while True:
            n = min(total - off, w.rng.randint(1, 90_000))
            a2 = checked_fragment(w, s, off, n, total)
            if a2 is None or a2.status != 200:
                w.fail(f"good fragment at {off} answered {a2 and a2.status}")
                return
            off = s.received
            if off >= total:
                break
        w.checks += 1
        a = raw_request(
            w.server.port,
            "BITS_POST",
            url,
            {"BITS-Packet-Type": "Close-Session", "BITS-Session-Id": sid},
            timeout=ANSWER_TIMEOUT,
        )
        if a.status != 200:
            w.fail(f"good Close-Session answered {a.status} {a.headers}")
            return
        s.state = "closed"
        w.committed[s.rel] = s
        verify_committed(w, s, total)
        w.checks += 2
        a = raw_request(w.server.port, "GET", url, timeout=ANSWER_TIMEOUT)
        if a.status != 200 or a.body != content(s.salt, 0, total):
            w.fail(f"good GET answered {a.status} with {len(a.body)} bytes, not the upload")
        if total > 10:
            a = raw_request(
                w.server.port, "GET", url, {"Range": "bytes=3-9"}, timeout=ANSWER_TIMEOUT
            )
            if a.status != 206 or a.body != content(s.salt, 3, 7):
                w.fail(f"good ranged GET answered {a.status} {a.body!r}")
    except (OSError, ValueError) as exc:
        w.fail(f"the good client failed: {exc!r}")
    finally:
        w.case_desc = desc


# ---- the phase ----------------------------------------------------------------------------------


def _batch(
    w: World,
    batch_seed: int,
    examples: int,
    steps: int,
    target: int,
    deadline: float,
    hook: Callable[[World], None] | None,
) -> None:
    # Hypothesis starts every run with its simplest example (each first choice), and a
    # batch often ends early (see run): the kinds are shuffled per batch so that the
    # simplest example is not always the same kind of case
    kinds = list(_KIND_LIST)
    random.Random(batch_seed).shuffle(kinds)

    @hseed(batch_seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        derandomize=False,
    )
    @given(st.data())
    def run(data: st.DataObject) -> None:
        for _ in range(steps):
            if w.requests >= target or time.monotonic() > deadline:
                return
            fn = kinds[data.draw(st.integers(0, len(kinds) - 1), label="kind")]
            w.cases += 1
            w.case_desc = fn.__name__[5:]
            w.kinds[w.case_desc] = w.kinds.get(w.case_desc, 0) + 1
            try:
                fn(data.draw, w)  # type: ignore[arg-type]
            except ServerDied:
                raise
            except FlakyStrategyDefinition:
                # Cases depend on the server's state, which hypothesis cannot replay: when
                # two examples share a prefix and then draw differently, hypothesis calls
                # the generation flaky; the example ends there (its requests were sent and
                # are checked), the next one starts
                w.flaky += 1
                check_world(w, full=False)
                return
            except Exception as exc:  # a harness error is a failure too, not a stop
                w.fail(f"the case raised {exc!r}")
            if hook is not None:
                hook(w)
            check_world(w, full=w.cases % CHECK_EVERY == 0)

    try:
        with warnings.catch_warnings():
            # strategies over the world's recent sessions and the 5 KB attack values have
            # long reprs, which hypothesis warns about; nothing is wrong
            warnings.simplefilter("ignore", HypothesisWarning)
            run()
    except ServerDied:
        raise
    except FlakyStrategyDefinition:
        w.flaky += 1  # hypothesis stopped the batch (see run); the next batch goes on
    except Exception as exc:  # hypothesis giving up on a batch another way
        w.report.note(f"server fuzz batch {batch_seed}: {exc!r}")


def server_fuzz_phase(
    work: Path,
    report: Report,
    *,
    seed: int,
    q: bool,
    requests: int = 10_000,
    duration: float | None = None,
    hook: Callable[[World], None] | None = None,
) -> None:
    """Fuzz a real ferry-server with ``requests`` raw requests (module docstring); counts
    into ``report.server_requests`` / ``report.server_checks``, failures as ``server-fuzz``.
    ``hook(world)`` runs after every case, before its checks (the tests plant violations
    with it, to see the invariants catch them)."""
    if requests <= 0:
        return
    duration = duration if duration is not None else (150.0 if q else 1800.0)
    work.mkdir(parents=True, exist_ok=True)
    # on tmpfs when there is one: the server fsyncs every Ack (what a fsync costs is not
    # what is fuzzed here; the kill phases test durability) — 5-10x more requests a second
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        work = Path(tempfile.mkdtemp(prefix="ferry-sfz-", dir=shm))
    root, state, outside = _layout(work)
    server = FerryServer(root, ["--max-upload-size", str(MAX_UPLOAD)], state_dir=state)
    say(f"server fuzz: {requests} raw requests to a ferry-server (seed {seed})")
    t0 = time.monotonic()
    server.start()
    w = World(
        server=server,
        base=work,
        root=root,
        state=state,
        outside=outside,
        report=report,
        rng=random.Random(seed),
    )
    w.outside_before = _outside(w)
    w.root_before = _tree(root)
    deadline = t0 + duration
    cpu0 = 0.0
    try:
        cpu0 = server.cpu_seconds()
        good_client(w)
        batch = 0
        while w.requests < requests and time.monotonic() < deadline:
            _batch(w, seed * 1000 + batch, 50, 10, requests, deadline, hook)
            batch += 1
        if w.requests < requests:
            w.fail(f"only {w.requests} of {requests} requests within {duration:.0f} s")
        release_due(w, everything=True)
        time.sleep(0.2)
        check_world(w, full=True)
        for s in list(w.sessions):
            probe(w, s)
        # the end: every open session cancelled leaves nothing behind
        for s in w.sessions:
            if s.state == "open" and not s.held:
                a = send(
                    w,
                    Req(
                        url=s.url,
                        headers=[
                            ("BITS-Packet-Type", "Cancel-Session"),
                            ("BITS-Session-Id", s.sid),
                        ],
                    ),
                )
                w.requests -= 1
                w.checks += 1
                if a is not None and a.status == 200:
                    s.state = "cancelled"
        left = [
            p.name for p in (state / "sessions").iterdir() if p.name.startswith((".new-", ".del-"))
        ]
        if left:
            w.fail(f"half-made or half-deleted session directories left: {left[:5]}")
        check_world(w, full=False)
    except ServerDied:
        pass
    finally:
        cpu = 0.0
        with contextlib.suppress(Exception):
            cpu = server.cpu_seconds() - cpu0
        release_due(w, everything=True)
        code = server.stop() if server.alive() else None
        if code not in (0, None):
            w.fail(f"ferry-server exited with status {code} on SIGTERM")
        check_log(w)
    report.server_requests += w.requests
    report.server_checks += w.checks
    report.server_cases += w.cases
    took = time.monotonic() - t0
    opened = len(w.sessions)
    say(
        f"  server fuzz: {w.cases} cases, {w.requests} fuzz requests, {w.checks} check "
        f"requests, {w.good_runs} good-client runs, {opened} sessions, "
        f"{len(w.committed)} uploads stored, {w.failed} failures, {took:.0f} s, "
        f"{w.flaky} examples cut short by hypothesis's replay check "
        f"(cases: {', '.join(f'{k} {n}' for k, n in sorted(w.kinds.items()))}) "
        f"(server CPU {cpu:.1f} s)"
    )
    if w.failed:
        say(f"  server fuzz: work directory kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
