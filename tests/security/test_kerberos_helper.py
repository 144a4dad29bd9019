"""The seed's example (SPEC §8.2, issue 11): a job owned by a service identity downloads,
into a directory only that identity may write, from an Apache location that requires
Negotiate; its NETWORK helper is a low-privilege user whose own Kerberos ticket (kinit as that
user, in that user's credential cache) is what authenticates. Real parts: a throwaway MIT KDC
(k5test), Apache httpd with mod_auth_gssapi, real uids and login sessions. Root only."""

from __future__ import annotations

import os
import random
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import apache as apache_mod
from harness.apache import Apache
from harness.env import short_tmpdir
from harness.ferryd import Daemon
from harness.wait import wait_state

import ferry
from tests.helpers.jobs import owned_dir
from tests.helpers.session_agent import SessionAgent

OWN = 40331  # the service identity that owns the jobs (no login session)
HLP = 40332  # the low-privilege helper user (a real login session)
OTHER = 40333

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")


def _need_tools() -> None:
    why = apache_mod.missing()
    if why:
        pytest.skip(why)
    for tool in ("krb5kdc", "kdb5_util", "kinit", "setpriv"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            pytest.skip(f"{tool} is not installed (krb5-kdc, krb5-user)")


class Realm:
    def __init__(self) -> None:
        import k5test

        self.k = k5test.K5Realm(
            portbase=random.randrange(20000, 59000, 10),
            krb5_conf={"libdefaults": {"rdns": "false", "dns_canonicalize_hostname": "false"}},
        )
        self.realm = self.k.realm
        self.owner = f"owner@{self.realm}"
        self.helper = f"helper@{self.realm}"
        self.k.addprinc(self.owner, "owner-pw")
        self.k.addprinc(self.helper, "helper-pw")
        self.k.addprinc(f"HTTP/localhost@{self.realm}")
        self.keytab = os.path.join(self.k.tmpdir, "http.keytab")
        self.k.extract_keytab(f"HTTP/localhost@{self.realm}", self.keytab)
        # squid's service principal: the client names the proxy by its URL's host.
        self.k.addprinc(f"HTTP/127.0.0.1@{self.realm}")
        self.proxy_keytab = os.path.join(self.k.tmpdir, "proxy.keytab")
        self.k.extract_keytab(f"HTTP/127.0.0.1@{self.realm}", self.proxy_keytab)
        # The test users and Apache (nobody) read krb5.conf; the HTTP keytab is Apache's.
        os.chmod(self.k.tmpdir, 0o755)
        for name in os.listdir(self.k.tmpdir):
            p = os.path.join(self.k.tmpdir, name)
            if os.path.isfile(p):
                os.chmod(p, 0o644)
        self.conf = self.k.env["KRB5_CONFIG"]

    def kinit_as(self, uid: int, principal: str, password: str, ccache: str) -> None:
        r = subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
             "kinit", "-c", f"FILE:{ccache}", principal],
            input=password + "\n", text=True, capture_output=True,
            env={"PATH": os.environ["PATH"], "KRB5_CONFIG": self.conf}, timeout=30,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr

    def stop(self) -> None:
        self.k.stop()


@pytest.fixture(scope="module")
def realm() -> Iterator[Realm]:
    _need_tools()
    r = Realm()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def httpd(realm: Realm) -> Iterator[Apache]:
    base = short_tmpdir("fy-ap-")
    server = Apache(base, keytab=realm.keytab, users={"bob": "b0b-secret-pw"},
                    env={"KRB5_CONFIG": realm.conf})  # fmt: skip
    server.put("neg/seed.bin", os.urandom(300_000))
    server.start()
    yield server
    server.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def krb_ferryd(short_tmp: Path, realm: Realm) -> Iterator[Daemon]:
    daemon = Daemon(
        short_tmp,
        system=True,
        config="[daemon]\nsession_poll_interval = 0.2\n",
        env={"KRB5_CONFIG": realm.conf},
    )
    daemon.start()
    yield daemon
    code = daemon.stop()
    assert code == 0, f"ferryd exited with {code}:\n{daemon.log()}"


def _neg_lines(httpd: Apache, name: str) -> list[str]:
    return [line for line in httpd.log_lines() if f"/neg/{name}" in line]


def _helper_ccache(base: Path) -> str:
    d = owned_dir(base / "helper-krb", HLP, 0o700)
    return str(d / "krb5cc")


def _set_helper(d: Daemon, helper: SessionAgent, handle: str, ccache: str) -> None:
    status, body = helper.call(
        d.socket, "PUT", f"/v1/handles/{handle}/helper-token", {"krb5ccname": ccache}
    )
    assert status == 200, body


def _new_job(c: ferry.Client, name: str, url: str, dest: Path) -> Any:
    job = c.create_job(name)
    job.add_file(url, str(dest))
    job.set_credentials("SERVER", "NEGOTIATE")
    return job


