"""Marker secrets for the torture run, and the scanner that looks for them (issue 16: "no
password, private key or write-only header appears in logs, events, API answers or the
store in clear").

Every torture phase that hands ferryd (or ferry-server) a secret takes it from here, so the
final scan knows what to look for::

    from harness import secrets
    password = secrets.marker("basic")           # a unique random string, registered
    secrets.register_bytes(der[40:72], "key")     # key material that is not text
    secrets.exempt(key_file)                      # where a secret lives by design
    secrets.scan_bytes(answer, "GET /v1/jobs/ID", report)   # an API answer, CLI output...
    secrets.scan_tree(work, report)               # every file under a directory

A marker is looked for in every form a leak could take: plain, base64 (standard and
URL-safe, at each of the three alignments, so a marker inside a longer encoded string —
``user:password`` in a Basic header — is found too), hex (lower and upper case),
URL-encoded (``%2F`` and ``+`` forms), UTF-16 (LE and BE) and JSON-escaped. A hit calls
``report.fail(..., "secret-leak")`` naming the place, the marker's kind and the form.

Markers carry characters that URL encoding changes (``/``, ``&``, ``=``, a space is
avoided: some header parsers trim it) so an encoded leak differs from a plain one.

Files never scanned: the ones ``exempt`` names (a client key's own PEM file, a password
file handed to ``--password-file``) and every secretbox key (``credentials.key``: its
bytes are the sealing key, by design in clear). ``registry`` is the process-wide
``Registry``; tests may make their own.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets as _random
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, quote_plus

__all__ = [
    "Registry",
    "exempt",
    "marker",
    "register",
    "register_bytes",
    "registry",
    "scan_bytes",
    "scan_tree",
]

SECRETBOX_KEY = "credentials.key"  # security/secretbox.py KEY_FILE
CHUNK = 16 << 20  # files are read in chunks of this size (with an overlap)
# Every marker starts with PREFIX, so the forms of all markers start with a few ANCHORs.
PREFIX = "fSk9Qz"
ANCHOR = 5


class _Report(Protocol):
    secrets_files: int
    secrets_bytes: int
    secrets_markers: int

    def fail(self, msg: str, kind: str = "other") -> None: ...


def encodings(value: bytes) -> dict[bytes, str]:
    """Every byte string a leak of ``value`` could look like -> the name of the form."""
    forms: dict[bytes, str] = {value: "plain"}
    for k in range(3):
        # base64 of VALUE preceded by k other bytes: the groups that hold only VALUE's bits
        # are the same whatever came before (and after), so cut the first and last group.
        enc = base64.b64encode(b"\0" * k + value)
        core = enc[4 if k else 0 : len(enc) - 4]
        if len(core) >= 12:
            forms.setdefault(core, f"base64/{k}")
            forms.setdefault(core.replace(b"+", b"-").replace(b"/", b"_"), f"base64url/{k}")
    forms.setdefault(binascii.hexlify(value), "hex")
    forms.setdefault(binascii.hexlify(value).upper(), "HEX")
    try:
        text = value.decode()
    except UnicodeDecodeError:
        return forms
    forms.setdefault(quote(text, safe="").encode(), "url-encoded")
    forms.setdefault(quote_plus(text, safe="").encode(), "url-encoded+")
    forms.setdefault(quote(text, safe="").lower().encode(), "url-encoded-lower")
    forms.setdefault(text.encode("utf-16-le"), "utf-16-le")
    forms.setdefault(text.encode("utf-16-be"), "utf-16-be")
    forms.setdefault(json.dumps(text).strip('"').encode(), "json")
    forms.setdefault(text.replace("/", "\\/").encode(), "json-slash")
    return forms


@dataclass
class _Needle:
    value: bytes
    kind: str
    forms: dict[bytes, str]


@dataclass
class Registry:
    needles: list[_Needle] = field(default_factory=list)
    exempted: set[Path] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _anchors: dict[bytes, list[tuple[bytes, _Needle]]] | None = None
    _longest: int = 0

    # ---- registering ------------------------------------------------------------------------

    def marker(self, kind: str) -> str:
        """A new unique random secret of ``kind`` (basic, digest, ntlm, proxy, header,
        passphrase, ...), registered. Printable ASCII, no space or colon (a Basic user name
        may not hold one; a password may, but a marker must fit every slot)."""
        value = (
            f"{PREFIX}{_random.token_hex(6)}/{_random.token_hex(5)}"
            f"&{_random.token_hex(5)}={_random.token_hex(4)}"
        )
        self.register(value, kind)
        return value

    def register(self, value: str, kind: str) -> None:
        self.register_bytes(value.encode(), kind)

    def register_bytes(self, value: bytes, kind: str) -> None:
        if len(value) < 12:
            raise ValueError("a marker must be at least 12 bytes (no false hits)")
        with self._lock:
            if any(n.value == value for n in self.needles):
                return
            self.needles.append(_Needle(value, kind, encodings(value)))
            self._anchors = None

    def exempt(self, path: Path | str) -> None:
        """Never scan this file: a secret is there by design (a key file, a password file)."""
        with self._lock:
            self.exempted.add(Path(os.path.abspath(path)))

    def __len__(self) -> int:
        return len(self.needles)

    # ---- scanning ---------------------------------------------------------------------------

    def _compiled(self) -> tuple[dict[bytes, list[tuple[bytes, _Needle]]], int]:
        """anchor (the first ANCHOR bytes of a form) -> [(form, needle)], and the longest
        form. Markers share PREFIX, so their forms share a few anchors: a scan is one fast
        ``bytes.find`` per anchor, not one per form."""
        with self._lock:
            if self._anchors is None:
                anchors: dict[bytes, list[tuple[bytes, _Needle]]] = {}
                for n in self.needles:
                    for form in n.forms:
                        anchors.setdefault(form[:ANCHOR], []).append((form, n))
                self._anchors = anchors
                self._longest = max((len(f) for n in self.needles for f in n.forms), default=0)
            return self._anchors, self._longest

    def find(self, data: bytes) -> list[tuple[str, str, int, int]]:
        """(kind, form, start, end) of every marker found in ``data``."""
        anchors, _ = self._compiled()
        hits = []
        for anchor, forms in anchors.items():
            pos = data.find(anchor)
            while pos >= 0:
                for form, n in forms:
                    if data.startswith(form, pos):
                        hits.append((n.kind, n.forms[form], pos, pos + len(form)))
                pos = data.find(anchor, pos + 1)
        hits.sort(key=lambda h: h[2])
        return hits

    def scan_bytes(self, data: bytes | str, where: str, report: _Report) -> int:
        """Look for every marker in ``data`` (an API answer, CLI output, an event); each hit
        is a failure of kind ``secret-leak``. Returns the number of hits."""
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        report.secrets_bytes += len(data)
        report.secrets_markers = max(report.secrets_markers, len(self))
        hits = self.find(data)
        for kind, form, offset, _end in hits[:5]:
            start = max(0, offset - 40)
            context = data[start : offset + 60].decode("utf-8", "replace")
            report.fail(f"a {kind} secret ({form}) leaked in {where} at byte {offset}: "
                        f"...{context!r}...", "secret-leak")
        return len(hits)

    def scan_file(self, path: Path, report: _Report, where: str | None = None) -> int:
        """Scan one file in chunks (a marker across a chunk boundary is found: the chunks
        overlap by the longest form)."""
        _anchors, overlap = self._compiled()
        report.secrets_files += 1
        if not overlap:
            return 0
        hits = 0
        try:
            with open(path, "rb") as f:
                tail = b""
                base = 0
                while True:
                    chunk = f.read(CHUNK)
                    if not chunk:
                        break
                    data = tail + chunk
                    # A hit wholly inside the overlap was reported with the chunk before.
                    found = [h for h in self.find(data) if h[3] > len(tail)]
                    for kind, form, offset, _end in found[:5]:
                        report.fail(f"a {kind} secret ({form}) leaked in {where or path} at "
                                    f"byte {base - len(tail) + offset}", "secret-leak")
                    hits += len(found)
                    report.secrets_bytes += len(chunk)
                    tail = data[-overlap:]
                    base += len(chunk)
        except OSError:
            return 0  # removed while we walked (a log rotated, a temp file renamed)
        return hits

    def scan_tree(self, root: Path, report: _Report) -> int:
        """Scan every regular file under ``root`` (no symbolic link followed), except the
        exempted ones and secretbox keys. Returns the number of hits."""
        report.secrets_markers = max(report.secrets_markers, len(self))
        hits = 0
        for path in _walk(root):
            if path.name == SECRETBOX_KEY or Path(os.path.abspath(path)) in self.exempted:
                continue
            hits += self.scan_file(path, report)
        return hits

    def scan_postgres(self, url: str, report: _Report) -> int:
        """Every row of every table of the database at ``url`` (a dump by SELECT, as text
        and as the raw values), scanned as one answer per table."""
        import psycopg

        hits = 0
        with psycopg.connect(url, autocommit=True) as conn:
            tables = [
                r[0] for r in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
                )
            ]
            for table in tables:
                buf = bytearray()
                with conn.cursor().copy(f'COPY "{table}" TO STDOUT') as copy:
                    for block in copy:
                        buf += bytes(block)
                hits += self.scan_bytes(bytes(buf), f"PostgreSQL table {table}", report)
        return hits


def _walk(root: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                yield p


registry = Registry()


def marker(kind: str) -> str:
    return registry.marker(kind)


def register(value: str, kind: str) -> None:
    registry.register(value, kind)


def register_bytes(value: bytes, kind: str) -> None:
    registry.register_bytes(value, kind)


def exempt(path: Path | str) -> None:
    registry.exempt(path)


def scan_bytes(data: bytes | str, where: str, report: _Report) -> int:
    return registry.scan_bytes(data, where, report)


def scan_tree(path: Path, report: _Report) -> int:
    return registry.scan_tree(path, report)


def scan_postgres(url: str, report: _Report) -> int:
    return registry.scan_postgres(url, report)
