"""Warnings that point at the user's line, not at library internals (no torch)."""
from __future__ import annotations

import os
import sys
import warnings

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
#: code a call passes through on its way from the user's line to ours: this package, and
#: torch (``nn.Module.__call__`` sits between a user's ``crf(...)`` and ``forward``).
_INTERNAL = (_PACKAGE,)
_THIRD_PARTY = ("torch",)


def _internal(filename: str) -> bool:
    path = os.path.abspath(filename)
    if path.startswith(_INTERNAL):
        return True
    for name in _THIRD_PARTY:
        module = sys.modules.get(name)
        root = getattr(module, "__file__", None)
        if root and path.startswith(os.path.dirname(os.path.abspath(root)) + os.sep):
            return True
    return False


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first caller outside convcrf-deploy and torch, so
    that the warning names the user's file and line (and ``-W error`` / filters by module
    apply to it). Like ``warnings.warn(..., skip_file_prefixes=...)`` of Python 3.12."""
    frame = sys._getframe(1)     # our caller: warnings.warn's stacklevel=2
    level = 2
    while frame is not None and _internal(frame.f_code.co_filename):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