def _negotiate_job(
    d: Daemon, who: SessionAgent, name: str, url: str, dest: Path, ccache: str | None = None
) -> str:
    """As ``who`` over the raw API: a job (naming ``ccache`` as its Kerberos cache, if
    given) of one file from ``url`` to ``dest``, with implicit Negotiate to the server."""
    doc: dict[str, Any] = {"display_name": name}
    if ccache is not None:
        doc["krb5ccname"] = ccache
    status, created = who.call(d.socket, "POST", "/v1/jobs", doc)
    assert status == 201, created
    jid: str = created["id"]
    body = {"files": [{"remote_name": url, "local_name": str(dest)}]}
    assert who.call(d.socket, "POST", f"/v1/jobs/{jid}/files", body)[0] == 200
    cred = {"target": "SERVER", "scheme": "NEGOTIATE"}
    assert who.call(d.socket, "PUT", f"/v1/jobs/{jid}/credentials", cred)[0] == 200
    return jid


def test_seed_example_service_owner_with_kerberos_helper(
    krb_ferryd: Daemon, httpd: Apache, realm: Realm, short_tmp: Path
) -> None:
    d = krb_ferryd
    src = httpd.docroot / "neg" / "seed.bin"
    url = httpd.url("neg/seed.bin")
    dest = owned_dir(short_tmp / "owner-only", OWN, 0o700)  # only the owner may write here
    own_cc = f"/tmp/krb5cc_{OWN}"  # the owner's default cache, named by its library
    helper_cc = _helper_ccache(short_tmp)
    try:
        with ferry.Client(d.socket) as c:
            # 1. Without a helper and without a ticket of its own: 401, fatal.
            with ferry.impersonate(OWN, OWN):
                alone = _new_job(c, "krb-alone", url, dest / "alone.bin")
                assert alone.credentials() == [
                    {"target": "SERVER", "scheme": "NEGOTIATE", "user": None, "implicit": True}
                ]
                alone.resume()
            err = wait_state(d, alone.id, {"ERROR", "TRANSFERRED"})
            assert err["state"] == "ERROR", err
            assert err["error"]["code"] == "BG_E_HTTP_ERROR_401"

            # The owner has a ticket of its own from now on: the helper's must still win.
            realm.kinit_as(OWN, realm.owner, "owner-pw", own_cc)
            realm.kinit_as(HLP, realm.helper, "helper-pw", helper_cc)
            with SessionAgent(HLP) as helper:
                with ferry.impersonate(OWN, OWN):
                    job = _new_job(c, "krb-helper", url, dest / "seed.bin")
                    handle = c.open(job.id, "token-options", ttl=600)
                _set_helper(d, helper, handle, helper_cc)
                with ferry.impersonate(OWN, OWN):
                    c.token_options(handle).set_helper_token_flags(ferry.TokenFlags.NETWORK)
                    job.resume()
                done = wait_state(d, job.id, {"TRANSFERRED", "ERROR"})
                assert done["state"] == "TRANSFERRED", done
                with ferry.impersonate(OWN, OWN):
                    assert job.complete() == "S_OK"
                out = dest / "seed.bin"
                assert out.read_bytes() == src.read_bytes()
                assert out.stat().st_uid == OWN
                lines = _neg_lines(httpd, "seed.bin")
                assert any(line.startswith(f"{realm.helper} 200 ") for line in lines), lines
                assert not any(realm.owner in line for line in lines), lines

                # 2. The helper's session ends: BG_E_TOKEN_REQUIRED (SPEC §4.5) ...
                with ferry.impersonate(OWN, OWN):
                    later = _new_job(c, "krb-later", url, dest / "later.bin")
                    handle = c.open(later.id, "token-options", ttl=600)
                _set_helper(d, helper, handle, helper_cc)
                with ferry.impersonate(OWN, OWN):
                    c.token_options(handle).set_helper_token_flags(ferry.TokenFlags.NETWORK)
            err = wait_state(d, later.id, {"ERROR"})
            assert err["error"]["code"] == "BG_E_TOKEN_REQUIRED"

            # ... and a new helper session (refresh: the helper token again, resume) works,
            # also across a restart of ferryd (credentials and the cache name persist).
            with SessionAgent(HLP) as helper2:
                with ferry.impersonate(OWN, OWN):
                    handle = c.open(later.id, "token-options", ttl=600)
                _set_helper(d, helper2, handle, helper_cc)
                d.restart()
                with ferry.Client(d.socket) as c2, ferry.impersonate(OWN, OWN):
                    again = c2.get_job(later.id)
                    assert again.credentials()[0]["implicit"] is True
                    again.resume()
                done = wait_state(d, later.id, {"TRANSFERRED", "ERROR"})
                assert done["state"] == "TRANSFERRED", done
            assert not any(realm.owner in line for line in httpd.log_lines())
    finally:
        if os.path.exists(own_cc):
            os.unlink(own_cc)


