"""The API contract (ferry.protocol) against itself, the domain and the daemon: every table
has one meaning, every property's example is valid everywhere it goes, and the daemon binds
a handler to every route. The end-to-end counterpart is tests/integration/test_contract.py."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema_rs
import pytest

from ferry import protocol
from ferry.client import _ops
from ferry.errors import FerryError
from ferry.model.job import MIN_RETRY_DELAY_FLOOR, Job, JobFile, Limits
from ferry.model.notification import PendingNotification, status
from ferry.model.token import Token
from ferry.model.types import JobType, NotifyFlags, Priority
from ferry.protocol import (
    EVENT_TYPES,
    INTERFACES,
    MAX_HANDLE_TTL,
    PROPERTIES,
    PROPERTY_BY_NAME,
    ROUTE_BY_NAME,
    ROUTES,
    SCHEMAS,
    SETTABLE_PROPERTIES,
    Property,
    default_socket,
    default_state_dir,
)
from ferry.protocol.views import file_view, job_view
from tests.integration.api_schema import assert_valid

OWNER = Token(uid=1000, gid=1000, groups=(1000,), session=7, name="alice")
NOW = 1_700_000_000.0


def fresh_job() -> Job:
    return Job.new(OWNER, "contract", NOW, Limits(), JobType.DOWNLOAD)


def by_name(p: Property) -> str:
    return p.name


# ---- properties -----------------------------------------------------------------------------


@pytest.mark.parametrize("prop", PROPERTIES, ids=by_name)
def test_property_example_is_valid_and_reads_back(prop: Property) -> None:
    """The example fits the property's schema, the domain accepts it, the view shows it as
    given, and it differs from a new job's value (so reading it back proves the change)."""
    jsonschema_rs.meta.validate(dict(prop.schema))
    assert jsonschema_rs.validator_for(dict(prop.schema)).is_valid(prop.example)
    job = fresh_job()
    assert job_view(job)[prop.name] != prop.example
    job.set_properties({prop.name: prop.example}, Limits(), NOW + 1)
    assert job_view(job)[prop.name] == prop.example
    assert_valid("Job", job_view(job))


@pytest.mark.parametrize("prop", PROPERTIES, ids=by_name)
def test_property_example_survives_the_cli_text(prop: Property) -> None:
    assert prop.cli.flag == "--" + prop.name.replace("_", "-")
    if prop.switch:
        return
    if prop.choices is not None:
        assert prop.example in prop.choices
        assert prop.cli.parse(prop.example.upper()) == prop.example
        return
    assert prop.cli.parse(prop.cli.format(prop.example)) == prop.example


@pytest.mark.parametrize("prop", PROPERTIES, ids=by_name)
def test_property_example_as_the_client_sends_it(prop: Property) -> None:
    call = _ops.set_job("j", {prop.keyword: prop.example})
    assert (call.method, call.target) == ("PATCH", "/v1/jobs/j")
    assert call.body is not None and json.loads(call.body) == {prop.name: prop.example}


def test_client_conveniences() -> None:
    wire = {
        "priority": (Priority.HIGH, "high"),
        "notify_flags": (NotifyFlags.JOB_ERROR | NotifyFlags.DISABLE, 6),
        "notify_cmdline": ("/bin/echo 'a b' c", ["/bin/echo", "a b", "c"]),
    }
    for name, (given, sent) in wire.items():
        assert PROPERTY_BY_NAME[name].to_wire(given) == sent
    for cleared in ("", None, []):
        assert PROPERTY_BY_NAME["notify_cmdline"].to_wire(cleared) is None


def test_integer_text() -> None:
    parse = PROPERTY_BY_NAME["min_retry_delay"].cli.parse
    assert parse(" 060 ") == 60
    with pytest.raises(ValueError, match="not an integer"):
        parse("0x10")


def test_notify_flags_text() -> None:
    parse = PROPERTY_BY_NAME["notify_flags"].cli.parse
    assert parse("0x1b") == parse("27") == 0x1B
    assert parse("JOB_TRANSFERRED, bg_notify_file_transferred|JOB_ERROR") == 0x13
    with pytest.raises(ValueError, match="JOB_TRANSFERRED"):
        parse("SOMETIMES")


def test_the_patch_route_is_the_property_list() -> None:
    body = ROUTE_BY_NAME["set_job"].body
    assert body is not None and set(body) == SETTABLE_PROPERTIES
    assert {k: dict(f.schema) for k, f in body.items()} == {
        p.name: dict(p.schema) for p in PROPERTIES
    }


# ---- the contract and the other side ---------------------------------------------------------


