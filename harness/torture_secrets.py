"""The secrets phase of the torture run (issue 16): real jobs carry marker secrets
(harness/secrets.py) against real servers while ferryd is SIGKILLed and restarted, and
every place a secret could leak is scanned.

The jobs (half set up through the CLI, half through the library):

* ``basic`` — Apache ``/basic/``, SERVER BASIC credentials (CLI, ``--password-stdin``);
* ``digest`` — Apache ``/digest/``, SERVER DIGEST credentials (the asyncio library);
* ``proxy`` — through squid with Basic proxy authentication, PROXY BASIC credentials
  (CLI), the proxy set with ``ferry set --proxy-usage override``;
* ``header`` — the fault server (paced), a write-only custom header (library) and SERVER
  NTLM credentials that the server never asks for (they are only stored);
* ``cert`` — an https server requiring a client certificate, the certificate and its key
  set with ``ferry set --client-cert/--client-key`` and a write-only header (CLI); the key's
  material is registered as a marker, its file exempted (the key lives there by design).
  (ferry's client keys take no passphrase: there is none to scan for.)

Meanwhile ``ferry --json events`` follows every job (its output is kept), a notify command
line dumps what it is given, and ferryd is killed ``restarts`` times mid-transfer. At the
end every job must be TRANSFERRED and complete byte-identical (the secrets worked), the
write-only headers must have reached their servers, and the scan covers: every API answer
(job views, lists, files, credentials), the CLI output (``info``, ``list``, ``credentials
list``, ``bitsadmin /info /verbose``, ``/getcustomheaders``), the event stream, the
notifications, ferryd's log and its store (SQLite database and WAL, in clear).
"""

from __future__ import annotations

import base64
import os
import random
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import secrets
from harness.aio import AppServer
from harness.env import ROOT, child_env, say
from harness.faultserver import FaultServer
from harness.ferryd import Daemon
from harness.files import KIB, sha256_file
from harness.report import Report

__all__ = ["secrets_phase"]

HEADER = "X-Ferry-Secret-Header"


class _MutualTls(AppServer):
    """Serves bytes at /d/NAME to clients with a certificate of the CA; records headers."""

    def __init__(self, ctx: ssl.SSLContext, data: bytes) -> None:
        super().__init__(ssl=ctx)
        self.data = data
        self.headers: list[str | None] = []

    def make_app(self) -> Any:
        from aiohttp import web

        async def get(request: web.Request) -> web.StreamResponse:
            self.headers.append(request.headers.get(HEADER))
            return web.Response(body=self.data)

        app = web.Application()
        app.router.add_get("/d/{name}", get)
        return app


def _cli(d: Daemon, args: list[str], report: Report, where: Path, stdin: str | None = None,
         check: bool = True) -> str:
    """Run ``ferry --socket S ARGS``; its output is scanned and kept under ``where``."""
    res = subprocess.run(
        [sys.executable, "-m", "ferry.cli.main", "--socket", d.socket, *args],
        input=stdin, capture_output=True, text=True, timeout=60, env=child_env({}),
        cwd=str(ROOT),
    )
    out = res.stdout + res.stderr
    shown = " ".join(args[:3])  # never the arguments that carry a secret (--header)
    secrets.scan_bytes(out, f"the output of `ferry {shown} ...`", report)
    where.mkdir(parents=True, exist_ok=True)
    with open(where / "cli.out", "a") as f:
        f.write(f"$ ferry {shown} ...\n{out}\n")
    if check and res.returncode != 0:
        report.fail(f"`ferry {shown} ...` failed ({res.returncode}): {out[-500:]}")
    return res.stdout


def _api(d: Daemon, method: str, path: str, report: Report, where: Path) -> Any:
    status, body = d.call(method, path)
    secrets.scan_bytes(repr(body), f"{method} {path}", report)
    where.mkdir(parents=True, exist_ok=True)
    with open(where / "api.out", "a") as f:
        f.write(f"{method} {path} -> {status}\n{body!r}\n")
    return body


