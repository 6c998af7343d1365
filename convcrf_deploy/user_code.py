"""Running the user's own model code, only when the user asks for it.

A checkpoint names its unary architecture (``{"name": "my_net", "kwargs": {...}}``) and holds
only tensors; the class that builds ``my_net`` is code, and loading a file never runs code
from it. The code comes from one of two places the user chose:

* **a module the user names**: :func:`import_user_code` (the commands' ``--import``) imports
  a dotted module name from ``sys.path`` or a ``.py`` file, so that its
  :func:`convcrf_deploy.model.register_unary` calls take effect;
* **an installed package** declaring the architecture as an entry point in the group
  :data:`ENTRY_POINT_GROUP`, found by :func:`load_entry_point` only when a checkpoint names an
  architecture that is not registered yet::

      # the package's pyproject.toml
      [project.entry-points."convcrf_deploy.unaries"]
      my_net = "my_package.nets:MyNet"      # factory(**kwargs) -> nn.Module

  The entry point may also name a module (``"my_package.nets"``) whose import registers it.

This module imports nothing heavy (no torch), so the command-line harness can use it.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Iterable

#: entry-point group in which installed packages declare unary architectures.
ENTRY_POINT_GROUP = "convcrf_deploy.unaries"


class UserCodeError(ValueError):
    """The user's code could not be imported; the message is one line naming the module and
    its exception."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_path(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or os.sep in spec


def _module_name_for(path: Path) -> str:
    """``convcrf_user_<stem>``, with a hash of the path when another file took that name."""
    stem = "".join(c if c.isalnum() or c == "_" else "_" for c in path.stem)
    name = f"convcrf_user_{stem}"
    existing = sys.modules.get(name)
    if existing is not None and Path(getattr(existing, "__file__", "") or "").resolve() != path:
        name += "_" + hashlib.sha256(str(path).encode()).hexdigest()[:8]
    return name


def _import_file(spec: str) -> types.ModuleType:
    path = Path(spec).expanduser().resolve()
    if not path.is_file():
        raise UserCodeError(f"cannot import {spec}: no such file (give a path to a .py file "
                            "or a dotted module name importable from here)")
    name = _module_name_for(path)
    loaded = sys.modules.get(name)
    if loaded is not None:        # imported before in this process: do not run it twice
        return loaded
    # As `python path/to/file.py` would: its folder first on sys.path, so that it can import
    # the modules beside it.
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise UserCodeError(f"cannot import {spec}: not a Python source file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def import_user_code(specs: Iterable[str]) -> list[types.ModuleType]:
    """Import each of ``specs`` (the ``--import`` values), in order, and return the modules.

    Args:
        specs: dotted module names importable from ``sys.path`` (``my_package.nets``) or paths
            to ``.py`` files (``path/to/nets.py``; its folder is put first on ``sys.path``, as
            ``python path/to/nets.py`` would). A file is imported once per process, under the
            module name ``convcrf_user_<stem>``.

    This runs the modules' code: it is how a user chooses to run their own code, never
    something a model file can ask for.

    Raises:
        UserCodeError (a ``ValueError``): a module is missing or raised while being imported
            (also ``SystemExit``, e.g. a script without an ``if __name__ == "__main__"``
            guard); one line naming the module and its exception.
    """
    modules = []
    for spec in specs:
        spec = str(spec).strip()
        if not spec:
            raise UserCodeError("--import needs a module name or a path to a .py file")
        try:
            modules.append(_import_file(spec) if _is_path(spec) else importlib.import_module(spec))
        except UserCodeError:
            raise
        except ModuleNotFoundError as exc:
            if exc.name and (spec == exc.name or spec.startswith(exc.name + ".")):
                raise UserCodeError(f"cannot import {spec}: no module named {exc.name!r} on "
                                    "sys.path (give a path to a .py file, or install or add the "
                                    "package to PYTHONPATH)") from None
            raise UserCodeError(f"importing {spec} failed: {_one_line(exc)}") from None
        except KeyboardInterrupt:
            raise
        except SystemExit as exc:
            raise UserCodeError(f"importing {spec} failed: it exited (SystemExit: {exc.code}) "
                                "while being imported; put its script part under "
                                "if __name__ == '__main__':") from None
        except BaseException as exc:
            raise UserCodeError(f"importing {spec} failed: {_one_line(exc)}") from None
    return modules


def _entry_points() -> list:
    found = importlib.metadata.entry_points()
    if hasattr(found, "select"):
        return list(found.select(group=ENTRY_POINT_GROUP))
    return list(found.get(ENTRY_POINT_GROUP, []))  # Python 3.9


def declared_architectures() -> list[str]:
    """Architecture names that installed packages declare in :data:`ENTRY_POINT_GROUP`."""
    return sorted({entry.name for entry in _entry_points()})


def load_entry_point(name: str) -> bool:
    """Load the entry point that declares architecture ``name`` and register it; ``False``
    when no installed package declares it.

    The entry point's object is registered as ``name``'s factory with
    :func:`convcrf_deploy.model.register_unary`, unless importing it registered ``name``
    already (or it is a module, whose import is expected to register it).

    Raises:
        UserCodeError: the entry point cannot be loaded (one line naming the package, the
            entry point and the exception), or it names a module that did not register
            ``name``.
    """
    from .model.unaries import UNARY_ARCHITECTURES, register_unary

    for entry in _entry_points():
        if entry.name != name:
            continue
        dist = getattr(getattr(entry, "dist", None), "name", None)
        where = f"entry point {entry.name} = {entry.value}" + (f" of {dist}" if dist else "") \
            + f" (group {ENTRY_POINT_GROUP})"
        try:
            target = entry.load()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            raise UserCodeError(f"loading the {where} failed: {_one_line(exc)}") from None
        if name in UNARY_ARCHITECTURES:
            return True
        if isinstance(target, types.ModuleType):
            raise UserCodeError(f"the {where} names a module that did not register {name!r}: "
                                "name the factory instead (module:Class) or call "
                                f"register_unary({name!r}, ...) in the module")
        try:
            register_unary(name, target)
        except ValueError as exc:
            raise UserCodeError(f"the {where}: {exc}") from None
        return True
    return False


def unknown_architecture_message(name: str, registered: Iterable[str]) -> str:
    """The one-line error for a checkpoint that names an architecture nobody registered."""
    declared = declared_architectures()
    return (f"unknown unary architecture {name!r} (registered: {', '.join(sorted(registered))}"
            f"; declared by installed packages under the entry-point group {ENTRY_POINT_GROUP}: "
            f"{', '.join(declared) or 'none'}): load the code that registers it, on the "
            "command line with --import MODULE_OR_FILE.py (in Python: import it, or call "
            f"convcrf_deploy.model.register_unary({name!r}, factory)), or declare it as an "
            f"entry point in the group {ENTRY_POINT_GROUP} of an installed package")
