"""SPEC §10's administrator operations with real uids against a system-mode ferryd: setting
the network cost and reloading the config are refused to ordinary users (and change
nothing), allowed to root; reading what ferryd sees of the network is for everyone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.ferryd import Daemon

from tests.helpers.session_agent import SessionAgent

CAROL = 40141


def as_user(d: Daemon, uid: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    with SessionAgent(uid) as agent:
        return agent.call(d.socket, method, path, body)


def test_network_cost_and_reload_are_for_administrators(system_ferryd: Daemon) -> None:
    d = system_ferryd
    status, doc = as_user(d, CAROL, "GET", "/v1/network")
    assert status == 200 and doc["cost"] == "unrestricted", doc
    status, err = as_user(d, CAROL, "PUT", "/v1/network/cost", {"cost": "roaming"})
    assert status == 403 and err["error"]["code"] == "E_ACCESSDENIED", err
    status, err = as_user(d, CAROL, "POST", "/v1/reload", {})
    assert status == 403 and err["error"]["code"] == "E_ACCESSDENIED", err
    assert d.call("GET", "/v1/network")[1]["cost"] == "unrestricted"  # nothing changed
    # Bad input from an administrator: E_INVALIDARG, nothing changed.
    status, err = d.call("PUT", "/v1/network/cost", {"cost": "free"})
    assert status == 400 and err["error"]["code"] == "E_INVALIDARG", err
    status, doc = d.call("PUT", "/v1/network/cost", {"cost": "roaming"})
    assert status == 200 and (doc["cost"], doc["cost_source"]) == (
        "roaming",
        "ferry network --cost",
    )
    status, doc = d.call("POST", "/v1/reload", {})
    assert status == 200, doc
    assert Path(doc["config_file"]).name == "ferryd.toml"
