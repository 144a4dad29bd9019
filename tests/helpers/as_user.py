"""Run the ``ferry`` command as another uid, in a forked child of the (root) test process.

The interpreter may live where other uids cannot reach it (e.g. under /root), so instead of
exec'ing a new Python as that uid, the child drops privileges and runs the already-imported
CLI. Everything the CLI needs is imported before the fork.
"""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass

import ferry.cli.main as cli_main
import ferry.cli.render  # noqa: F401
import ferry.cli.tokens  # noqa: F401
import ferry.cli.transfer  # noqa: F401


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def run_cli_as(uid: int, gid: int, args: list[str], groups: tuple[int, ...] = ()) -> Result:
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 70
        try:
            os.close(out_r)
            os.close(err_r)
            os.setgroups(list(groups))
            os.setgid(gid)
            os.setuid(uid)
            sys.stdout = io.TextIOWrapper(os.fdopen(out_w, "wb"), write_through=True)
            sys.stderr = io.TextIOWrapper(os.fdopen(err_w, "wb"), write_through=True)
            try:
                cli_main.main(args)
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException as e:  # noqa: BLE001
            os.write(2, repr(e).encode())
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    os.close(out_w)
    os.close(err_w)
    with os.fdopen(out_r, "rb") as o, os.fdopen(err_r, "rb") as e:
        stdout = o.read().decode()
        stderr = e.read().decode()
    _, status = os.waitpid(pid, 0)
    return Result(os.waitstatus_to_exitcode(status), stdout, stderr)