def test_owner_ticket_when_no_helper(
    krb_ferryd: Daemon, httpd: Apache, realm: Realm, short_tmp: Path
) -> None:
    """Without the NETWORK flag the owner's own ticket answers (read as the owner)."""
    d = krb_ferryd
    dest = owned_dir(short_tmp / "own2", OWN, 0o700)
    own_cc = f"/tmp/krb5cc_{OWN}"
    realm.kinit_as(OWN, realm.owner, "owner-pw", own_cc)
    try:
        httpd.put("neg/own.bin", os.urandom(10_000))
        with ferry.Client(d.socket) as c, ferry.impersonate(OWN, OWN):
            job = _new_job(c, "krb-own", httpd.url("neg/own.bin"), dest / "own.bin")
            job.resume()
            assert job.wait(timeout=30) is ferry.JobState.TRANSFERRED, job.data
        assert any(line.startswith(f"{realm.owner} 200 ") for line in _neg_lines(httpd, "own.bin"))
    finally:
        os.unlink(own_cc)


# ---- denials: ferryd never reads a cache its identity could not hand over ---------------


def _create_with_cache(d: Daemon, who: SessionAgent, ccache: str) -> tuple[int, Any]:
    return who.call(d.socket, "POST", "/v1/jobs", {"display_name": "cc", "krb5ccname": ccache})


def test_credential_cache_denials(system_ferryd: Daemon, short_tmp: Path) -> None:
    d = system_ferryd
    other_dir = owned_dir(short_tmp / "other", OTHER, 0o755)
    theirs = other_dir / "krb5cc"
    theirs.write_bytes(b"\x05\x04secret-ticket")
    os.chown(theirs, OTHER, OTHER)
    os.chmod(theirs, 0o644)  # even readable: not the caller's own
    mine = owned_dir(short_tmp / "mine", HLP, 0o755)
    link = mine / "link"
    os.symlink(theirs, link)
    os.lchown(link, HLP, HLP)
    fifo = mine / "fifo"
    os.mkfifo(fifo)
    os.chown(fifo, HLP, HLP)
    linked_dir = mine / "dirlink"
    os.symlink(other_dir, linked_dir)
    atime = theirs.stat().st_atime_ns
    with SessionAgent(HLP) as who:
        for path in (str(theirs), f"FILE:{link}", str(fifo), "/proc/self/environ",
                     f"/proc/{os.getpid()}/environ", f"{linked_dir}/krb5cc",
                     f"{mine}/../other/krb5cc"):  # fmt: skip
            status, body = _create_with_cache(d, who, path)
            assert status == 403 or body["error"]["code"] == "E_ACCESSDENIED", (path, body)
            assert body["error"]["code"] == "E_ACCESSDENIED", (path, body)
        # Not a file cache at all: refused as an invalid argument.
        status, body = _create_with_cache(d, who, "KEYRING:persistent:1")
        assert body["error"]["code"] == "E_INVALIDARG"
        # Its own, or one that does not exist yet (kinit later): accepted.
        own = mine / "krb5cc"
        own.write_bytes(b"x")
        os.chown(own, HLP, HLP)
        os.chmod(own, 0o600)
        assert _create_with_cache(d, who, str(own))[0] == 201
        assert _create_with_cache(d, who, str(mine / "later"))[0] == 201
        # Through a directory the caller may search but not list (a 0711 home): accepted,
        # as open(2) would; the same file through a directory it may not search: refused.
        search_only = owned_dir(short_tmp / "search-only", 0, 0o711)
        inner = owned_dir(search_only / "inner", HLP, 0o700)
        deep = inner / "krb5cc"
        deep.write_bytes(b"x")
        os.chown(deep, HLP, HLP)
        os.chmod(deep, 0o600)
        assert _create_with_cache(d, who, str(deep))[0] == 201
        os.chmod(search_only, 0o700)
        status, body = _create_with_cache(d, who, str(deep))
        assert body["error"]["code"] == "E_ACCESSDENIED", body
        assert d.call("GET", "/v1/jobs?all_users=true")[0] == 200
    assert stat.S_ISREG(theirs.stat().st_mode)
    assert theirs.stat().st_atime_ns == atime  # nothing was read


def _principal_only_cache(principal: str) -> bytes:
    """A FILE credential cache (format 4) that names ``principal`` and holds no ticket."""

    def counted(b: bytes) -> bytes:
        return len(b).to_bytes(4, "big") + b

    name, realm = principal.rsplit("@", 1)
    parts = name.split("/")
    return (
        b"\x05\x04\x00\x00"
        + (1).to_bytes(4, "big")
        + len(parts).to_bytes(4, "big")
        + counted(realm.encode())
        + b"".join(counted(p.encode()) for p in parts)
    )


