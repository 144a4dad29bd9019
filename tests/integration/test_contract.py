"""The API contract end to end, through a real ferryd: every settable property through every
client (the sync and asyncio libraries and the ``ferry`` command), a file's SHA-256 through
each of them, and the served OpenAPI document. Parametrised over the contract's own tables,
so a property added there is tested here without a new line."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from harness.faultserver import FaultServer
from harness.ferryd import Daemon

from ferry import AsyncClient, Client, JobState
from ferry.protocol import PROPERTIES, ROUTES, Property
from ferry.protocol.openapi import openapi_document
from tests.integration.api_schema import assert_valid
from tests.integration.cli_helpers import Cli

CLIENTS = ("sync", "async", "cli")


def cli_args(prop: Property, value: Any) -> list[str]:
    """``ferry set`` options that give ``prop`` the wire value ``value``."""
    if prop.switch:
        return [prop.cli.flag if value else "--no-" + prop.cli.flag.removeprefix("--")]
    return [prop.cli.flag, prop.cli.format(value)]


def set_through(kind: str, ferryd: Daemon, job_id: str, props: dict[str, Any]) -> dict[str, Any]:
    """Set ``props`` with one client; returns the job object read back afterwards with a
    raw API call (nothing is answered from the setter's memory)."""
    if kind == "sync":
        with Client(ferryd.socket) as c:
            job = c.get_job(job_id)
            job.set(**props)
            assert_valid("Job", job.data)
    elif kind == "async":

        async def run() -> None:
            async with AsyncClient(ferryd.socket) as c:
                job = await c.get_job(job_id)
                await job.set(**props)
                assert_valid("Job", job.data)

        asyncio.run(run())
    else:
        args = [a for name, v in props.items() for a in cli_args(by_name(name), v)]
        answer = Cli(ferryd.socket).ok("set", job_id, *args)
        assert_valid("Job", answer)
    status, info = ferryd.call("GET", f"/v1/jobs/{job_id}")
    assert status == 200, info
    assert_valid("Job", info)
    return info  # type: ignore[no-any-return]


def by_name(name: str) -> Property:
    return next(p for p in PROPERTIES if p.name == name)


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize("prop", PROPERTIES, ids=lambda p: p.name)
def test_every_property_through_every_client(ferryd: Daemon, prop: Property, kind: str) -> None:
    with Client(ferryd.socket) as c:
        job = c.create_job(f"props-{prop.name}-{kind}")
        before = job.data[prop.name]
    assert before != prop.example
    after = set_through(kind, ferryd, job.id, {prop.name: prop.example})
    assert after[prop.name] == prop.example
    # Nothing else moved.
    assert {k: v for k, v in after.items() if k not in (prop.name, "times")} == {
        k: v for k, v in job.data.items() if k not in (prop.name, "times")
    }
    # And back to where it was (a switch both ways, a command line cleared, ...).
    assert set_through(kind, ferryd, job.id, {prop.name: before})[prop.name] == before


@pytest.mark.parametrize("kind", CLIENTS)
def test_every_property_at_once(ferryd: Daemon, kind: str) -> None:
    with Client(ferryd.socket) as c:
        job_id = c.create_job(f"all-{kind}").id
    after = set_through(kind, ferryd, job_id, {p.name: p.example for p in PROPERTIES})
    assert {p.name: after[p.name] for p in PROPERTIES} == {p.name: p.example for p in PROPERTIES}


def test_ferry_set_offers_every_property(ferryd: Daemon) -> None:
    cli = Cli(ferryd.socket)
    help_text = cli("set", "--help", json=False).stdout
    for p in PROPERTIES:
        assert p.cli.flag in help_text, p.name
        if p.switch:
            assert "--no-" + p.cli.flag.removeprefix("--") in help_text
    cli.ok("create", "dyn")
    r = cli("set", "dyn", "--dynamic-content", json=False)
    assert r.returncode == 0 and "updated" in r.stdout, r
    assert "Dynamic content" in cli("info", "dyn", json=False).stdout
    with Client(ferryd.socket) as c:
        assert c.get_job("dyn").dynamic_content is True
    r = cli("set", "dyn", "--min-retry-delay", "soon")
    assert r.returncode == 2 and "'soon' is not an integer" in r.stderr, r


# ---- a file's SHA-256 ---------------------------------------------------------------------


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def add_through(
    kind: str, ferryd: Daemon, job_id: str, files: list[tuple[str, str, str | None]]
) -> None:
    """Add files with their digests through one client, each the way it spells them."""
    if kind == "sync":
        with Client(ferryd.socket) as c:
            job = c.get_job(job_id)
            remote, local, digest = files[0]
            job.add_file(remote, local, sha256=digest)
            job.add_files(files[1:])
    elif kind == "async":

        async def run() -> None:
            async with AsyncClient(ferryd.socket) as c:
                job = await c.get_job(job_id)
                await job.add_files(files[:-1])
                remote, local, digest = files[-1]
                await job.add_file(remote, local, sha256=digest)

        asyncio.run(run())
    else:
        names = [n for remote, local, _ in files for n in (remote, local)]
        digests = [a for *_, d in files for a in ("--sha256", d or "-")]
        assert_valid("Job", Cli(ferryd.socket).ok("add", job_id, *names, *digests))


@pytest.mark.parametrize("kind", CLIENTS)
def test_sha256_through_every_client_is_enforced(
    ferryd: Daemon, http_server: FaultServer, dest: Path, kind: str
) -> None:
    """Three files: one not checked, one with its right digest (upper case: any case is
    taken), one whose digest is wrong. The first two arrive; the third fails the job with
    BG_E_VALIDATION_FAILED and its data is discarded."""
    plain, good, bad = os.urandom(3000), os.urandom(40_000), os.urandom(50_000)
    files = [
        (http_server.add(f"plain-{kind}", plain), str(dest / "plain"), None),
        (http_server.add(f"good-{kind}", good), str(dest / "good"), sha(good).upper()),
        (http_server.add(f"bad-{kind}", bad), str(dest / "bad"), sha(b"not the data")),
    ]
    with Client(ferryd.socket) as c:
        job = c.create_job(f"sha-{kind}")
        add_through(kind, ferryd, job.id, files)
        listed = job.files()
        for f in listed:
            assert_valid("File", f.data)
        assert [f.sha256 for f in listed] == [None, sha(good), sha(b"not the data")]
        job.resume()
        assert job.wait(60) is JobState.ERROR
        assert_valid("Job", job.data)
        err = job.error
        assert err is not None
        assert (err["code"], err["hresult"], err["context"]) == (
            "BG_E_VALIDATION_FAILED",
            "0x80200053",
            "REMOTE_FILE",
        )
        assert err["file"] == {"remote_name": files[2][0], "local_name": files[2][1]}
        assert [f.completed for f in job.files()] == [True, True, False]
        assert job.complete() == "BG_S_PARTIAL_COMPLETE"
    assert (dest / "plain").read_bytes() == plain and (dest / "good").read_bytes() == good
    assert sorted(p.name for p in dest.iterdir()) == ["good", "plain"]


def test_cli_sha256_must_be_given_once_per_pair(ferryd: Daemon) -> None:
    cli = Cli(ferryd.socket)
    cli.ok("create", "sha-usage")
    r = cli("add", "sha-usage", "http://h/a", "/tmp/a", "http://h/b", "/tmp/b", "--sha256", "-")
    assert r.returncode == 2 and r.json["error"]["code"] == "E_INVALIDARG", r
    r = cli("add", "sha-usage", "http://h/a", "/tmp/a", "--sha256", "xyz")
    assert r.returncode == 1 and r.json["error"]["code"] == "E_INVALIDARG", r
    assert cli.ok("info", "sha-usage")["progress"]["files_total"] == 0


# ---- the OpenAPI document -------------------------------------------------------------------


def test_served_document_is_the_generated_one(ferryd: Daemon) -> None:
    status, doc = ferryd.call("GET", "/v1/openapi.json")
    assert status == 200
    assert doc == json.loads(json.dumps(openapi_document()))
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == {(r.method, r.path) for r in ROUTES}
    assert {op["operationId"] for ops in doc["paths"].values() for op in ops.values()} == {
        r.name for r in ROUTES
    }
    patch = doc["paths"]["/v1/jobs/{job}"]["patch"]["requestBody"]["content"]
    schema = patch["application/json"]["schema"]
    assert set(schema["properties"]) == {p.name for p in PROPERTIES}
    assert schema["example"] == {p.name: p.example for p in PROPERTIES}


def test_events_carry_event_objects(ferryd: Daemon) -> None:
    with Client(ferryd.socket) as c:
        job = c.create_job("events-schema")
        seen: list[str] = []
        with c.events(job.id, all_events=True) as stream:
            job.set(description="changed")
            for ev in stream:
                assert_valid("Event", {"type": ev.type, "job_id": ev.job_id, "job": ev.job})
                seen.append(ev.type)
                if ev.job is not None and ev.job["description"] == "changed":
                    break
    assert seen[0] == "job-snapshot" and seen[-1] == "job-modification", seen
