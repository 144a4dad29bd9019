"""Apache httpd with its own configuration in a temporary directory, started as a plain
foreground process (never the system service) on a free loopback port, for the credential
tests and benchmarks: ``/neg/`` requires Negotiate (mod_auth_gssapi, Kerberos) on every
request, ``/negb/`` once per connection (GssapiConnectionBound, as IIS does), ``/basic/``
Basic, ``/digest/`` Digest, ``/open/`` nothing. The access log records the authenticated user
(``%u``). Runs as ``nobody`` (setpriv) when started by root."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path

from harness.process import stop_process, wait_for_port

MODULES = Path("/usr/lib/apache2/modules")
NEEDED = (
    "mpm_event",
    "authn_core",
    "authz_core",
    "authz_user",
    "authn_file",
    "auth_basic",
    "auth_digest",
    "auth_gssapi",
)


def missing() -> str | None:
    """Why Apache cannot run here (None: it can)."""
    if shutil.which("apache2") is None and not Path("/usr/sbin/apache2").exists():
        return "apache2 is not installed"
    for m in NEEDED:
        if not (MODULES / f"mod_{m}.so").exists():
            return f"mod_{m} is not installed (libapache2-mod-auth-gssapi for auth_gssapi)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Apache:
    def __init__(
        self,
        base: Path,
        *,
        keytab: str | None = None,
        users: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.base = base
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        self.docroot = base / "htdocs"
        for d in ("neg", "negb", "basic", "digest", "open"):
            (self.docroot / d).mkdir(parents=True, exist_ok=True)
        self.keytab = keytab
        self.users = dict(users or {})
        self.env = dict(env or {})
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.access_log = base / "access.log"
        self.error_log = base / "error.log"

    def url(self, path: str) -> str:
        return f"http://localhost:{self.port}/{path.lstrip('/')}"

    def put(self, path: str, data: bytes) -> None:
        target = self.docroot / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        os.chmod(target, 0o644)

    def _config(self) -> str:
        loads = "\n".join(f"LoadModule {m}_module {MODULES}/mod_{m}.so" for m in NEEDED)
        htpasswd = self.base / "htpasswd"
        htdigest = self.base / "htdigest"
        htpasswd.write_text(
            "".join(
                f"{u}:{{SHA}}{base64.b64encode(hashlib.sha1(p.encode()).digest()).decode()}\n"
                for u, p in self.users.items()
            )
        )
        htdigest.write_text(
            "".join(
                f"{u}:dig:{hashlib.md5(f'{u}:dig:{p}'.encode()).hexdigest()}\n"
                for u, p in self.users.items()
            )
        )
        neg = ""
        if self.keytab:
            neg = f"""
<Location /neg/>
  AuthType GSSAPI
  AuthName "neg"
  GssapiCredStore keytab:{self.keytab}
  GssapiAllowedMech krb5
  GssapiBasicAuth Off
  GssapiLocalName Off
  Require valid-user
</Location>
<Location /negb/>
  AuthType GSSAPI
  AuthName "negb"
  GssapiCredStore keytab:{self.keytab}
  GssapiAllowedMech krb5
  GssapiBasicAuth Off
  GssapiLocalName Off
  GssapiConnectionBound On
  Require valid-user
</Location>"""
        return f"""
ServerRoot {self.base}
ServerName localhost
Listen 127.0.0.1:{self.port}
PidFile {self.base}/run/httpd.pid
Mutex file:{self.base}/run default
ErrorLog {self.error_log}
LogLevel warn auth_gssapi:info
{loads}
DocumentRoot {self.docroot}
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 30
LogFormat "%u %>s %r" who
CustomLog {self.access_log} who
<Directory {self.docroot}>
  Require all granted
</Directory>
<Location /basic/>
  AuthType Basic
  AuthName "basic"
  AuthBasicProvider file
  AuthUserFile {htpasswd}
  Require valid-user
</Location>
<Location /digest/>
  AuthType Digest
  AuthName "dig"
  AuthDigestDomain /digest/
  AuthDigestProvider file
  AuthUserFile {htdigest}
  Require valid-user
</Location>
{neg}
"""

    def start(self, timeout: float = 30.0) -> None:
        conf = self.base / "httpd.conf"
        conf.write_text(self._config())
        for f in self.base.iterdir():
            os.chmod(f, 0o755 if f.is_dir() else 0o644)
        run = self.base / "run"  # pid file and mutexes: written by the unprivileged server
        run.mkdir(exist_ok=True)
        os.chmod(run, 0o777)
        for f in (self.access_log, self.error_log):
            f.touch(0o666)
            os.chmod(f, 0o666)
        cmd = ["apache2", "-f", str(conf), "-DFOREGROUND"]
        if os.geteuid() == 0:
            cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *cmd]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "KRB5RCACHETYPE": "none", **self.env}
        with open(self.base / "stderr.log", "wb") as stderr:
            self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        if wait_for_port(self.proc, self.port, timeout=timeout, every=0.05):
            return
        if self.proc.poll() is not None:
            raise RuntimeError(f"apache2 exited: {self.errors()}")
        self.stop()
        raise RuntimeError(f"apache2 did not start: {self.errors()}")

    def errors(self) -> str:
        out = ""
        for f in (self.base / "stderr.log", self.error_log):
            if f.exists():
                out += f.read_text(errors="replace")
        return out

    def log_lines(self) -> list[str]:
        return self.access_log.read_text(errors="replace").splitlines()

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def __enter__(self) -> Apache:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
