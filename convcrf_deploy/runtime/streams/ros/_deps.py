"""Lazy imports of the optional libraries, with a one-line install hint when missing."""
from __future__ import annotations

import importlib
from types import ModuleType

from ....install import MissingDependencyError, install_hint


def require(module: str, package: str, extra: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the pip command."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{package} is not installed ({exc}): {install_hint(extra)}") from None
