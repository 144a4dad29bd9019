"""The PAM close-session hook (contrib/pam/ferry-pam-logoff) ends a session in ferryd at
once: a helper token from that session is discarded before any poll could notice."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness.env import ROOT
from harness.ferryd import Daemon

B = 40402
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")

# Runs as root in a fresh audit session (loginuid B): sets B as the helper token from inside
# that session, runs the hook as pam_exec would, then waits so the session stays alive.
_SESSION = r"""
import os, subprocess, sys
import ferry
sock, handle, hook, uid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with open("/proc/self/loginuid", "w") as f:
    f.write(str(uid))
c = ferry.Client(sock)
with ferry.impersonate(uid, uid):
    c.token_options(handle).set_helper_token()
print("session", open("/proc/self/sessionid").read().strip(), flush=True)
sys.stdin.readline()
env = dict(os.environ, PAM_TYPE="close_session", FERRY=f"{sys.executable} -m ferry.cli.main",
           FERRY_SOCKET=sock)
subprocess.run(["sh", hook], env=env, check=True)
print("hooked", flush=True)
sys.stdin.readline()
"""


def test_close_session_hook_discards_the_sessions_helper_token(
    system_ferryd: Daemon, short_tmp: Path
) -> None:
    d = system_ferryd
    # Poll rarely, so only the hook can explain a fast reaction.
    d.stop()
    (short_tmp / "ferryd.toml").write_text("[daemon]\nsession_poll_interval = 3600\n")
    d.start()
    status, job = d.call("POST", "/v1/jobs", {"display_name": "pam"})
    d.call(
        "POST",
        f"/v1/jobs/{job['id']}/files",
        {"files": [{"remote_name": "http://127.0.0.1:9/x", "local_name": str(short_tmp / "x")}]},
    )
    d.call("PUT", f"/v1/jobs/{job['id']}/helper-token/flags", {"flags": 2})
    handle = d.call(
        "POST", f"/v1/jobs/{job['id']}/handles", {"interface": "token-options", "ttl": 60}
    )[1]["handle"]
    hook = ROOT / "contrib" / "pam" / "ferry-pam-logoff"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SESSION, d.socket, handle, str(hook), str(B)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        assert line.startswith("session"), line
        info = d.call("GET", f"/v1/jobs/{job['id']}")[1]
        assert info["helper_token"]["sid"] == f"S-1-22-1-{B}"
        assert info["state"] == "SUSPENDED"
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "hooked"
        deadline = time.monotonic() + 10
        while (info := d.call("GET", f"/v1/jobs/{job['id']}")[1])["state"] != "ERROR":
            assert time.monotonic() < deadline, info
            time.sleep(0.05)
        assert info["error"]["code"] == "BG_E_TOKEN_REQUIRED"
        assert info["helper_token"] == {"sid": None, "flags": ["NETWORK"]}
        assert proc.poll() is None  # the session's process is still there: the hook did it
    finally:
        proc.kill()
        proc.wait()
