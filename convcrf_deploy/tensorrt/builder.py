"""`build_engine`: an exported ONNX model to a serialised TensorRT engine with our plugins.

Steps: load the plugin library into TensorRT's registry, parse the ONNX file, give every
network input an optimisation profile (``min``/``opt``/``max`` shapes of ``image``
``[N, 3, H, W]``), build, write ``<engine>`` and its metadata sidecar ``<engine>.json``
(``ModelMetadata.to_dict()``: engines carry no ONNX metadata_props, the runtime reads it there).

Engines are specific to the GPU model and TensorRT version, so when no ``engine_path`` is
given the engine goes to a cache (``$CONVCRF_ENGINE_CACHE`` or ``~/.cache/convcrf-deploy/
engines``) under a key made of the ONNX bytes' sha256, the GPU, the TensorRT version, the
profile and the build options; a second call with the same inputs returns the cached file.

The ConvCRF is always built from our plugin, never silently from standard ops (which TensorRT
would otherwise do: <= 10.6 always imports the model-local function bodies of a single-file
export, >= 10.15 does unless a parser flag or node attribute says otherwise, and every version
does when the plugin library is not loaded): the ONNX bytes handed to the parser have the
ConvCRF function bodies stripped (a missing plugin is then the parser's "Plugin not found",
reported with the library to load), ``kENABLE_PLUGIN_OVERRIDE`` is set where the enum exists,
and after parsing the network's plugin layers of our two creators are counted against the
ConvCRF nodes of the file (:func:`check_crf_implementation`). A mismatch, or a file whose CRF
is standard ONNX ops (the portable flavour), is an :class:`EngineBuildError` unless
``allow_standard_op_crf=True``.

Precision: TensorRT 11 networks are strongly typed, so the plugins run in fp16 only when the
ONNX model was exported with fp16 tensors (``convcrf-export --fp16``); there is no fp16 switch
here. On TensorRT 10 the network is created strongly typed for the same behaviour.

INT8: a graph with QuantizeLinear/DequantizeLinear nodes (``convcrf-export --int8``) is
TensorRT's *explicit quantisation* input: the layers between a DequantizeLinear and a
QuantizeLinear run in int8, the rest (our plugin included) in the graph's float types. In a
strongly typed network (TensorRT 10 as created here, TensorRT 11 always) the Q/DQ types decide
and no precision flag exists or is needed; a weakly typed network gets ``BuilderFlag.INT8``.
TensorRT takes only symmetric int8 quantisation (zero point 0), while our export quantises
activations as ONNX Runtime's CPU kernels prefer (uint8 with a zero point), so
:func:`.network.make_qdq_symmetric` rewrites each such scale before parsing: the same
calibrated range ``[(0 - z) s, (255 - z) s]`` symmetrically in int8 (scale
``s * max(z, 255 - z) / 127``, zero point 0), what symmetric calibration on the same frames
gives; where a uint8 range starting at 0 was a tensor's only clamp to >= 0 a ReLU is put back,
so the graph keeps its meaning.

The pieces live beside this module: :mod:`.profiles` (shapes and optimisation profiles),
:mod:`.cache` (the engine cache and the metadata sidecar), :mod:`.network` (what the parser
is given, the ConvCRF-implementation check, profiles on the network); the ONNX file itself is
read once by :class:`convcrf_deploy.exported_model.ExportedModel` (digest, metadata against
graph).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

from ..exported_model import ExportedModel
from ..files import write_bytes_atomic
from ._modules import import_tensorrt, tensorrt_major
from .cache import (CACHE_ENV, default_cache_dir, engine_cache_key, metadata_path_for,
                    read_metadata, sha256_file, write_metadata)
from .network import (IMAGE_INPUT, CRFImplementation, EngineBuildError, ParserInput,
                      _parser_errors, _set_profiles, check_crf_implementation,
                      plugin_layer_counts, prepare_for_parser)
from .plugin import (PluginLibraryError, find_plugin_library, is_plugin_not_found,
                     load_plugin_library, plugin_not_found_message)
from .profiles import Profile, Shape, _fmt, parse_shape

log = logging.getLogger(__name__)

#: default TensorRT workspace limit in MiB.
DEFAULT_WORKSPACE_MB = 1024

# The names that lived here before the split, for callers that import them from this module.
__all__ = ["build_engine", "gpu_identity", "DEFAULT_WORKSPACE_MB", "CACHE_ENV", "IMAGE_INPUT",
           "CRFImplementation", "EngineBuildError", "ParserInput", "Profile", "Shape",
           "check_crf_implementation", "default_cache_dir", "engine_cache_key",
           "metadata_path_for", "parse_shape", "plugin_layer_counts", "prepare_for_parser",
           "read_metadata", "sha256_file", "write_metadata"]


def gpu_identity() -> str:
    """``"<GPU name> sm_<major><minor>"`` of device 0 (part of the cache key)."""
    from ._modules import import_pycuda_driver

    driver = import_pycuda_driver()
    device = driver.Device(0)
    major, minor = device.compute_capability()
    return f"{device.name()} sm_{major}{minor}"

def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike | None = None,
                 plugin_library: str | os.PathLike | None = None, min_shape=None, opt_shape=None,
                 max_shape=None, timing_cache: str | os.PathLike | None = None,
                 workspace_mb: int = DEFAULT_WORKSPACE_MB, version_compatible: bool = False,
                 force: bool = False, allow_standard_op_crf: bool = False,
                 report: Callable[[str], None] | None = None) -> Path:
    """Build (or fetch from the cache) a TensorRT engine for an exported ONNX model.

    Args:
        onnx_path: a ``.onnx`` file from ``convcrf-export`` (``plugin`` or ``single-file``
            flavour: the ConvCRF function bodies of the latter are stripped before parsing,
            so every TensorRT version uses the plugin).
        engine_path: where to write the engine; ``None`` uses the engine cache.
        plugin_library: ``libconvcrf_trt_plugin.so``; found by :func:`find_plugin_library`
            when omitted.
        min_shape, opt_shape, max_shape: ``"NxCxHxW"`` of ``image``; see :meth:`Profile.resolve`.
        timing_cache: file to read and update with TensorRT's timing cache (faster rebuilds).
        workspace_mb: TensorRT workspace memory-pool limit in MiB.
        version_compatible: build a version-compatible engine with the plugin library embedded
            (``BuilderFlag.VERSION_COMPATIBLE`` + ``plugins_to_serialize``).
        force: rebuild even when the cache holds the engine.
        allow_standard_op_crf: build even when TensorRT would compute (part of) the ConvCRF
            with standard ops instead of the plugin (e.g. a portable-flavour file).
        report: called with one line saying which ConvCRF implementation the engine has
            (default: logged at INFO).

    Returns:
        The engine path; its metadata sidecar is ``metadata_path_for(path)``.

    Raises:
        TensorRTUnavailableError: ``tensorrt``/``pycuda`` are not installed.
        PluginLibraryError: the plugin library is missing or unloadable.
        EngineBuildError: parsing or building failed (message includes TensorRT's errors),
            or the network would not use the ConvCRF plugin (see ``allow_standard_op_crf``).
        ValueError: bad shapes or workspace.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model {str(onnx_path)!r} does not exist")
    if workspace_mb < 1:
        raise ValueError(f"workspace_mb must be >= 1, got {workspace_mb}")
    trt = import_tensorrt()  # first: without TensorRT nothing else matters
    report = report or log.info
    # One read of the file (digest, metadata against graph) for the metadata and the parser.
    exported = ExportedModel.open(onnx_path)
    metadata = exported.metadata
    # The nominal size padded to the unary's input constraints: what the runtime feeds.
    profile = Profile.resolve(min_shape, opt_shape, max_shape,
                              metadata.padded_size(*metadata.input_size) if metadata else None)
    library = find_plugin_library(plugin_library)
    load_plugin_library(trt, library)

    if engine_path is None:
        key = engine_cache_key(sha256_file(onnx_path), gpu_identity(), str(trt.__version__), profile,
                               version_compatible, sha256_file(library), allow_standard_op_crf)
        engine_path = default_cache_dir() / f"{onnx_path.stem}-{key}.engine"
        if engine_path.is_file() and not force:
            log.info("engine cache hit: %s", engine_path)
            report("ConvCRF implementation: as checked when the cached engine was built "
                   + ("(standard ops were allowed)" if allow_standard_op_crf
                      else "(the plugin, or no ConvCRF)"))
            if metadata is not None and not metadata_path_for(engine_path).is_file():
                write_metadata(engine_path, metadata)
            return engine_path
    engine_path = Path(engine_path)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None and tensorrt_major(trt) == 10:
        flags |= 1 << int(strongly_typed)  # TensorRT 11 is always strongly typed
    typed = tensorrt_major(trt) >= 11 or bool(flags)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # TensorRT >= 10.15 imports a model-local function instead of a registered plugin unless
    # told otherwise; the functions are stripped anyway, this covers foreign files too.
    override = getattr(getattr(trt, "OnnxParserFlag", None), "ENABLE_PLUGIN_OVERRIDE", None)
    if override is not None:
        parser.set_flag(override)
    parsed = prepare_for_parser(exported)
    if not parser.parse(parsed.data, str(onnx_path)):
        errors = _parser_errors(parser)
        if any(is_plugin_not_found(e) for e in errors):
            raise PluginLibraryError(plugin_not_found_message(errors, library))
        raise EngineBuildError(f"TensorRT could not parse {onnx_path.name}:\n  " + "\n  ".join(errors))
    implementation = check_crf_implementation(parsed, plugin_layer_counts(trt, network),
                                              allow_standard_op_crf)
    report(implementation.describe())
    if parsed.qdq is not None:
        report(parsed.qdq.describe(parsed.crf_precision if parsed.crf_nodes else None))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    _set_profiles(trt, builder, network, config, profile)
    int8_flag = getattr(getattr(trt, "BuilderFlag", None), "INT8", None)
    if parsed.qdq is not None and not typed and int8_flag is not None:
        # A weakly typed network runs Q/DQ layers in int8 only with the INT8 flag; a strongly
        # typed one takes the types from the Q/DQ nodes and refuses precision flags.
        config.set_flag(int8_flag)
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        config.plugins_to_serialize = [str(library)]
    cache = None
    if timing_cache is not None:
        timing_cache = Path(timing_cache)
        blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)

    from ..progress import Progress
    with Progress(f"TensorRT: building the engine for {onnx_path.name}"):   # minutes
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build an engine for {onnx_path.name} with "
                               f"profile min={_fmt(profile.min)} opt={_fmt(profile.opt)} "
                               f"max={_fmt(profile.max)}; see the TensorRT log above (a smaller "
                               "--max shape or a larger --workspace often helps)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(engine_path, bytes(serialized))
    if metadata is not None:
        write_metadata(engine_path, metadata)
    if cache is not None:
        write_bytes_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
    log.info("wrote %s", engine_path)
    return engine_path
