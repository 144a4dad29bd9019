"""``python -m ferry.cli``: the ``ferry`` command."""

from . import main

main()
