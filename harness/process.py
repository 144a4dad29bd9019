"""Starting and stopping the real servers the tests run (nginx, squid, Apache, a D-Bus
mock, the nginx front of ferry-server): wait until a started process listens on its port,
and stop one politely, then firmly."""

from __future__ import annotations

import signal
import socket
import subprocess
import time


def wait_for_port(
    proc: subprocess.Popen[bytes], port: int, timeout: float = 10, every: float = 0.02
) -> bool:
    """True once something accepts on 127.0.0.1:``port``; False when ``proc`` exited first
    (a config error, the port taken meanwhile) or at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            time.sleep(every)
    return False


def stop_process(
    proc: subprocess.Popen[bytes] | None, timeout: float = 10, sig: int = signal.SIGTERM
) -> None:
    """Send ``sig`` (a fast shutdown for nginx, squid and Apache alike), wait up to
    ``timeout`` seconds, then SIGKILL; always reaped."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
