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
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable, Sequence

from ..files import check_onnx_digest, write_bytes_atomic, write_text_atomic
from ..metadata import ModelMetadata
from ._modules import import_tensorrt, tensorrt_major
from .plugin import (PLUGIN_NAMES, PluginLibraryError, find_plugin_library,
                     is_plugin_not_found, load_plugin_library, plugin_not_found_message)

log = logging.getLogger(__name__)

Shape = tuple[int, int, int, int]

#: name of the image input of exported models (convcrf_deploy.export).
IMAGE_INPUT = "image"
#: environment variable overriding the engine cache folder.
CACHE_ENV = "CONVCRF_ENGINE_CACHE"
#: default TensorRT workspace limit in MiB.
DEFAULT_WORKSPACE_MB = 1024

_SHAPE_PATTERN = re.compile(r"^\s*(\d+)\s*[xX*,]\s*(\d+)\s*[xX*,]\s*(\d+)\s*[xX*,]\s*(\d+)\s*$")


class EngineBuildError(RuntimeError):
    """Parsing or building failed; the message carries TensorRT's errors and the fix."""


def parse_shape(text: str | Sequence[int]) -> Shape:
    """``"1x3x480x640"`` (or ``"1,3,480,640"``, or a 4-sequence) -> ``(1, 3, 480, 640)``.

    Raises ``ValueError`` unless there are four positive integers with 3 channels.
    """
    if isinstance(text, str):
        match = _SHAPE_PATTERN.match(text)
        if not match:
            raise ValueError(f"shape {text!r} must be NxCxHxW with four positive integers, "
                             "e.g. 1x3x480x640")
        dims = tuple(int(v) for v in match.groups())
    else:
        dims = tuple(int(v) for v in text)
        if len(dims) != 4:
            raise ValueError(f"shape {tuple(text)!r} must have four dimensions N, C, H, W")
    if min(dims) < 1:
        raise ValueError(f"shape {'x'.join(map(str, dims))}: every dimension must be >= 1")
    if dims[1] != 3:
        raise ValueError(f"shape {'x'.join(map(str, dims))}: the image input has 3 (RGB) channels, "
                         f"got C={dims[1]}")
    return dims  # type: ignore[return-value]


@dataclass(frozen=True)
class Profile:
    """Optimisation profile of the ``image`` input: ``min <= opt <= max`` per dimension."""

    min: Shape
    opt: Shape
    max: Shape

    def __post_init__(self) -> None:
        for lo, mid, hi in zip(self.min, self.opt, self.max):
            if not lo <= mid <= hi:
                raise ValueError(f"profile needs min <= opt <= max in every dimension, got "
                                 f"min={_fmt(self.min)} opt={_fmt(self.opt)} max={_fmt(self.max)}")

    @classmethod
    def resolve(cls, min_shape=None, opt_shape=None, max_shape=None,
                input_size: Sequence[int] | None = None) -> "Profile":
        """Fill in missing shapes: ``opt`` defaults to ``1x3xHxW`` of the model's nominal
        ``input_size`` (else the given min/max), missing ``min``/``max`` default to ``opt``
        (a static engine is the fastest)."""
        given = {k: parse_shape(v) for k, v in
                 (("min", min_shape), ("opt", opt_shape), ("max", max_shape)) if v is not None}
        opt = given.get("opt")
        if opt is None and input_size is not None:
            opt = (1, 3, int(input_size[0]), int(input_size[1]))
            lo, hi = given.get("min"), given.get("max")
            if lo is not None or hi is not None:
                # Clamp the nominal size into the given range.
                opt = tuple(max(lo[i] if lo else 0, min(hi[i] if hi else 1 << 30, opt[i]))
                            for i in range(4))
        if opt is None:
            opt = given.get("min") or given.get("max")
        if opt is None:
            raise ValueError("no input shape: pass --opt NxCxHxW (and --min/--max for dynamic "
                             "shapes), or use an ONNX file exported by convcrf-export")
        return cls(given.get("min", opt), opt, given.get("max", opt))

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def _fmt(shape: Sequence[int]) -> str:
    return "x".join(str(v) for v in shape)


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def engine_cache_key(model_sha256: str, gpu: str, trt_version: str, profile: Profile,
                     version_compatible: bool = False, plugin_sha256: str = "",
                     allow_standard_op_crf: bool = False) -> str:
    """Hex key identifying an engine: same model bytes, GPU, TensorRT, profile and options
    give the same key; any change gives another. ``plugin_sha256`` covers rebuilt plugins;
    ``allow_standard_op_crf`` keeps engines built without the plugin check apart, so a cache
    hit without it is an engine whose plugin use was checked."""
    fields = {"model": model_sha256, "gpu": gpu, "tensorrt": trt_version,
              "profile": profile.to_dict(), "version_compatible": bool(version_compatible),
              "plugin": plugin_sha256}
    if allow_standard_op_crf:
        fields["allow_standard_op_crf"] = True
    record = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(record.encode()).hexdigest()[:24]


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "convcrf-deploy" / "engines"