def test_contract_constants_match_the_daemon() -> None:
    from ferry.security.handles import MAX_TTL, Interface
    from ferry.service import events

    assert set(INTERFACES) == {i.value for i in Interface}
    assert MAX_HANDLE_TTL == MAX_TTL
    assert set(EVENT_TYPES) == {
        events.JOB_SNAPSHOT, events.JOB_MODIFICATION, events.JOB_TRANSFERRED,
        events.JOB_ERROR, events.FILE_TRANSFERRED, events.JOB_REMOVED,
    }  # fmt: skip
    assert PROPERTY_BY_NAME["min_retry_delay"].schema["minimum"] == MIN_RETRY_DELAY_FLOOR
    assert PROPERTY_BY_NAME["notify_flags"].schema["maximum"] == int(NotifyFlags.all())


def test_every_route_has_a_handler_and_every_handler_a_route() -> None:
    from ferry.daemon.api import Api, handler_names

    handlers = handler_names()
    assert set(handlers) == {r.name for r in ROUTES}
    assert {name for name in dir(Api) if name.startswith("h_")} == set(handlers.values())
    assert len({(r.method, r.path) for r in ROUTES}) == len(ROUTES) == len(ROUTE_BY_NAME)


def test_a_route_without_handler_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from ferry.daemon import api

    extra = api.ROUTES + (ROUTES[0].__class__("GET", "/v1/x", "nowhere", "x"),)
    monkeypatch.setattr(api, "ROUTES", extra)
    with pytest.raises(RuntimeError, match="no handler"):
        api.handler_names()


@pytest.mark.parametrize(
    ("operation", "raw", "problem"),
    [
        ("set_job", b"[1]", "must be a JSON object"),
        ("set_job", b"{nope", "not valid JSON"),
        ("set_job", b'{"colour": "red"}', "unknown field"),
        ("set_job", b'{"min_retry_delay": true}', "wrong type"),
        ("set_job", b'{"notify_cmdline": "/bin/true"}', "wrong type"),
        ("create_job", b"{}", "missing field"),
        ("job_set_helper_token_flags", b'{"flags": 1.5}', "wrong type"),
    ],
)
def test_request_bodies_are_checked_against_the_route(
    operation: str, raw: bytes, problem: str
) -> None:
    with pytest.raises(FerryError, match=problem) as e:
        ROUTE_BY_NAME[operation].parse_body(raw)
    assert e.value.code == "E_INVALIDARG"


def test_request_bodies_that_fit() -> None:
    assert ROUTE_BY_NAME["resume"].parse_body(b"  ") == {}
    body = b'{"notify_cmdline": null, "dynamic_content": false, "notify_flags": 3}'
    assert ROUTE_BY_NAME["set_job"].parse_body(body) == {
        "notify_cmdline": None, "dynamic_content": False, "notify_flags": 3,
    }  # fmt: skip
    assert ROUTE_BY_NAME["logoff"].parse_body(b'{"user": 1000}') == {"user": 1000}


def _route_of(method: str, target: str) -> str:
    path = target.split("?", 1)[0]
    for r in ROUTES:
        pattern = re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(r.path))
        if r.method == method and re.fullmatch(pattern, path):
            return r.name
    raise AssertionError(f"{method} {target} is no contract route")


def test_every_client_request_is_a_contract_route() -> None:
    calls = [
        _ops.status(),
        _ops.create_job("n"),
        _ops.get_job("j"),
        _ops.list_jobs(True),
        _ops.set_job("j", {"description": "d"}),
        _ops.list_files("j"),
        _ops.add_files("j", [("http://h/x", "/tmp/x", "00" * 32)]),
        _ops.set_remote_name("j", 2, "http://h/y"),
        _ops.replace_remote_prefix("j", "http://h/", "https://h/"),
        _ops.set_reply_file("j", "/tmp/r"),
        _ops.reply_data("j"),
        *(_ops.action("j", a) for a in ("resume", "suspend", "cancel", "complete")),
        _ops.action("j", "take-ownership"),
        _ops.open_handle("j", "token-options", 60),
        _ops.release_handle("h"),
        _ops.logoff(session=3),
        _ops.shutdown(),
        _ops.fleet(),
        _ops.get_network(),
        _ops.set_network_cost("metered"),
        _ops.reload(),
        _ops.metrics(),
        *(
            op(**where)
            for op in (_ops.get_helper_token, _ops.set_helper_token, _ops.clear_helper_token)
            for where in ({"job": "j"}, {"handle": "h"})
        ),
        _ops.set_helper_token_flags(1, job="j"),
        _ops.set_helper_token_flags(1, handle="h"),
        _ops.list_credentials("j"),
        _ops.set_credentials("j", "SERVER", "BASIC", "u", "p"),
        _ops.remove_credentials("j", "SERVER", "BASIC"),
        _ops.set_http_options("j", {"http_method": "GET"}),
    ]
    used = {_route_of(c.method, c.target) for c in calls}
    used.add(_route_of("GET", _ops.events_target("j", all_events=True)))
    # Every route a client is meant to call has a request builder.
    assert {r.name for r in ROUTES} - used == {"openapi", "get_handle"} | {
        "handle_" + a for a in ("resume", "suspend", "cancel", "complete")
    }


