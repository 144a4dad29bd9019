"""NetworkManager's D-Bus API for tests: a private ``dbus-daemon`` in a temporary directory
(never the system bus) with python-dbusmock's NetworkManager template on it, and the calls
that change what it answers (the ``Metered`` property of the primary connection).

Debian's python3-dbusmock runs under the system Python (``/usr/bin/python3``): the PyPI
package would build dbus-python. ferryd is pointed at the bus with ``[network]
dbus_address``."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Self

from harness.process import stop_process

DBUS_DAEMON = shutil.which("dbus-daemon") or "/usr/bin/dbus-daemon"
DBUS_SEND = shutil.which("dbus-send") or "/usr/bin/dbus-send"
SYSTEM_PYTHON = "/usr/bin/python3"
NM = "org.freedesktop.NetworkManager"
NM_PATH = "/org/freedesktop/NetworkManager"


def missing() -> str | None:
    """Why the NetworkManager mock cannot run here, or None."""
    if not os.access(DBUS_DAEMON, os.X_OK) or not os.access(DBUS_SEND, os.X_OK):
        return "dbus-daemon/dbus-send are not installed (Debian: dbus)"
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import dbusmock.templates.networkmanager"],
        capture_output=True,
    )
    if probe.returncode != 0:
        return "python-dbusmock is not installed for the system Python (Debian: python3-dbusmock)"
    return None


class MockNetworkManager:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.address = f"unix:path={self.dir / 'bus'}"
        self.bus: subprocess.Popen[bytes] | None = None
        self.mock: subprocess.Popen[bytes] | None = None
        self._metered_added = False

    def start(self) -> Self:
        log = open(self.dir / "dbus.log", "ab")  # noqa: SIM115 - closed with the child
        self.bus = subprocess.Popen(
            [DBUS_DAEMON, "--session", f"--address={self.address}", "--nofork"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 10
        while not (self.dir / "bus").exists():
            if time.monotonic() > deadline or self.bus.poll() is not None:
                raise RuntimeError("the private dbus-daemon did not start")
            time.sleep(0.02)
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=self.address)
        env.pop("PYTHONPATH", None)
        mlog = open(self.dir / "mock.log", "ab")  # noqa: SIM115
        self.mock = subprocess.Popen(
            [SYSTEM_PYTHON, "-m", "dbusmock", "--template", "networkmanager"],
            stdin=subprocess.DEVNULL, stdout=mlog, stderr=mlog, env=env,
        )  # fmt: skip
        mlog.close()
        while self._send("org.freedesktop.DBus.Peer.Ping", check=False) != 0:
            if time.monotonic() > deadline or self.mock.poll() is not None:
                self.stop()
                raise RuntimeError("python-dbusmock's NetworkManager did not start")
            time.sleep(0.05)
        return self

    def _send(self, method: str, *args: str, check: bool = True) -> int:
        proc = subprocess.run(
            [DBUS_SEND, f"--bus={self.address}", "--print-reply", f"--dest={NM}", NM_PATH,
             method, *args],
            capture_output=True, timeout=10,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise RuntimeError(f"dbus-send {method}: {proc.stderr.decode(errors='replace')}")
        return proc.returncode

    def set_metered(self, value: int) -> None:
        """NMMetered: 1 yes, 2 no, 3 guess-yes, 4 guess-no, 0 unknown."""
        if not self._metered_added:
            self._send("org.freedesktop.DBus.Mock.AddProperty", f"string:{NM}",
                       "string:Metered", f"variant:uint32:{value}")  # fmt: skip
            self._metered_added = True
        else:
            self._send("org.freedesktop.DBus.Properties.Set", f"string:{NM}",
                       "string:Metered", f"variant:uint32:{value}")  # fmt: skip

    def stop(self) -> None:
        for proc in (self.mock, self.bus):
            stop_process(proc)
        self.mock = self.bus = None