def metadata_path_for(engine_path: str | os.PathLike) -> Path:
    """The sidecar JSON next to an engine: ``model.engine`` -> ``model.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def write_metadata(engine_path: str | os.PathLike, metadata: ModelMetadata) -> Path:
    path = metadata_path_for(engine_path)
    write_text_atomic(path, json.dumps(metadata.to_dict(), indent=2) + "\n")
    return path


def read_metadata(engine_path: str | os.PathLike) -> ModelMetadata | None:
    """The sidecar metadata of an engine, or ``None`` when there is none.

    Raises ``ValueError`` naming the file when it exists but is not valid.
    """
    path = metadata_path_for(engine_path)
    if not path.is_file():
        return None
    try:
        return ModelMetadata.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise ValueError(f"engine metadata {str(path)!r} is invalid ({exc}); rebuild the engine "
                         "with convcrf-build or delete the file") from exc


def onnx_metadata(onnx_path: str | os.PathLike) -> ModelMetadata | None:
    """``ModelMetadata`` from an exported file's metadata_props (``None`` for foreign files)."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ValueError(f"{str(onnx_path)!r} is not a valid ONNX file ({type(exc).__name__}: {exc}); "
                         "export the model with convcrf-export") from exc
    check_onnx_digest(model, onnx_path)     # a damaged export is not built (DamagedFileError)
    props = {p.key: p.value for p in model.metadata_props}
    try:
        return ModelMetadata.from_onnx_props(props)
    except ValueError:
        return None


def gpu_identity() -> str:
    """``"<GPU name> sm_<major><minor>"`` of device 0 (part of the cache key)."""
    from ._modules import import_pycuda_driver

    driver = import_pycuda_driver()
    device = driver.Device(0)
    major, minor = device.compute_capability()
    return f"{device.name()} sm_{major}{minor}"


# ---- which ConvCRF implementation TensorRT builds ---------------------------------------------

#: metadata_props key of exported models that run a CRF (convcrf_deploy.metadata.ONNX_KEYS).
_CRF_CONFIG_KEY = "convcrf.crf_config"


@dataclass
class ParserInput:
    """The ONNX model as handed to TensorRT's parser, and what it must produce."""

    data: bytes                     # serialised model without our ConvCRF function bodies
    crf_nodes: dict[str, int]       # ConvCRF nodes per op type in the file
    stripped_functions: int         # model-local ConvCRF functions removed
    crf_in_model: bool              # the metadata says the graph runs a CRF


def prepare_for_parser(onnx_path: str | os.PathLike) -> ParserInput:
    """Read an ONNX file and strip the model-local functions named like our plugins.

    Without the bodies TensorRT cannot fall back to the standard-op CRF: the nodes import as
    our plugin or the parser fails with "Plugin not found". External data stays where it is
    (the parser is given the file's path to find it).

    Raises:
        ValueError: the file is not a valid ONNX model.
    """
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ValueError(f"{str(onnx_path)!r} is not a valid ONNX file ({type(exc).__name__}: "
                         f"{exc}); export the model with convcrf-export") from exc
    crf_nodes: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in PLUGIN_NAMES:    # TensorRT dispatches on op_type alone
            crf_nodes[node.op_type] = crf_nodes.get(node.op_type, 0) + 1
    kept = [f for f in model.functions if f.name not in PLUGIN_NAMES]
    stripped = len(model.functions) - len(kept)
    if stripped:
        del model.functions[:]
        model.functions.extend(kept)
    props = {p.key: p.value for p in model.metadata_props}
    crf_in_model = False
    if _CRF_CONFIG_KEY in props:
        try:
            crf_in_model = int(json.loads(props[_CRF_CONFIG_KEY]).get("iterations", 1)) > 0
        except (ValueError, TypeError, AttributeError):
            crf_in_model = True
    return ParserInput(model.SerializeToString(), crf_nodes, stripped, crf_in_model)


def plugin_layer_counts(trt: ModuleType, network) -> dict[str, int]:
    """Plugin layers of the parsed network per plugin name (``"?"``: a plugin layer whose
    name TensorRT's Python API did not give)."""
    counts: dict[str, int] = {}
    plugin_types = {getattr(trt.LayerType, name) for name in ("PLUGIN_V3", "PLUGIN_V2", "PLUGIN")
                    if hasattr(trt.LayerType, name)}
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type not in plugin_types:
            continue
        name = _plugin_name(trt, layer) or "?"
        counts[name] = counts.get(name, 0) + 1
    return counts


def _plugin_name(trt: ModuleType, layer) -> str | None:
    try:
        if layer.type == getattr(trt.LayerType, "PLUGIN_V3", None):
            # network.get_layer returns the ILayer base; the subclass gives the plugin.
            layer.__class__ = trt.IPluginV3Layer
            core = layer.get_plugin().get_capability_interface(trt.PluginCapabilityType.CORE)
            return str(core.plugin_name)
        layer.__class__ = trt.IPluginV2Layer
        return str(layer.plugin.plugin_type)
    except Exception:   # noqa: BLE001 - an API difference between releases: name unknown
        return None


