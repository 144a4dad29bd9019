"""A fast API fuzzer of our own, driven by ferryd's OpenAPI document (harness/hostile.py
uses it next to schemathesis, which generates ~20 cases a second here: too slow for tens
of thousands).

``CaseMaker`` turns each operation of /v1/openapi.json into requests: path parameters
drawn from pools the caller fills (its own jobs and handles, other users' jobs, hostile
strings), query parameters, and bodies generated from the operation's JSON schema
(``$ref``s, enums, bounds, ``oneOf``, nullable types) — positive (valid by the schema,
with hostile string content) or negative (a wrong type, a missing required field, an
unknown field, a value past a bound, a body that is not an object or not JSON). A seeded
``random.Random`` drives it, so a seed replays a run.

``IdClient`` is one keep-alive HTTP connection to ferryd's Unix socket as a given identity
(uid, gid), with a timeout on every request. ``Checker`` judges each answer: never a 5xx,
every error a BITS error body (code + hex HRESULT that belongs to the code), no secret
marker (or its base64, alone or in ``user:password``) anywhere in the status line, headers
or body.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import os
import random
import re
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

HEX_HRESULT = re.compile(r"^0x[0-9A-F]{8}$")

# ---- hostile values -------------------------------------------------------------------

_ODD_STRINGS = [
    "", " ", "a", "x" * 300, "y" * 5000, "z" * 70_000, "\x00", "a\x00b", "\n", "\r\nHost: evil",
    "../../../../etc/passwd", "/etc/shadow", "/", "//", ".", "..", "~root", "$(id)", "`id`",
    "%00", "%2e%2e%2f", "\u202e", "\u0130", "\ufeff", "\U0001f600", "\udcff\udcfe", "\ud800",
    "null", "true", "0", "-1", "1e400", "NaN", "[]", "{}", "' OR 1=1 --", "<script>",
    "S-1-22-1-0", "http://", "https://127.0.0.1:1/", "file:///etc/shadow",
    "ftp://x/", "http://user:pw@127.0.0.1/x", "http://[::1]:0/", "http://127.0.0.1:9/x",
    "X-A: b", "Host: evil", "Authorization: Basic Zm9vOmJhcg==", "X: " + "v" * 20_000,
    "BASIC", "basic", "NEGOTIATE", "SERVER", "PROXY", "PASSPORT", "OVERRIDE", "<local>",
    "TRANSFER_ALWAYS", "TRANSFER_STANDARD|UNRESTRICTED", "job", "token-options", "eof",
]
_ODD_INTS = [0, 1, -1, 2, 4, 5, 31, 32, 255, 3600, 3601, 2**31 - 1, 2**31, 2**32, 2**53 + 1,
             2**63 - 1, 2**63, 2**64, 10**30, -(2**63), -(10**30)]


def _ascii_word(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789-_.") for _ in range(n))


def _unicode_text(rng: random.Random, n: int) -> str:
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.6:
            out.append(chr(rng.randrange(0x20, 0x7F)))
        elif r < 0.8:
            out.append(chr(rng.randrange(0xA0, 0x3000)))
        elif r < 0.9:
            out.append(chr(rng.randrange(0, 0x20)))
        else:
            out.append(chr(rng.choice((0x10000, 0x1F4A9, 0xE000, 0xFFFD, 0x7F, 0x85, 0x2028))))
    return "".join(out)


# ---- values from a JSON schema --------------------------------------------------------


class Values:
    """Random JSON values for a schema of the document (positive) or next to it (negative);
    ``strings`` supplies meaningful strings (paths, URLs) the caller knows of."""

    def __init__(self, doc: Mapping[str, Any], rng: random.Random,
                 strings: Callable[[], str]) -> None:
        self.components = doc.get("components", {}).get("schemas", {})
        self.rng = rng
        self.strings = strings

    def resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        while "$ref" in schema:
            schema = self.components[schema["$ref"].rsplit("/", 1)[1]]
        return schema

    def string(self, schema: Mapping[str, Any]) -> str:
        rng = self.rng
        r = rng.random()
        if r < 0.35:
            s = self.strings()
        elif r < 0.6:
            s = rng.choice(_ODD_STRINGS)
        elif r < 0.8:
            s = _ascii_word(rng, rng.choice((1, 3, 8, 20, 64)))
        else:
            s = _unicode_text(rng, rng.choice((1, 5, 40, 300)))
        lo = schema.get("minLength")
        if isinstance(lo, int) and len(s) < lo and rng.random() < 0.9:
            s = s + "m" * (lo - len(s))
        hi = schema.get("maxLength")
        if isinstance(hi, int) and len(s) > hi and rng.random() < 0.9:
            s = s[:hi]
        return s

    def integer(self, schema: Mapping[str, Any]) -> int:
        rng = self.rng
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if rng.random() < 0.3:
            return rng.choice(_ODD_INTS)
        if lo is not None and hi is not None:
            return rng.choice((lo, hi, rng.randint(lo, hi)))
        if lo is not None:
            return rng.choice((lo, lo + 1, lo + rng.randrange(10**rng.randint(1, 12))))
        return rng.randint(-(10**6), 10**6)

    def positive(self, schema: Mapping[str, Any], depth: int = 0) -> Any:
        rng = self.rng
        schema = self.resolve(schema)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return rng.choice(schema["enum"])
        for key in ("oneOf", "anyOf"):
            if key in schema:
                return self.positive(rng.choice(schema[key]), depth + 1)
        kinds = schema.get("type", ["string", "integer", "object", "array", "boolean"])
        kind = rng.choice(kinds) if isinstance(kinds, list) else kinds
        if kind == "null":
            return None
        if kind == "boolean":
            return rng.random() < 0.5
        if kind == "integer":
            return self.integer(schema)
        if kind == "number":
            return rng.choice((0.5, -1.5, 1e300, self.integer(schema)))
        if kind == "string":
            return self.string(schema)
        if kind == "array":
            if depth > 6:
                return []
            n = rng.choice((0, 1, 1, 1, 2, 3, 8)) if "minItems" not in schema else max(
                schema["minItems"], rng.choice((1, 1, 2, 4)))
            item = schema.get("items", {})
            return [self.positive(item, depth + 1) for _ in range(n)]
        # object
        if depth > 6:
            return {}
        props: Mapping[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", ()))
        out: dict[str, Any] = {}
        for name, sub in props.items():
            if name in required or rng.random() < 0.4:
                out[name] = self.positive(sub, depth + 1)
        return out

    def negative(self, schema: Mapping[str, Any], depth: int = 0) -> Any:
        """A value the schema refuses at some level (or, now and then, one it accepts)."""
        rng = self.rng
        schema = self.resolve(schema)
        kinds = schema.get("type")
        props = schema.get("properties")
        if props and rng.random() < 0.7:
            value = self.positive(schema, depth)
            if not isinstance(value, dict):
                return value
            r = rng.random()
            required = list(schema.get("required", ()))
            if r < 0.25 and required:
                value.pop(rng.choice(required), None)
            elif r < 0.45:
                value[rng.choice(("extra", "__proto__", "id", "owner", "state", "Files"))] = (
                    self.wild(depth + 1))
            else:
                name = rng.choice(list(props))
                value[name] = self.negative(props[name], depth + 1)
            return value
        if schema.get("items") and isinstance(kinds, (str, list)) and "array" in kinds and \
                rng.random() < 0.5:
            items = [self.positive(schema["items"], depth + 1) for _ in range(rng.randint(0, 3))]
            items.append(self.negative(schema["items"], depth + 1))
            rng.shuffle(items)
            return items
        if "enum" in schema and rng.random() < 0.5:
            v = str(rng.choice(schema["enum"]))
            return rng.choice((v.upper(), v.lower(), v + " ", " " + v, v * 2, ""))
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if (lo is not None or hi is not None) and rng.random() < 0.6:
            if lo is not None and (hi is None or rng.random() < 0.5):
                return lo - rng.choice((1, 2, 10**20))
            assert hi is not None
            return hi + rng.choice((1, 2, 10**20))
        if isinstance(schema.get("minLength"), int) and rng.random() < 0.4:
            return ""
        return self.wild(depth + 1)

    def wild(self, depth: int = 0) -> Any:
        """Any JSON value at all."""
        rng = self.rng
        r = rng.random()
        if r < 0.15:
            return None
        if r < 0.25:
            return rng.random() < 0.5
        if r < 0.45:
            return rng.choice(_ODD_INTS)
        if r < 0.5:
            return rng.choice((0.0, -0.0, 1.5, 1e308, -1e-308))
        if r < 0.8 or depth > 4:
            return self.string({})
        if r < 0.9:
            return [self.wild(depth + 1) for _ in range(rng.randint(0, 3))]
        return {self.string({})[:20]: self.wild(depth + 1) for _ in range(rng.randint(0, 3))}


# ---- cases ----------------------------------------------------------------------------


@dataclass
class Op:
    method: str
    path: str  # the OpenAPI path template
    spec: Mapping[str, Any]

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def params(self) -> list[str]:
        return re.findall(r"\{(\w+)\}", self.path)

    @property
    def body_schema(self) -> Mapping[str, Any] | None:
        rb = self.spec.get("requestBody")
        if not rb:
            return None
        return rb["content"]["application/json"]["schema"]  # type: ignore[no-any-return]

    @property
    def query(self) -> list[tuple[str, str]]:
        return [(p["name"], p["schema"].get("type", "string"))
                for p in self.spec.get("parameters", ()) if p.get("in") == "query"]


@dataclass
class Case:
    op: Op
    method: str
    target: str  # path + query, as sent
    body: bytes | None
    headers: dict[str, str]
    negative: bool
    refs: dict[str, str] = field(default_factory=dict)  # path parameter -> the raw value
    aim: str = "any"  # "own", "victim", "foreign" or "any": whose object the path names


def operations(doc: Mapping[str, Any]) -> list[Op]:
    ops = []
    for path, methods in doc["paths"].items():
        for method, spec in methods.items():
            ops.append(Op(method.upper(), path, spec))
    return ops


class Pools:
    """What path parameters are drawn from, kept up to date by the caller (thread-safe
    enough: lists replaced or appended whole)."""

    def __init__(self) -> None:
        self.own_jobs: list[str] = []
        self.own_handles: list[str] = []
        self.victim_jobs: list[str] = []  # ids and display names of other users' jobs
        self.fake_handles: list[str] = []  # near misses of other users' handles
        self.paths: list[str] = []  # local names worth trying
        self.urls: list[str] = []  # remote names worth trying
        self.lock = threading.Lock()


_PARAM_ODD = ["", "a", "..", "../..", "%2e%2e", "0" * 36, "00000000-0000-0000-0000-000000000000",
              "ü", "\x00", "a/b", "x" * 3000, "-1", "999999999999999999999", "1.5", " 1"]


class CaseMaker:
    def __init__(self, doc: Mapping[str, Any], rng: random.Random, pools: Pools) -> None:
        self.rng = rng
        self.pools = pools
        self.values = Values(doc, rng, self._meaningful_string)

    def _meaningful_string(self) -> str:
        rng, p = self.rng, self.pools
        r = rng.random()
        if r < 0.4 and p.paths:
            return rng.choice(p.paths)
        if r < 0.8 and p.urls:
            return rng.choice(p.urls)
        if p.own_jobs:
            return rng.choice(p.own_jobs)
        return "x"

    def _param(self, name: str, aim: str) -> str:
        rng, p = self.rng, self.pools
        if name == "job":
            if aim == "own" and p.own_jobs:
                return rng.choice(p.own_jobs[-50:])
            if aim == "victim" and p.victim_jobs:
                return rng.choice(p.victim_jobs)
        elif name == "handle":
            if aim == "own" and p.own_handles:
                return rng.choice(p.own_handles[-50:])
            if aim == "victim" and p.fake_handles:
                return rng.choice(p.fake_handles)
        elif name == "index":
            return str(rng.choice((0, 0, 1, 2, -1, 10**6, 2**64)))
        elif name == "target":
            return rng.choice(("SERVER", "PROXY", "server", "proxy", "NOPE"))
        elif name == "scheme":
            return rng.choice(("BASIC", "DIGEST", "NTLM", "NEGOTIATE", "basic", "PASSPORT", "x"))
        return rng.choice(_PARAM_ODD + [_ascii_word(rng, 8)])

    def make(self, op: Op, negative: bool) -> Case:
        rng = self.rng
        params = op.params
        aim = "any"
        if "job" in params or "handle" in params:
            aim = rng.choices(("own", "victim", "any"), (0.55, 0.25, 0.2))[0]
        refs = {name: self._param(name, aim) for name in params}
        path = op.path
        for name, value in refs.items():
            # Mostly quoted whole; now and then with its slashes left as they are.
            safe = "/" if rng.random() < 0.05 else ""
            path = path.replace("{" + name + "}", quote(value, safe=safe, errors="surrogatepass"))
        query = []
        for name, kind in op.query:
            if rng.random() < 0.5:
                continue
            if kind == "boolean" and not negative:
                value = rng.choice(("true", "false", "1", "0"))
            elif name == "job" and self.pools.victim_jobs and rng.random() < 0.5:
                value = rng.choice(self.pools.victim_jobs)
            else:
                value = self.values.string({})
            query.append(f"{name}={quote(value, safe='', errors='surrogatepass')}")
        if negative and rng.random() < 0.1:
            junk = quote(self.values.string({}), safe="", errors="surrogatepass")
            query.append(f"{_ascii_word(rng, 5)}={junk}")
        target = path + ("?" + "&".join(query) if query else "")
        headers = {"Content-Type": "application/json"}
        body: bytes | None = None
        schema = op.body_schema
        if schema is not None:
            if negative:
                r = rng.random()
                if r < 0.06:
                    body = rng.choice((b"{", b"nope", b"\xff\xfe", b"[1]", b"null", b'"s"',
                                       b"{}" * 3, b'{"a":1,"a":2}', b"\x00"))
                elif r < 0.1:
                    body = None
                elif r < 0.13:
                    headers["Content-Type"] = rng.choice(("text/plain", "application/x-www-form"
                                                          "-urlencoded", "", "application/json; "
                                                          "charset=latin-1"))
                    body = json.dumps(self.values.positive(schema)).encode()
                else:
                    body = json.dumps(self.values.negative(schema)).encode()
            else:
                body = json.dumps(self.values.positive(schema)).encode()
        elif negative and rng.random() < 0.3:
            body = json.dumps(self.values.wild()).encode()
        if op.path.endswith("/metrics") and rng.random() < 0.5:
            headers["Accept"] = rng.choice(("application/openmetrics-text; version=1.0.0",
                                            "text/plain", "*/*", "application/json"))
        return Case(op, op.method, target, body, headers, negative, refs, aim)


# ---- the wire -------------------------------------------------------------------------


class Connector:
    """A child forked once, running as ``identity``, that connects to ferryd's socket on
    request and passes each connection back (SCM_RIGHTS). Forking per connection from a
    threaded harness (ferry's connect_as) deadlocks: each child inherits the other
    children's control sockets and waits for an EOF that never comes; this child closes
    every descriptor it inherited but its own control socket."""

    def __init__(self, sock_path: str, identity: tuple[int, int]) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                keep = child.fileno()
                for name in os.listdir("/proc/self/fd"):
                    fd = int(name)
                    if fd > 2 and fd != keep:
                        with contextlib.suppress(OSError):
                            os.close(fd)
                os.setgroups([])
                os.setgid(identity[1])
                os.setuid(identity[0])
                while child.recv(1):
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    try:
                        s.connect(sock_path)
                        socket.send_fds(child, [b"k"], [s.fileno()])
                    except OSError:
                        child.sendall(b"E")
                    finally:
                        s.close()
            finally:
                os._exit(0)
        child.close()
        self.ctl, self.pid = parent, pid
        self.lock = threading.Lock()

    def connect(self, timeout: float) -> socket.socket:
        with self.lock:
            self.ctl.settimeout(timeout)
            self.ctl.sendall(b"c")
            _msg, fds, _flags, _addr = socket.recv_fds(self.ctl, 16, 1)
        if not fds:
            raise ConnectionRefusedError("the connector could not connect")
        return socket.socket(fileno=fds[0])

    def close(self) -> None:
        self.ctl.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


class IdClient:
    """A keep-alive HTTP/1.1 connection to ferryd's Unix socket as ``identity`` (through a
    ``Connector``; root only), re-made whenever it breaks."""

    def __init__(self, sock_path: str, identity: tuple[int, int] | None,
                 timeout: float = 30.0) -> None:
        self.sock_path = sock_path
        self.identity = identity
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None
        self.connector = Connector(sock_path, identity) if identity is not None else None

    def _connect(self) -> http.client.HTTPConnection:
        if self.connector is not None:
            sock = self.connector.connect(self.timeout)
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            sock.connect(self.sock_path)
        sock.settimeout(self.timeout)
        conn = http.client.HTTPConnection("ferryd", timeout=self.timeout)
        conn.sock = sock
        self.conn = conn
        return conn

    def disconnect(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
        self.conn = None

    def close(self) -> None:
        self.disconnect()
        if self.connector is not None:
            self.connector.close()
            self.connector = None

    def request(self, method: str, target: str, body: bytes | None = None,
                headers: Mapping[str, str] | None = None, *, stream: bool = False,
                ) -> tuple[int, list[tuple[str, str]], bytes]:
        """(status, headers, body). A stream's body is not read when it succeeds (the
        connection is closed instead). Raises OSError / HTTPException / TimeoutError when
        ferryd does not answer within the timeout."""
        conn = self.conn or self._connect()
        try:
            try:
                conn.request(method, target, body=body, headers=dict(headers or {}))
            except (BrokenPipeError, ConnectionResetError):
                # ferryd answered (an over-long request line, say) and closed before the
                # whole request was sent: read the answer it left.
                answer = _answer_left(conn.sock)
                if answer is None:
                    raise
                self.disconnect()
                return answer
            resp = conn.getresponse()
            if stream and resp.status < 400:
                data = b""
                self.disconnect()
            else:
                data = resp.read()
                if resp.will_close:
                    self.disconnect()
            return resp.status, resp.getheaders(), data
        except BaseException:
            self.disconnect()
            raise

    def call(self, method: str, target: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        status, _, raw = self.request(method, target, data, {"Content-Type": "application/json"})
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, *_: Any, **__: Any) -> io.BytesIO:
        return io.BytesIO(self.data)


def _answer_left(sock: Any) -> tuple[int, list[tuple[str, str]], bytes] | None:
    data = b""
    with contextlib.suppress(OSError, AttributeError):
        while chunk := sock.recv(65536):
            data += chunk
    if not data.startswith(b"HTTP/1."):
        return None
    resp = http.client.HTTPResponse(_Bytes(data))  # type: ignore[arg-type]
    try:
        resp.begin()
        return resp.status, resp.getheaders(), resp.read()
    except (http.client.HTTPException, OSError):
        return None


# ---- checks ---------------------------------------------------------------------------


def secret_needles(markers: Sequence[str], users: Sequence[str] = ()) -> dict[bytes, str]:
    """Byte strings whose presence in an answer or a log betrays a marker: the marker
    itself, and the parts of its base64 encoding that do not depend on where it starts
    (three alignments), alone and after ``user:`` (Basic authentication)."""
    out: dict[bytes, str] = {}
    for m in markers:
        raw = m.encode()
        out[raw] = m
        candidates = [raw] + [f"{u}:{m}".encode() for u in users]
        for c in candidates:
            for pad in range(3):
                enc = base64.b64encode(b"\x00" * pad + c)
                # Drop the characters that mix in the padding bytes before and the unknown
                # bytes after; what is left appears in any base64 text holding ``c``.
                start = {0: 0, 1: 2, 2: 3}[pad]
                core = enc[start:len(enc) - 4]
                if len(core) >= 8:
                    out[core] = f"base64 of {m}"
    return out


@dataclass
class Verdict:
    ok: bool
    problem: str = ""
    code: str | None = None


class Checker:
    def __init__(self, needles: Mapping[bytes, str]) -> None:
        from ferry.errors import CODES, hresult_of

        self.needles = dict(needles)
        self._codes = CODES
        self._hresult_of = hresult_of
        self.scanned = 0

    def leaks(self, data: bytes) -> list[str]:
        self.scanned += 1
        return sorted({what for needle, what in self.needles.items() if needle in data})

    def judge(self, status: int, headers: list[tuple[str, str]], body: bytes) -> Verdict:
        head = "\n".join(f"{k}: {v}" for k, v in headers).encode("utf-8", "surrogateescape")
        leaked = self.leaks(head + b"\n" + body)
        if leaked:
            return Verdict(False, f"secret in the answer: {leaked}")
        if status >= 500:
            return Verdict(False, f"status {status}: {body[:300]!r}")
        if status < 400:
            return Verdict(True)
        try:
            doc = json.loads(body)
            err = doc["error"]
            code, hres = err["code"], err["hresult"]
            assert isinstance(code, str) and isinstance(err["message"], str)
        except Exception:  # noqa: BLE001 - any shape problem is the finding
            return Verdict(False, f"status {status} without a BITS error body: {body[:300]!r}")
        if not isinstance(hres, str) or not HEX_HRESULT.match(hres):
            return Verdict(False, f"error {code} with an HRESULT not as 0xXXXXXXXX: {hres!r}",
                           code)
        try:
            expected = self._hresult_of(code)
        except KeyError:
            return Verdict(False, f"error code {code!r} is not a BITS code", code)
        if int(hres, 16) != expected:
            return Verdict(False, f"error {code} carries {hres}, not 0x{expected:08X}", code)
        return Verdict(True, code=code)
