"""TensorRT deployment: build engines with the ConvCRF plugins (``build_engine``) and find the
plugin library (``find_plugin_library``). Needs the ``tensorrt`` extra (:func:`convcrf_deploy.install.install_hint`) for
building; importing this package does not import tensorrt or pycuda.

Example:
    >>> from convcrf_deploy.tensorrt import build_engine
    >>> engine = build_engine("model.onnx", "model.engine", min_shape="1x3x240x320",
    ...                       opt_shape="1x3x480x640", max_shape="1x3x720x1280")
"""
from ._modules import INSTALL_HINT, TensorRTUnavailableError, import_tensorrt
from .builder import DEFAULT_WORKSPACE_MB, build_engine
from .cache import (CACHE_ENV, default_cache_dir, engine_cache_key, metadata_path_for,
                    read_metadata, write_metadata)
from .network import (CRFImplementation, EngineBuildError, check_crf_implementation,
                      prepare_for_parser)
from .profiles import Profile, parse_shape
from .plugin import (PLUGIN_ENV, PluginLibraryError, find_plugin_library, installed_plugin_path,
                     load_plugin_library)

__all__ = ["build_engine", "prepare_for_parser", "check_crf_implementation", "CRFImplementation",
           "find_plugin_library", "load_plugin_library", "installed_plugin_path",
           "parse_shape", "Profile", "engine_cache_key", "default_cache_dir", "metadata_path_for",
           "read_metadata", "write_metadata", "import_tensorrt", "EngineBuildError",
           "PluginLibraryError", "TensorRTUnavailableError", "INSTALL_HINT", "PLUGIN_ENV",
           "CACHE_ENV", "DEFAULT_WORKSPACE_MB"]
