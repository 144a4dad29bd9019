"""Session agents: real login sessions for tests that run as root.

An agent is a forked Python process that writes a uid to /proc/self/loginuid (which gives
it a fresh audit session id), drops to that uid with its groups, and then makes API calls
on request over its own connections. Killing it ends the session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

_AGENT = r"""
import http.client, json, os, socket, sys
uid, gid, groups = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
with open("/proc/self/loginuid", "w") as f:
    f.write(str(uid))
os.setgroups(groups)
os.setgid(gid)
os.setuid(uid)
session = int(open("/proc/self/sessionid").read())
print(json.dumps({"session": session, "pid": os.getpid()}), flush=True)

class C(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=30)
        self.path_ = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self.path_)

conns = {}
for line in sys.stdin:
    req = json.loads(line)
    if req["op"] == "call":
        key = req.get("conn", "default")
        c = conns.get(key)
        if c is None:
            c = conns[key] = C(req["socket"])
        body = None if req.get("body") is None else json.dumps(req["body"])
        for attempt in (1, 2):
            try:
                c.request(req["method"], req["path"], body=body,
                          headers={"Content-Type": "application/json"})
                r = c.getresponse()
                data = r.read()
                out = [r.status, json.loads(data) if data else None]
                break
            except (http.client.HTTPException, OSError) as exc:
                # A kept-alive connection to a daemon that restarted: reconnect once.
                c.close()
                c = conns[key] = C(req["socket"])
                out = [0, {"exception": repr(exc)}]
    elif req["op"] == "close":
        c = conns.pop(req.get("conn", "default"), None)
        if c is not None:
            c.close()
        out = [200, None]
    else:
        out = [0, {"exception": "unknown op"}]
    print(json.dumps(out), flush=True)
"""


class SessionAgent:
    def __init__(self, uid: int, gid: int | None = None, groups: tuple[int, ...] = ()) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("session agents need root")
        self.uid = uid
        self.gid = uid if gid is None else gid
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _AGENT, str(uid), str(self.gid), json.dumps(list(groups))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd="/",
        )
        assert self.proc.stdout is not None
        hello = json.loads(self.proc.stdout.readline())
        self.session: int = hello["session"]

    def call(
        self, socket_path: str, method: str, path: str, body: Any = None, conn: str = "default"
    ) -> tuple[int, Any]:
        """One API request over one of the agent's connections (kept open by name)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        req = {
            "op": "call",
            "socket": socket_path,
            "method": method,
            "path": path,
            "body": body,
            "conn": conn,
        }
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        status, data = json.loads(self.proc.stdout.readline())
        return status, data

    def close_connection(self, conn: str = "default") -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": "close", "conn": conn}) + "\n")
        self.proc.stdin.flush()
        self.proc.stdout.readline()

    def end(self) -> None:
        """Log off: the only process of the session goes away."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> SessionAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()
