"""Finding and loading the ConvCRF TensorRT plugin library (``libconvcrf_trt_plugin.so``).

Look-up order of :func:`find_plugin_library`: an explicit path, ``$CONVCRF_TRT_PLUGIN``, the
package's ``_lib`` folder (where ``pip install`` of the checkout puts it when built with
``CONVCRF_WITH_TENSORRT=ON`` and the TensorRT headers; the ``[tensorrt]`` extra does not build it). The library exports ``getCreators`` and is
loaded through ``trt.get_plugin_registry().load_library``; loading it twice in one process would
fail (the creators are already registered), so :func:`load_plugin_library` remembers what it
loaded.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from types import ModuleType

from .._native import LIB_DIR, find_library, library_filename

#: environment variable naming the plugin library.
PLUGIN_ENV = "CONVCRF_TRT_PLUGIN"
#: file stem of the dynamically loadable plugin library (plugins/tensorrt).
PLUGIN_STEM = "convcrf_trt_plugin"
#: plugin names registered by the library (docs/ops.md).
PLUGIN_NAMES = ("ConvCRFKernel", "ConvCRFMessagePassing")

_loaded: dict[str, object] = {}
_lock = threading.Lock()


class PluginLibraryError(RuntimeError):
    """The ConvCRF plugin library is missing or could not be loaded; the message says how to
    provide it."""


def installed_plugin_path() -> Path:
    """Where ``pip install`` puts the plugin library (it may not exist; an editable install
    puts it in site-packages, :func:`convcrf_deploy._native.library_dirs`)."""
    return find_library(PLUGIN_STEM) or LIB_DIR / library_filename(PLUGIN_STEM)


def how_to_provide() -> str:
    """The sentence every 'plugin missing' message ends with."""
    return (f"pass --plugin PATH (plugin_library=PATH) pointing at {library_filename(PLUGIN_STEM)}, "
            f"set {PLUGIN_ENV}=PATH, or build it into {installed_plugin_path()} from your "
            "checkout: CONVCRF_WITH_TENSORRT=ON TensorRT_INCLUDE_DIR=/path/to/TensorRT/include "
            "pip install . (the [tensorrt] extra alone does not build it; or build it by hand: "
            "cmake -S . -B build -DCONVCRF_WITH_TENSORRT=ON "
            "-DTensorRT_INCLUDE_DIR=/path/to/TensorRT/include && cmake --build build)")


def find_plugin_library(explicit: str | os.PathLike | None = None) -> Path:
    """The plugin library to load.

    Args:
        explicit: a path given by the user (``--plugin``); it must exist.

    Returns:
        An existing path: ``explicit``, else ``$CONVCRF_TRT_PLUGIN``, else the installed copy.

    Raises:
        PluginLibraryError: the given path does not exist, or no library was found.
    """
    for source, value in (("--plugin", explicit), (PLUGIN_ENV, os.environ.get(PLUGIN_ENV))):
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise PluginLibraryError(f"ConvCRF plugin library {str(path)!r} (from {source}) "
                                         f"does not exist; {how_to_provide()}")
            return path.resolve()
    installed = installed_plugin_path()
    if installed.is_file():
        return installed
    raise PluginLibraryError(f"the ConvCRF TensorRT plugin library was not found; {how_to_provide()}")


def load_plugin_library(trt: ModuleType, path: str | os.PathLike) -> object:
    """Register the plugins of ``path`` with TensorRT's plugin registry (once per process).

    Returns the registry's library handle. Raises :class:`PluginLibraryError` when TensorRT
    cannot load the file (wrong architecture, missing libcudart, not our library).
    """
    key = str(Path(path).resolve())
    with _lock:
        if key in _loaded:
            return _loaded[key]
        registry = trt.get_plugin_registry()
        try:
            handle = registry.load_library(key)
        except Exception as exc:  # TensorRT raises RuntimeError/TypeError depending on version
            raise PluginLibraryError(f"TensorRT could not load the plugin library {key!r}: {exc}. "
                                     "Check that it was built for this TensorRT major version and "
                                     "that libcudart is on the library path") from exc
        if handle is None:
            raise PluginLibraryError(f"TensorRT could not load the plugin library {key!r} (see the "
                                     "TensorRT log above); it must export getCreators")
        _loaded[key] = handle
        return handle


def is_plugin_not_found(message: str) -> bool:
    """Whether a parser error means our plugin was not registered."""
    lowered = message.lower()
    return "plugin not found" in lowered or ("getplugincreator" in lowered and "convcrf" in lowered)


def plugin_not_found_message(parser_errors: list[str], library: Path | None) -> str:
    """Turns TensorRT's 'Plugin not found' parser error into an actionable message."""
    loaded = (f"the library {str(library)!r} was loaded but did not register them (is it an older "
              "build, or a different plugin version?)") if library else "no plugin library was loaded"
    return (f"TensorRT's ONNX parser could not find the ConvCRF plugins ({', '.join(PLUGIN_NAMES)}): "
            f"{loaded}. To fix it, {how_to_provide()}.\nParser said: " + " | ".join(parser_errors))