def test_add_files_entries_follow_the_contract() -> None:
    call = _ops.add_files("j", [("http://h/a", "/tmp/a"), ("http://h/b", "/tmp/b", "AB" * 32)])
    assert call.body is not None
    assert json.loads(call.body)["files"] == [
        {"remote_name": "http://h/a", "local_name": "/tmp/a"},
        {"remote_name": "http://h/b", "local_name": "/tmp/b", "sha256": "AB" * 32},
    ]
    body_schema = ROUTE_BY_NAME["add_files"].body
    assert body_schema is not None
    validator = jsonschema_rs.validator_for(dict(body_schema["files"].schema))
    assert validator.is_valid(json.loads(call.body)["files"])
    assert not validator.is_valid([{"remote_name": "x", "local_name": "/y", "sha256": "0"}])


# ---- schemas ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_component_schemas_are_json_schema(name: str) -> None:
    jsonschema_rs.meta.validate(json.loads(json.dumps(SCHEMAS[name])))


def test_views_with_every_optional_part_fit_the_schemas() -> None:
    job = fresh_job()
    job.add_files([JobFile("https://h/a", "/srv/a", sha256="ab" * 32)], Limits(), NOW + 1)
    job.files[0].final_url = "https://cdn/a"
    pending = PendingNotification(job.id, "JOB_ERROR", "ERROR", OWNER, ["/bin/true"], NOW, 60)
    job.notification = status(pending, "FAILED", "E_FAIL", "exited with status 3")
    assert_valid("Job", job_view(job))
    assert_valid("File", file_view(job.files[0]))
    assert_valid("Event", {"type": "job-snapshot", "job_id": job.id, "job": job_view(job)})
    with pytest.raises(AssertionError, match="(?i)additional"):
        assert_valid("Job", {**job_view(job), "surprise": 1})


# ---- default paths --------------------------------------------------------------------------


def test_default_paths() -> None:
    assert default_socket(True, {}) == "/run/ferry/ferryd.sock"
    assert default_state_dir(True, {}) == "/var/lib/ferry"
    assert default_socket(False, {"XDG_RUNTIME_DIR": "/r"}) == "/r/ferry/ferryd.sock"
    assert default_socket(False, {}).endswith("/ferry/ferryd.sock")
    assert default_state_dir(False, {"XDG_STATE_HOME": "/s", "HOME": "/h"}) == "/s/ferry"
    assert default_state_dir(False, {"HOME": "/h"}) == "/h/.local/state/ferry"


def test_daemon_config_uses_the_default_paths(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from ferry.client.sockets import locate_socket
    from ferry.daemon.config import load_config

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("FERRY_SOCKET", raising=False)
    user = load_config(system=False)
    assert str(user.socket) == default_socket(False) == str(tmp_path / "run/ferry/ferryd.sock")
    assert str(user.state_dir) == default_state_dir(False)
    system = load_config(system=True)
    assert (str(system.socket), str(system.state_dir)) == (
        default_socket(True),
        default_state_dir(True),
    )
    # No user daemon socket there: a client falls back to the system daemon's.
    assert locate_socket().path == default_socket(True)


def test_the_contract_is_light_to_import() -> None:
    """The CLI imports it: no aiohttp, click or rich (even with the whole ``ferry``
    package, which ``import ferry.protocol`` loads first)."""
    code = (
        "import sys, ferry.protocol, ferry.protocol.openapi\n"
        "print([m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'click', 'rich')])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out


def test_the_contract_imports_only_the_domain() -> None:
    """Layering: protocol/ may use ferry.model and ferry.errors, never what sits above."""
    package = Path(protocol.__file__).parent
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("."):
                    assert re.match(r"^(\.\.(model|errors|_version)\b|\.\w)", name), (
                        source.name,
                        name,
                    )
                else:
                    assert name.split(".")[0] not in ("ferry", "aiohttp", "click", "rich"), (
                        source.name,
                        name,
                    )