def secrets_phase(work: Path, report: Report, *, seed: int, q: bool, restarts: int = 3) -> None:
    if restarts < 0:
        return
    import trustme

    import ferry
    from harness import apache as apache_mod
    from harness import squid as squid_mod

    rng = random.Random(seed ^ 0x5EC)
    started = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    answers = work / "answers"
    data_size = 600 * KIB if q else 2 << 20
    payload = os.urandom(data_size)
    # ---- the markers ------------------------------------------------------------------------
    pw_basic = secrets.marker("basic")
    pw_digest = secrets.marker("digest")
    pw_proxy = secrets.marker("proxy")
    pw_ntlm = secrets.marker("ntlm")
    hdr_lib = secrets.marker("header")
    hdr_cli = secrets.marker("header")
    ca = trustme.CA()
    leaf = ca.issue_cert("ferry-secrets@example.test")
    keys = work / "keys"
    keys.mkdir()
    cert_file, key_file = keys / "client.pem", keys / "client.key"
    cert_file.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key_pem = leaf.private_key_pem.bytes()
    key_file.write_bytes(key_pem)
    os.chmod(key_file, 0o600)
    secrets.exempt(key_file)
    body_lines = [ln for ln in key_pem.splitlines() if ln and not ln.startswith(b"-----")]
    # A line of the key's own material (not its ASN.1 header): one needle is enough.
    secrets.register_bytes(body_lines[len(body_lines) // 2], "client-key")
    # A positive control: the scanner finds the key in its own (exempted) file, and a
    # password inside a Basic header as a server receives it.
    basic = base64.b64encode(f"tb:{pw_basic}".encode())
    if not secrets.registry.find(key_pem) or not secrets.registry.find(basic):
        report.fail("the secrets scanner does not find a registered marker (self-check)")
    ca_pem = work / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    # ---- the servers ------------------------------------------------------------------------
    started_servers: list[Any] = []
    fault = FaultServer(rate=256 * KIB).start()
    started_servers.append(fault)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ca.configure_trust(ctx)
    ctx.verify_mode = ssl.CERT_REQUIRED
    mtls = _MutualTls(ctx, payload).start()
    started_servers.append(mtls)
    apache = None
    if apache_mod.missing() is None:
        apache = apache_mod.Apache(work / "apache", users={"tb": pw_basic, "td": pw_digest})
        apache.put("basic/a.bin", payload)
        apache.put("digest/b.bin", payload)
        apache.start()
    else:
        report.note(f"secrets phase without Basic/Digest: {apache_mod.missing()}")
    proxy = None
    helper = "/usr/lib/squid/basic_ncsa_auth"
    squid_dir: Path | None = None
    if squid_mod.available() and os.access(helper, os.X_OK):
        from harness.env import short_tmpdir

        squid_dir = short_tmpdir("fy-sqs-")
        hashed = subprocess.run(["openssl", "passwd", "-apr1", pw_proxy], capture_output=True,
                                text=True, check=True).stdout.strip()  # fmt: skip
        (squid_dir / "passwd").write_text(f"pc:{hashed}\n")
        os.chmod(squid_dir / "passwd", 0o644)
        extra = (
            f"auth_param basic program {helper} {squid_dir / 'passwd'}\n"
            "auth_param basic realm ferry-torture\n"
            "acl authed proxy_auth REQUIRED\n"
            "http_access allow authed\n"
        )
        proxy = squid_mod.Squid(squid_dir, extra=extra, open_access=False)
        proxy.start()
    else:
        report.note("secrets phase without a proxy: squid or its basic helper is missing")
    d = Daemon(work / "ferryd", config=f'[daemon]\nca_file = "{ca_pem}"\n', log_level="debug")
    dest = work / "dest"
    dest.mkdir()
    notified = work / "notified.txt"
    events: list[tuple[subprocess.Popen[bytes], Any]] = []

    def follow_events() -> None:
        out = open(work / f"events-{len(events)}.jsonl", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "ferry.cli.main", "--socket", d.socket, "--json", "events"],
            stdout=out, stderr=subprocess.STDOUT, env=child_env({}), cwd=str(ROOT),
        )
        events.append((proc, out))

    jobs: dict[str, tuple[str, Path]] = {}  # name -> (id, local file)
    try:
        d.start()
        follow_events()
        # ---- the jobs -------------------------------------------------------------------------
        def cli_job(name: str, url: str, setup: list[tuple[list[str], str | None]]) -> None:
            import json

            local = dest / f"{name}.bin"
            created = _cli(d, ["--json", "create", name], report, answers)
            _cli(d, ["add", name, url, str(local)], report, answers)
            for args, stdin in setup:
                _cli(d, [*args], report, answers, stdin=stdin)
            _cli(d, ["resume", name], report, answers)
            jobs[name] = (json.loads(created)["id"], local)

        def lib_job(name: str, url: str, setup: Any) -> None:
            local = dest / f"{name}.bin"
            with ferry.Client(socket=d.socket) as c:
                job = c.create_job(name)
                job.add_file(url, str(local))
                setup(job)
                job.resume()
                jobs[name] = (job.id, local)

        if apache is not None:
            cli_job("basic", apache.url("basic/a.bin"), [
                (["credentials", "set", "basic", "--target", "server", "--scheme", "basic",
                  "--user", "tb", "--password-stdin"], pw_basic + "\n"),
            ])
            # The asyncio library for this one.
            async def digest_job() -> tuple[str, Path]:
                from ferry.client.aio import AsyncClient

                local = dest / "digest.bin"
                async with AsyncClient(d.socket) as c:
                    job = await c.create_job("digest")
                    await job.add_file(apache.url("digest/b.bin"), str(local))
                    await job.set_credentials("SERVER", "DIGEST", "td", pw_digest)
                    await job.resume()
                    return job.id, local

            import asyncio

            jobs["digest"] = asyncio.run(digest_job())
        if proxy is not None:
            url = fault.add("proxied.bin", payload)
            cli_job("proxy", url, [
                (["set", "proxy", "--proxy-usage", "override", "--proxy-list", proxy.url], None),
                (["credentials", "set", "proxy", "--target", "proxy", "--scheme", "basic",
                  "--user", "pc", "--password-stdin"], pw_proxy + "\n"),
            ])

        def header_setup(j: Any) -> None:
            j.set_credentials("SERVER", "NTLM", "tn", pw_ntlm)
            j.set_http_options(custom_headers=[f"{HEADER}: {hdr_lib}"],
                               custom_headers_write_only=True)
            j.set(notify_cmdline=["/bin/sh", "-c", f"env >> {notified}; echo \"$0 $*\" >> "
                                  f"{notified}", "notify"])

        lib_job("header", fault.add("header.bin", payload), header_setup)
        cli_job("cert", f"{mtls.base}/d/cert.bin", [
            (["set", "cert", "--client-cert", str(cert_file), "--client-key", str(key_file),
              "--header", f"{HEADER}: {hdr_cli}", "--headers-write-only", "--notify-cmdline",
              f"/bin/sh -c 'env >> {notified}; echo \"$0 $*\" >> {notified}'"], None),
        ])
        # ---- kills while the secrets are in use -------------------------------------------------
        for _ in range(restarts):
            time.sleep(rng.uniform(0.3, 1.5))
            d.kill()
            # The store as a crash leaves it: the SQLite database and its WAL, in clear.
            secrets.scan_tree(d.state_dir, report)
            d.start()
            report.secrets_restarts += 1
            follow_events()
        # ---- wait, complete, verify -----------------------------------------------------------
        deadline = time.monotonic() + 180
        pending = dict(jobs)
        while pending and time.monotonic() < deadline:
            for name, (jid, _local) in list(pending.items()):
                view = _api(d, "GET", f"/v1/jobs/{jid}", report, answers)
                state = view.get("state") if isinstance(view, dict) else None
                if state == "TRANSFERRED":
                    del pending[name]
                elif state == "TRANSIENT_ERROR":
                    d.call("POST", f"/v1/jobs/{jid}/resume", {})
                elif state == "ERROR":
                    report.fail(f"secrets job {name} went to ERROR: {view.get('error')}")
                    del pending[name]
            time.sleep(0.3)
        if pending:
            report.fail(f"secrets jobs not TRANSFERRED in time: {sorted(pending)}")
        # Every answer a user can get about these jobs, then complete.
        _api(d, "GET", "/v1/jobs", report, answers)
        _cli(d, ["list"], report, answers)
        _cli(d, ["--json", "list"], report, answers)
        for name, (jid, _local) in jobs.items():
            for path in ("", "/files", "/credentials"):
                _api(d, "GET", f"/v1/jobs/{jid}{path}", report, answers)
            if q and name != "cert":
                continue  # QUICK: the CLI's views of one job (each CLI call is ~0.4 s of CPU)
            _cli(d, ["info", name], report, answers)
            _cli(d, ["--json", "info", name], report, answers)
            _cli(d, ["credentials", "list", name], report, answers)
            _cli(d, ["--json", "credentials", "list", name], report, answers)
            _cli(d, ["files", name], report, answers)
            _cli(d, ["bitsadmin", "/info", jid, "/verbose"], report, answers)
            _cli(d, ["bitsadmin", "/getcustomheaders", jid], report, answers, check=False)
        for name, (_jid, local) in jobs.items():
            if name in pending:
                continue
            _cli(d, ["complete", name], report, answers)
            if not local.is_file() or sha256_file(local) != _sha(payload):
                report.lost += 1
                report.fail(f"secrets job {name}: {local} is not its source")
        if "header" in jobs and hdr_lib not in {s.headers.get(HEADER) for s in fault.requests}:
            report.fail("the library's write-only header never reached the server")
        if "cert" in jobs and hdr_cli not in mtls.headers:
            report.fail("the CLI's write-only header never reached the server")
        time.sleep(1.0)  # the last events and notifications
    finally:
        code = d.stop() if d.alive() else 0
        if code != 0:
            report.fail(f"ferryd exited with {code} on SIGTERM (secrets phase)")
        for proc, out in events:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            out.close()
        if proxy is not None:
            proxy.stop()
        if apache is not None:
            apache.stop()
        for srv in started_servers:
            srv.stop()
        if squid_dir is not None:
            shutil.rmtree(squid_dir, ignore_errors=True)
    if not notified.exists():
        report.note("secrets phase: no notification command ran")
    else:
        secrets.scan_bytes(notified.read_bytes(), "notifications (command line, environment)",
                           report)
    secrets.scan_tree(work, report)  # ferryd's log, the SQLite store and WAL, every output
    say(f"  secrets phase: {len(jobs)} jobs, {restarts} kills, "
        f"{len(secrets.registry)} markers, {time.monotonic() - started:.0f} s")


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