@dataclass
class CRFImplementation:
    """Which ConvCRF implementation a parsed network contains."""

    kind: str                       # "plugin", "standard-op" or "none"
    crf_nodes: dict[str, int]
    plugin_layers: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        if self.kind == "plugin":
            layers = " + ".join(f"{n} {name}" for name, n in sorted(self.plugin_layers.items())
                                if name in PLUGIN_NAMES)
            return f"ConvCRF implementation: TensorRT plugin ({layers} plugin layers)"
        if self.kind == "standard-op":
            return ("ConvCRF implementation: standard ONNX ops, NOT the plugin "
                    "(allowed by --allow-standard-op-crf)")
        return "ConvCRF implementation: none (this model has no ConvCRF)"


def check_crf_implementation(parsed: ParserInput, layers: dict[str, int],
                             allow_standard_op_crf: bool = False) -> CRFImplementation:
    """Compare the network's plugin layers of our creators with the ConvCRF nodes of the file.

    Raises:
        EngineBuildError: TensorRT would build (part of) the CRF from standard ops, or the
            plugin layers could not be identified; not raised with ``allow_standard_op_crf``.
    """
    ours = {name: n for name, n in layers.items() if name in PLUGIN_NAMES}
    expected = parsed.crf_nodes
    if not expected and not parsed.crf_in_model:
        return CRFImplementation("none", expected, ours)
    if expected and ours == expected:
        return CRFImplementation("plugin", expected, ours)
    if allow_standard_op_crf:
        return CRFImplementation("standard-op", expected, ours)
    fix = ("; pass --allow-standard-op-crf (allow_standard_op_crf=True) to build it anyway")
    if not expected:
        raise EngineBuildError(
            "this ONNX file's ConvCRF is made of standard ONNX ops (the portable flavour), so "
            "TensorRT would build the standard-op CRF instead of the ConvCRF plugin; export it "
            "with convcrf-export --flavor single-file (or plugin)" + fix)
    found = ", ".join(f"{n} {name}" for name, n in sorted(ours.items())) or "none"
    wanted = ", ".join(f"{n} {name}" for name, n in sorted(expected.items()))
    unknown = layers.get("?", 0)
    why = (f" ({unknown} plugin layer(s) could not be identified through this TensorRT's "
           "Python API)" if unknown else "")
    raise EngineBuildError(
        f"TensorRT would build the ConvCRF with standard ops: the file has {wanted} node(s) but "
        f"the parsed network has {found} ConvCRF plugin layer(s){why}; make sure the plugin "
        "library registers ConvCRFKernel/ConvCRFMessagePassing version 1 in namespace \"\"" + fix)


def _parser_errors(parser) -> list[str]:
    errors = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        desc = error.desc() if hasattr(error, "desc") else str(error)
        node = error.node() if hasattr(error, "node") else -1
        errors.append(f"{desc} (node {node})" if node is not None and node >= 0 else str(desc))
    return errors


def _set_profiles(trt: ModuleType, builder, network, config, profile: Profile) -> None:
    """One optimisation profile: ``image`` gets ``profile``; other dynamic inputs (e.g. the
    ``logits`` of a ``part="crf"`` export) take N, H, W from it and keep their static C."""
    opt_profile = builder.create_optimization_profile()
    names = []
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        names.append(tensor.name)
        dims = tuple(tensor.shape)
        if tensor.name == IMAGE_INPUT:
            shapes = (profile.min, profile.opt, profile.max)
        else:
            if len(dims) != 4 or dims[1] < 0:
                raise EngineBuildError(
                    f"input {tensor.name!r} has shape {dims}; only NCHW inputs with a static "
                    "channel count besides 'image' can be profiled automatically")
            shapes = tuple((s[0], dims[1], s[2], s[3]) for s in (profile.min, profile.opt, profile.max))
        opt_profile.set_shape(tensor.name, *shapes)
    if IMAGE_INPUT not in names:
        raise EngineBuildError(f"the network has inputs {names} but no {IMAGE_INPUT!r}: export the "
                               "model with convcrf-export (part 'full' or 'crf')")
    config.add_optimization_profile(opt_profile)


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
    metadata = onnx_metadata(onnx_path)
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
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # TensorRT >= 10.15 imports a model-local function instead of a registered plugin unless
    # told otherwise; the functions are stripped anyway, this covers foreign files too.
    override = getattr(getattr(trt, "OnnxParserFlag", None), "ENABLE_PLUGIN_OVERRIDE", None)
    if override is not None:
        parser.set_flag(override)
    parsed = prepare_for_parser(onnx_path)
    if not parser.parse(parsed.data, str(onnx_path)):
        errors = _parser_errors(parser)
        if any(is_plugin_not_found(e) for e in errors):
            raise PluginLibraryError(plugin_not_found_message(errors, library))
        raise EngineBuildError(f"TensorRT could not parse {onnx_path.name}:\n  " + "\n  ".join(errors))
    implementation = check_crf_implementation(parsed, plugin_layer_counts(trt, network),
                                              allow_standard_op_crf)
    report(implementation.describe())

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    _set_profiles(trt, builder, network, config, profile)
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        config.plugins_to_serialize = [str(library)]
    cache = None
    if timing_cache is not None:
        timing_cache = Path(timing_cache)
        blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)

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