@pytest.mark.parametrize("how", ["environment", "krb5.conf"])
def test_root_client_keytab_never_answers_for_a_user(
    realm: Realm, httpd: Apache, short_tmp: Path, how: str
) -> None:
    """A user's cache that names a principal but holds no ticket: MIT's GSSAPI would fetch a
    ticket with the *process's* default client keytab (root's, named by KRB5_CLIENT_KTNAME
    or krb5.conf's default_client_keytab_name) if it were allowed to look for one. ferryd
    pins the client keytab to a path that cannot exist and ignores the variable: 401."""
    keys = owned_dir(short_tmp / "root-keys", 0, 0o700)
    keytab = keys / "client.keytab"
    realm.k.extract_keytab(realm.owner, str(keytab))
    os.chmod(keytab, 0o600)
    env = {"KRB5_CONFIG": realm.conf}
    if how == "environment":
        env["KRB5_CLIENT_KTNAME"] = f"FILE:{keytab}"
    else:
        conf = short_tmp / "krb5.conf"
        text = Path(realm.conf).read_text()
        assert "[libdefaults]" in text
        conf.write_text(text.replace(
            "[libdefaults]", f"[libdefaults]\n\tdefault_client_keytab_name = FILE:{keytab}", 1
        ))  # fmt: skip
        os.chmod(conf, 0o644)
        env["KRB5_CONFIG"] = str(conf)
    d = Daemon(short_tmp / "kd", system=True,
               config="[daemon]\nsession_poll_interval = 0.2\n", env=env)  # fmt: skip
    os.chmod(short_tmp / "kd", 0o755)
    own_cc = Path(f"/tmp/krb5cc_{OWN}")  # what the owner's library names
    own_cc.write_bytes(_principal_only_cache(realm.owner))
    os.chown(own_cc, OWN, OWN)
    os.chmod(own_cc, 0o600)
    d.start()
    try:
        httpd.put("neg/rootkt.bin", os.urandom(10_000))
        dest = owned_dir(short_tmp / "rk-dest", OWN, 0o700)
        with ferry.Client(d.socket) as c, ferry.impersonate(OWN, OWN):
            job = _new_job(c, "root-kt", httpd.url("neg/rootkt.bin"), dest / "rk.bin")
            job.resume()
            assert job.wait(timeout=30) is ferry.JobState.ERROR, job.data
            assert job.data["error"]["code"] == "BG_E_HTTP_ERROR_401", job.data
        assert not any(realm.owner in line for line in _neg_lines(httpd, "rootkt.bin"))
    finally:
        own_cc.unlink(missing_ok=True)
        assert d.stop() == 0, d.log()


def test_take_ownership_forgets_the_cache_the_old_owner_named(
    krb_ferryd: Daemon, httpd: Apache, realm: Realm, short_tmp: Path
) -> None:
    """A user names a cache path that does not exist yet (accepted: kinit may come later)
    where an administrator will later keep a ticket; the administrator takes ownership of the
    job. The path named by the user's uid must not then be read as the administrator: the job
    has no cache of the new owner's (401), and the administrator's principal never reaches
    the server."""
    d = krb_ferryd
    httpd.put("neg/taken.bin", os.urandom(10_000))
    admin_dir = owned_dir(short_tmp / "admin-krb", 0, 0o755)
    admin_cc = admin_dir / "krb5cc"  # not there yet when the user names it
    mine = owned_dir(short_tmp / "taker", HLP, 0o755)
    with SessionAgent(HLP) as who:
        jid = _negotiate_job(d, who, "take", httpd.url("neg/taken.bin"), mine / "taken.bin",
                             ccache=str(admin_cc))  # fmt: skip
    realm.kinit_as(0, realm.owner, "owner-pw", str(admin_cc))  # root's ticket, later
    status, answer = d.call("POST", f"/v1/jobs/{jid}/take-ownership", {})
    assert status == 200 and answer["job"]["owner"]["uid"] == 0, answer
    assert d.call("POST", f"/v1/jobs/{jid}/resume", {})[0] == 200
    err = wait_state(d, jid, {"ERROR", "TRANSFERRED"})
    assert err["state"] == "ERROR" and err["error"]["code"] == "BG_E_HTTP_ERROR_401", err
    assert not any(realm.owner in line for line in _neg_lines(httpd, "taken.bin"))


# ---- explicit credentials: Basic and Digest, secrets never in clear ---------------------

PASSWORD = "b0b-secret-pw"


