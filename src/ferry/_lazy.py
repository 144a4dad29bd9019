"""PEP 562 lazy exports, shared by ``ferry`` and ``ferry.client``: a package names each
public attribute's module, and the module is imported when the attribute is first used.

Kept free of ``typing`` and ``importlib`` at import time: ``ferry --version`` imports this.
"""

from __future__ import annotations

TYPE_CHECKING = False  # as in ferry/__init__.py: typing costs start-up time
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def lazy_exports(
    package: str, where: dict[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``: ``where`` maps a public name to
    the module (relative to ``package``) that defines it; a loaded name is cached in the
    package's ``namespace`` so the next use is a plain attribute."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        from importlib import import_module

        value = getattr(import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted([*namespace, *where])

    return __getattr__, __dir__
