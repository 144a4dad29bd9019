"""The ``ferry`` command. ``main`` is its entry point (``ferry``, ``python -m ferry.cli``).

Start-up time matters (scripts call ``ferry`` in loops; SPEC §6), so this module imports
nothing: ``ferry --version`` answers from here, without click, so does ``ferry [--json] list``
(``fast``), and every other command loads
``main`` (click, the contract, the sync client's light modules). What a command needs
beyond that — the client, rich, asyncio, ``http.client`` — it imports in its body
(docs/architecture.md, "Where to add … a CLI command"; ``tests/unit/test_cli_imports.py``
checks it).
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # not typing's: see ferry/__init__.py
if TYPE_CHECKING:
    from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--version"]:
        from .._version import __version__

        # click's version_option prints exactly this line
        sys.stdout.write(f"ferry, version {__version__}\n")
        sys.stdout.flush()
        return
    if args and args[-1] in ("list", "--all-users"):
        from . import fast

        try:
            if fast.run(args):
                return
        except BrokenPipeError:  # as main.main: `ferry list | head`
            sys.stderr.close()
            sys.exit(1)
    from .main import main as click_main

    click_main(args)