def test_basic_and_digest_and_secrets_stay_secret(
    krb_ferryd: Daemon, httpd: Apache, short_tmp: Path
) -> None:
    d = krb_ferryd
    httpd.put("basic/b.bin", os.urandom(50_000))
    httpd.put("digest/g.bin", os.urandom(50_000))
    with ferry.Client(d.socket) as c:
        basic = c.create_job("basic")
        basic.add_file(httpd.url("basic/b.bin"), str(short_tmp / "b.bin"))
        basic.set_credentials("SERVER", "BASIC", "bob", PASSWORD)
        digest = c.create_job("digest")
        digest.add_file(httpd.url("digest/g.bin"), str(short_tmp / "g.bin"))
        digest.set_credentials("SERVER", "DIGEST", "bob", PASSWORD)
        # A Digest credential only: the Basic location's challenge is not answered with it.
        wrong = c.create_job("wrong-scheme")
        wrong.add_file(httpd.url("basic/b.bin"), str(short_tmp / "w.bin"))
        wrong.set_credentials("SERVER", "DIGEST", "bob", PASSWORD)
        bad = c.create_job("bad-password")
        bad.add_file(httpd.url("basic/b.bin"), str(short_tmp / "x.bin"))
        bad.set_credentials("SERVER", "BASIC", "bob", "not-it")
        info = basic.data
        assert info["credentials"] == [
            {"target": "SERVER", "scheme": "BASIC", "user": "bob", "implicit": False}
        ]
        assert any("clear" in w for w in info["credential_warnings"])

        # Bad input: the right code, and nothing changes.
        before = basic.credentials()
        for args, code in (
            (("WEB", "BASIC", "u", "p"), "BG_E_INVALID_AUTH_TARGET"),
            (("SERVER", "PASSPORT", "u", "p"), "BG_E_INVALID_AUTH_SCHEME"),
            (("SERVER", "KERBEROS", "u", "p"), "BG_E_INVALID_AUTH_SCHEME"),
            (("SERVER", "BASIC", "u" * 301, "p"), "BG_E_USERNAME_TOO_LARGE"),
            (("SERVER", "BASIC", "u", "p" * 65537), "BG_E_PASSWORD_TOO_LARGE"),
            (("SERVER", "BASIC", None, None), "E_INVALIDARG"),
        ):
            with pytest.raises(ferry.FerryError) as exc:
                basic.set_credentials(*args)
            assert exc.value.code == code, args
        assert basic.credentials() == before

        for job in (basic, digest, wrong, bad):
            job.resume()
        assert basic.wait(timeout=30) is ferry.JobState.TRANSFERRED, basic.data
        assert digest.wait(timeout=30) is ferry.JobState.TRANSFERRED, digest.data
        for job in (wrong, bad):
            assert job.wait(timeout=30) is ferry.JobState.ERROR
            assert job.data["error"]["code"] == "BG_E_HTTP_ERROR_401"
        assert basic.complete() == "S_OK" and digest.complete() == "S_OK"
        assert (short_tmp / "b.bin").read_bytes() == (httpd.docroot / "basic/b.bin").read_bytes()
        assert (short_tmp / "g.bin").read_bytes() == (httpd.docroot / "digest/g.bin").read_bytes()
        lines = httpd.log_lines()
        assert any(line.startswith("bob 200 GET /basic/b.bin") for line in lines), lines
        assert any(line.startswith("bob 200 GET /digest/g.bin") for line in lines), lines

        assert wrong.remove_credentials("SERVER", "DIGEST") is True
        assert wrong.remove_credentials("SERVER", "DIGEST") is False
        assert wrong.credentials() == []

    # Persisted across a restart, and the password nowhere in clear: not in the state
    # directory (database, WAL, key file), not in the log, not in any answer.
    d.restart()
    with ferry.Client(d.socket) as c:
        again = c.get_job(bad.id)
        assert again.credentials() == [
            {"target": "SERVER", "scheme": "BASIC", "user": "bob", "implicit": False}
        ]
        assert PASSWORD not in str(c.get_job(basic.id).data)
    secret = PASSWORD.encode()
    for path in d.state_dir.rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes(), path
    assert PASSWORD not in d.log(10_000_000)
    key = d.state_dir / "credentials.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.stat().st_uid == 0


# ---- the proxy target: squid with Negotiate and Basic -----------------------------------


