"""Lazy exports for the engine's packages: ``import gagavatar.engine`` must not import torch.

A package lists its public names and the submodule defining each one, then::

    from ._lazy import lazy_exports

    __all__, __getattr__, __dir__ = lazy_exports(globals(), {"render_gaussians": ".rasterize"})

The first access to a name imports its submodule (relative to the package) and caches the value
in the package's namespace, so later accesses are plain attribute lookups.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any, Callable


def lazy_exports(namespace: dict[str, Any], exports: dict[str, str]
                 ) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for the package whose ``globals()`` is ``namespace``.

    ``exports`` maps each public name to the module that defines it, relative to the package
    (``".rasterize"``, ``"..cameras"``) or absolute.
    """
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(import_module(exports[name], package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return sorted(exports), __getattr__, __dir__
