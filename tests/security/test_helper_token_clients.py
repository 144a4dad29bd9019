"""Helper tokens through the library (ferry.impersonate, TokenOptions) and the CLI
(ferry open / helper-token / logoff), as real uids against a system-mode ferryd."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from harness.ferryd import Daemon

import ferry
from tests.helpers.as_user import run_cli_as
from tests.helpers.jobs import owned_dir

A = 40301
B = 40302

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")


def test_service_owner_writes_as_impersonated_helper(
    system_ferryd: Daemon, short_tmp: Path
) -> None:
    """A root service owns the job and writes, through the helper, into a directory only B
    may write: the file lands owned by B, and root's own credentials never change."""
    src = short_tmp / "src.bin"
    src.write_bytes(os.urandom(64_000))
    dest = owned_dir(short_tmp / "b-dir", B, 0o755)
    before = (os.getresuid(), os.getresgid(), os.getgroups())
    with ferry.Client(system_ferryd.socket) as c:
        job = c.create_job("service-job")
        job.add_file(src.as_uri(), str(dest / "out.bin"))
        opts = job.token_options()
        with ferry.impersonate(B, B, [B]):
            opts.set_helper_token()
        assert (os.getresuid(), os.getresgid(), os.getgroups()) == before
        opts.set_helper_token_flags(ferry.TokenFlags.LOCAL_FILE)
        assert opts.helper_token_flags() == ferry.TokenFlags.LOCAL_FILE
        assert opts.helper_token_sid() == f"S-1-22-1-{B}"
        opts.clear_helper_token()
        assert opts.helper_token_sid() is None
        with ferry.impersonate(B, B, [B]):
            opts.set_helper_token()
        job.resume()
        assert job.wait(timeout=30) is ferry.JobState.TRANSFERRED
        assert job.complete() == "S_OK"
        out = dest / "out.bin"
        assert out.read_bytes() == src.read_bytes()
        assert out.stat().st_uid == B
        handle = opts.handle
        assert handle is not None
        opts.release()
        with pytest.raises(ferry.FerryError) as exc:
            c.token_options(handle).helper_token_sid()
        assert exc.value.code == "E_ACCESSDENIED"


def test_impersonated_calls_carry_the_other_identity(system_ferryd: Daemon) -> None:
    with ferry.Client(system_ferryd.socket) as c:
        with ferry.impersonate(A, A):
            assert c.status()["caller"]["uid"] == A
            job = c.create_job("made-as-a")
        assert job.data["owner"]["uid"] == A
        assert c.status()["caller"]["uid"] == 0


def test_impersonate_refuses_bad_ids() -> None:
    with pytest.raises(ferry.FerryError) as exc, ferry.impersonate(-1, 0):
        pass
    assert exc.value.code == "E_INVALIDARG"


async def test_async_token_options(system_ferryd: Daemon) -> None:
    async with ferry.AsyncClient(system_ferryd.socket) as c:
        job = await c.create_job("async-opts")
        opts = await job.token_options()
        with ferry.impersonate(B, B):
            await opts.set_helper_token()
        await opts.set_helper_token_flags(ferry.TokenFlags.NETWORK)
        assert await opts.helper_token_sid() == f"S-1-22-1-{B}"
        assert await opts.helper_token_flags() == ferry.TokenFlags.NETWORK
        await opts.release()


def cli(uid: int, d: Daemon, *args: str) -> tuple[int, object, str]:
    r = run_cli_as(uid, uid, ["--socket", d.socket, "--json", *args])
    try:
        doc = json.loads(r.stdout) if r.stdout.strip() else None
    except ValueError:
        doc = r.stdout
    return r.code, doc, r.stderr


def test_cli_delegation_between_users(system_ferryd: Daemon, short_tmp: Path) -> None:
    d = system_ferryd
    code, job, err = cli(A, d, "create", "cli-helper")
    assert code == 0, err
    assert isinstance(job, dict)
    code, opened, err = cli(A, d, "open", job["id"], "--interface", "token-options")
    assert code == 0, err
    assert isinstance(opened, dict)
    handle = opened["handle"]
    # B, holding A's handle, makes itself the helper token.
    code, shown, err = cli(B, d, "helper-token", "set", "--handle", handle)
    assert code == 0, err
    assert shown == {"flags": [], "flags_value": 0, "sid": f"S-1-22-1-{B}"}
    code, shown, err = cli(A, d, "helper-token", "flags", job["id"], "local-file", "network")
    assert code == 0, err
    assert isinstance(shown, dict) and shown["flags"] == ["LOCAL_FILE", "NETWORK"]
    code, info, _ = cli(A, d, "info", job["id"])
    assert isinstance(info, dict)
    assert info["helper_token"] == {"sid": f"S-1-22-1-{B}", "flags": ["LOCAL_FILE", "NETWORK"]}
    # B cannot address the job itself, only through the handle.
    code, denied, err = cli(B, d, "helper-token", "show", job["id"])
    assert code == 1 and "E_ACCESSDENIED (0x80070005)" in err
    assert isinstance(denied, dict) and denied["error"]["code"] == "E_ACCESSDENIED"
    code, _, err = cli(A, d, "helper-token", "flags", job["id"], "bogus")
    assert code == 2
    code, shown, err = cli(A, d, "helper-token", "clear", job["id"])
    assert code == 0 and isinstance(shown, dict) and shown["sid"] is None
    code, shown, _ = cli(A, d, "helper-token", "flags", job["id"], "none")
    assert code == 0 and isinstance(shown, dict) and shown["flags"] == []


def test_cli_logoff_is_for_admins(system_ferryd: Daemon) -> None:
    d = system_ferryd
    code, doc, err = cli(A, d, "logoff", "--user", str(B))
    assert code == 1 and "E_ACCESSDENIED" in err
    code, doc, err = cli(0, d, "logoff", "--user", str(B))
    assert code == 0, err
    assert isinstance(doc, dict) and doc["logged_off"]["uid"] == B
    code, doc, err = cli(0, d, "logoff", "--session", "4000000")
    assert code == 0 and isinstance(doc, dict) and 4000000 in doc["ended_sessions"]
    code, _, _ = cli(0, d, "logoff")
    assert code == 2
    time.sleep(0)