@pytest.fixture
def auth_squid(realm: Realm, short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from harness import squid

    if not squid.available():
        pytest.skip("squid is not installed")
    helpers = Path("/usr/lib/squid")
    for h in ("negotiate_kerberos_auth", "basic_ncsa_auth"):
        if not (helpers / h).exists():
            pytest.skip(f"squid's {h} is not installed")
    work = short_tmpdir("fy-sq-")
    passwd = work / "passwd"
    hashed = subprocess.run(["openssl", "passwd", "-apr1", "pr0xy-pw"], capture_output=True,
                            text=True, check=True).stdout.strip()  # fmt: skip
    passwd.write_text(f"carol:{hashed}\n")
    os.chmod(passwd, 0o644)
    # The negotiate helper reads the realm's krb5.conf through squid's environment.
    monkeypatch.setenv("KRB5_CONFIG", realm.conf)
    negotiate = f"{helpers}/negotiate_kerberos_auth -k {realm.proxy_keytab} -s GSS_C_NO_NAME"
    extra = f"""
auth_param negotiate program {negotiate}
auth_param negotiate children 3
auth_param negotiate keep_alive on
auth_param basic program {helpers}/basic_ncsa_auth {passwd}
auth_param basic children 3
auth_param basic realm ferry-test
acl authed proxy_auth REQUIRED
http_access allow authed
"""
    server = squid.Squid(work, extra=extra, open_access=False)
    server.start()
    yield server
    server.cleanup()
    shutil.rmtree(work, ignore_errors=True)


def test_seed_example_through_squid_and_apache(
    krb_ferryd: Daemon, httpd: Apache, realm: Realm, auth_squid: Any, short_tmp: Path
) -> None:
    """The helper's own ticket authenticates to squid (407, Negotiate) and to Apache (401,
    Negotiate); both logs show the helper's principal, never the owner's."""
    d = krb_ferryd
    httpd.put("neg/via.bin", os.urandom(200_000))
    url = httpd.url("neg/via.bin")
    dest = owned_dir(short_tmp / "via-dest", OWN, 0o700)
    helper_cc = _helper_ccache(short_tmp)
    realm.kinit_as(HLP, realm.helper, "helper-pw", helper_cc)
    proxy = {"usage": "OVERRIDE", "list": [auth_squid.url], "bypass": None}
    with ferry.Client(d.socket) as c:
        # Without the helper (and no ticket of the owner's): squid's 407 is fatal.
        with ferry.impersonate(OWN, OWN):
            alone = _new_job(c, "via-alone", url, dest / "alone.bin")
            alone.set(proxy=proxy)
            alone.set_credentials("PROXY", "NEGOTIATE")
            alone.resume()
        err = wait_state(d, alone.id, {"ERROR", "TRANSFERRED"})
        assert err["state"] == "ERROR" and err["error"]["code"] == "BG_E_HTTP_ERROR_407", err

        with SessionAgent(HLP) as helper:
            with ferry.impersonate(OWN, OWN):
                job = _new_job(c, "via-helper", url, dest / "via.bin")
                job.set(proxy=proxy)
                job.set_credentials("PROXY", "NEGOTIATE")
                handle = c.open(job.id, "token-options", ttl=600)
            _set_helper(d, helper, handle, helper_cc)
            with ferry.impersonate(OWN, OWN):
                c.token_options(handle).set_helper_token_flags(ferry.TokenFlags.NETWORK)
                job.resume()
            done = wait_state(d, job.id, {"TRANSFERRED", "ERROR"})
            assert done["state"] == "TRANSFERRED", done
            with ferry.impersonate(OWN, OWN):
                assert job.complete() == "S_OK"
    out = dest / "via.bin"
    assert out.read_bytes() == (httpd.docroot / "neg/via.bin").read_bytes()
    assert out.stat().st_uid == OWN
    entries = auth_squid.wait_access(lambda e: e.url.endswith("/neg/via.bin") and e.status == 200)
    mine = [e for e in entries if e.url.endswith("/neg/via.bin")]
    assert any(e.status == 200 and e.user == realm.helper for e in mine), mine
    assert not any(e.user and "owner" in e.user for e in entries), entries
    lines = _neg_lines(httpd, "via.bin")
    assert any(line.startswith(f"{realm.helper} 200 ") for line in lines), lines
    assert not any(realm.owner in line for line in lines), lines


def test_basic_to_squid(
    krb_ferryd: Daemon, httpd: Apache, auth_squid: Any, short_tmp: Path
) -> None:
    """Explicit Basic credentials for the PROXY target, sent only to squid (the origin's
    open location never sees them); a wrong password is a fatal 407."""
    d = krb_ferryd
    httpd.put("open/p.bin", os.urandom(30_000))
    proxy = {"usage": "OVERRIDE", "list": [auth_squid.url], "bypass": None}
    with ferry.Client(d.socket) as c:
        good = c.create_job("squid-basic")
        good.add_file(httpd.url("open/p.bin"), str(short_tmp / "p.bin"))
        good.set(proxy=proxy)
        good.set_credentials("PROXY", "BASIC", "carol", "pr0xy-pw")
        bad = c.create_job("squid-basic-bad")
        bad.add_file(httpd.url("open/p.bin"), str(short_tmp / "q.bin"))
        bad.set(proxy=proxy)
        bad.set_credentials("PROXY", "BASIC", "carol", "wrong")
        # A SERVER credential is never sent to the proxy.
        server_only = c.create_job("squid-server-cred")
        server_only.add_file(httpd.url("open/p.bin"), str(short_tmp / "r.bin"))
        server_only.set(proxy=proxy)
        server_only.set_credentials("SERVER", "BASIC", "carol", "pr0xy-pw")
        for job in (good, bad, server_only):
            job.resume()
        assert good.wait(timeout=30) is ferry.JobState.TRANSFERRED, good.data
        for job in (bad, server_only):
            assert job.wait(timeout=30) is ferry.JobState.ERROR
            assert job.data["error"]["code"] == "BG_E_HTTP_ERROR_407", job.data
    entries = auth_squid.wait_access(lambda e: e.status == 200 and e.user == "carol")
    assert any(e.user == "carol" and e.url.endswith("/open/p.bin") for e in entries), entries
    assert all(not line.startswith("carol") for line in httpd.log_lines())


# ---- service identities: a keytab from ferryd's config, read as that uid -----------------


def _fd_targets(pid: int | str) -> list[str]:
    """What the open descriptors of process ``pid`` refer to (one closed meanwhile: left out)."""
    out = []
    for n in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{n}"))
        except OSError:
            continue
    return out


def _copy_dir(path: Path, uid: int, age: float) -> Path:
    """A ``ferry-krb5-*`` directory as older ferryd versions made them, ``age`` seconds old."""
    path.mkdir(mode=0o700)
    (path / "credentials").write_bytes(b"\x05\x02 a keytab")
    os.chown(path / "credentials", uid, uid)
    os.chown(path, uid, uid)
    when = time.time() - age
    os.utime(path, (when, when))
    return path


def _session_of_this_process() -> bool:
    with open("/proc/self/sessionid") as f:
        return f.read().strip() not in ("", "4294967295")


def test_service_identity_keytab_and_denial_at_use(
    realm: Realm, httpd: Apache, short_tmp: Path
) -> None:
    if _session_of_this_process():
        pytest.skip("the owner must be a service identity: run the tests outside a login session")
    keydir = owned_dir(short_tmp / "svc-keys", OWN, 0o700)
    keytab = keydir / "svc.keytab"
    realm.k.extract_keytab(realm.owner, str(keytab))
    os.chown(keytab, OWN, OWN)
    os.chmod(keytab, 0o600)
    # A keytab configured for a uid that connects from a login session: not used for it.
    user_keys = owned_dir(short_tmp / "user-keys", HLP, 0o700)
    user_keytab = user_keys / "user.keytab"
    realm.k.extract_keytab(realm.helper, str(user_keytab))
    os.chown(user_keytab, HLP, HLP)
    os.chmod(user_keytab, 0o600)
    # ferryd's own temporary directory, with what an older ferryd's crash left there.
    tmp = owned_dir(short_tmp / "ferryd-tmp", 0, 0o700)
    stale = _copy_dir(tmp / "ferry-krb5-old", 0, age=3600)
    fresh = _copy_dir(tmp / "ferry-krb5-new", 0, age=0)  # may be a running ferryd's
    theirs = _copy_dir(tmp / "ferry-krb5-other", OTHER, age=3600)  # not ferryd's user's
    os.symlink(stale.parent / "elsewhere", tmp / "ferry-krb5-link")
    d = Daemon(
        short_tmp / "kd",
        system=True,
        config=f'[daemon]\nsession_poll_interval = 0.2\n[kerberos]\nkeytabs = {{ "{OWN}" = '
        f'"{keytab}", "{HLP}" = "{user_keytab}" }}\n',
        env={"KRB5_CONFIG": realm.conf, "TMPDIR": str(tmp)},
    )
    os.chmod(short_tmp / "kd", 0o755)
    d.start()
    try:
        assert not stale.exists()
        assert fresh.exists() and theirs.exists() and (tmp / "ferry-krb5-link").is_symlink()
        left = sorted(os.listdir(tmp))
        httpd.put("neg/svc.bin", os.urandom(20_000))
        dest = owned_dir(short_tmp / "svc-dest", OWN, 0o700)
        with ferry.Client(d.socket) as c, ferry.impersonate(OWN, OWN):
            job = _new_job(c, "svc-keytab", httpd.url("neg/svc.bin"), dest / "svc.bin")
            job.resume()
            assert job.wait(timeout=30) is ferry.JobState.TRANSFERRED, job.data
        lines = _neg_lines(httpd, "svc.bin")
        assert any(line.startswith(f"{realm.owner} 200 ") for line in lines), lines
        # The keytab went to GSSAPI through memory: nothing of it on disk, and it is still
        # held (the entry is cached) in an anonymous memory file of ferryd's.
        assert sorted(os.listdir(tmp)) == left
        held = _fd_targets(d.pid)
        assert any(h.startswith("/memfd:ferry-krb5") for h in held), held

        # The same for a uid in a login session, which names no cache: no keytab for it.
        mine = owned_dir(short_tmp / "sessioned", HLP, 0o755)
        with SessionAgent(HLP) as who:
            jid = _negotiate_job(d, who, "sess", httpd.url("neg/svc.bin"), mine / "sess.bin")
            assert who.call(d.socket, "POST", f"/v1/jobs/{jid}/resume", {})[0] == 200
            err = wait_state(d, jid, {"ERROR", "TRANSFERRED"})
            assert err["state"] == "ERROR" and err["error"]["code"] == "BG_E_HTTP_ERROR_401", err
        assert not any(realm.helper in line for line in _neg_lines(httpd, "svc.bin"))

        # A cache accepted when named, then swapped for a symlink to another uid's cache:
        # refused when it is read for the transfer (E_ACCESSDENIED), nothing read.
        mine = owned_dir(short_tmp / "swap", HLP, 0o755)
        other = owned_dir(short_tmp / "swap-other", OTHER, 0o700)
        theirs = other / "krb5cc"
        theirs.write_bytes(b"not yours")
        os.chown(theirs, OTHER, OTHER)
        cache = mine / "krb5cc"
        with SessionAgent(HLP) as who:
            jid = _negotiate_job(d, who, "swap", httpd.url("neg/svc.bin"), mine / "out.bin",
                                 ccache=str(cache))  # fmt: skip
            os.symlink(theirs, cache)
            os.lchown(cache, HLP, HLP)
            assert who.call(d.socket, "POST", f"/v1/jobs/{jid}/resume", {})[0] == 200
            err = wait_state(d, jid, {"ERROR", "TRANSFERRED"})
            assert err["state"] == "ERROR" and err["error"]["code"] == "E_ACCESSDENIED", err
    finally:
        assert d.stop() == 0, d.log()


# ---- GssCredentials in this process: memory only, released with their entry -------------


def _memfds() -> int:
    return sum(1 for f in _fd_targets("self") if f.startswith("/memfd:ferry-krb5"))


def _token(creds: Any) -> bytes:
    import gssapi

    ctx = gssapi.SecurityContext(
        name=gssapi.Name("HTTP@localhost", gssapi.NameType.hostbased_service),
        creds=creds,
        usage="initiate",
        mech=gssapi.OID.from_int_seq("1.3.6.1.5.5.2"),
    )
    return bytes(ctx.step() or b"")


@pytest.fixture
def gss_sources(
    realm: Realm, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[Any], Path]:
    """Four distinct caches of the helper principal and the owner's keytab, as bytes; this
    process set up to use the realm, with a private temporary directory to watch."""
    import tempfile

    from ferry.transfer.base import KerberosSource

    monkeypatch.setenv("KRB5_CONFIG", realm.conf)
    for var in ("KRB5CCNAME", "KRB5_CLIENT_KTNAME", "KRB5_KTNAME"):
        monkeypatch.delenv(var, raising=False)
    tmp = owned_dir(short_tmp / "proc-tmp", 0, 0o700)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    sources = []
    for i in range(4):
        path = short_tmp / f"cc{i}"
        realm.kinit_as(0, realm.helper, "helper-pw", str(path))
        sources.append(KerberosSource("ccache", path.read_bytes(), 0))
        path.unlink()
    keytab = short_tmp / "own.keytab"
    realm.k.extract_keytab(realm.owner, str(keytab))
    sources.append(KerberosSource("keytab", keytab.read_bytes(), 0))
    keytab.unlink()
    return sources, tmp


def test_gss_credentials_live_in_memory_and_go_with_their_entry(
    gss_sources: tuple[list[Any], Path],
) -> None:
    import gssapi
    from gssapi.raw.misc import GSSError

    from ferry.transfer.gsscreds import NO_CLIENT_KEYTAB, GssCredentials

    sources, tmp = gss_sources
    *caches, keytab = sources
    gss = GssCredentials(limit=2)
    base = _memfds()

    def reload(memory: str) -> Any:
        store = {"ccache": memory, "client_keytab": NO_CLIENT_KEYTAB}
        return gssapi.Credentials(usage="initiate", store=store)

    with gss.lease(keytab) as kcreds:  # leased throughout
        assert _token(kcreds)
        assert _memfds() == base + 1  # the keytab, in memory, while its entry lives
        with gss.lease(caches[0]) as c0:
            assert _token(c0)
            assert _memfds() == base + 1  # a cache's memory file is closed once copied
        memory0 = next(e.memory for e in gss._cache.values() if e.fd is None)
        reload(memory0)  # the tickets are in that MEMORY cache now
        for src in caches[1:]:
            with gss.lease(src) as c:
                assert _token(c)
        assert len(gss) == 2
        with pytest.raises(GSSError):
            reload(memory0)  # evicted: its MEMORY cache is destroyed, tickets gone
        # The keytab's entry was evicted too, but it is leased: still whole, still usable.
        assert _memfds() == base + 1
        assert _token(kcreds)
    assert _memfds() == base  # its last lease ended: released
    gss.close()
    assert len(gss) == 0 and _memfds() == base
    assert os.listdir(tmp) == []  # nothing ever touched the disk


def test_gss_credentials_under_threads(gss_sources: tuple[list[Any], Path]) -> None:
    """Many threads at once on a small table: every lease answers, no entry is released
    under a user, and nothing is left behind (finding 5 of the network-auth review)."""
    from concurrent.futures import ThreadPoolExecutor

    from ferry.transfer.gsscreds import GssCredentials

    sources, tmp = gss_sources
    gss = GssCredentials(limit=2)
    base = _memfds()

    def use(i: int) -> int:
        with gss.lease(sources[i % len(sources)]) as creds:
            return len(_token(creds))

    with ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(use, range(200)))
    assert all(n > 0 for n in sizes)
    assert len(gss) <= 2
    gss.close()
    assert _memfds() == base
    assert os.listdir(tmp) == []
