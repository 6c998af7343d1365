"""The TensorRT Python side (engine builder, convcrf-build, TensorRTBackend) against fake
``tensorrt`` and ``pycuda`` modules: no GPU or TensorRT runs here, so these tests pin the
logic (shape parsing, profiles, cache keys, plugin look-up and its error messages, buffer
reallocation, the copy/execute sequence and dtype handling). The fakes follow the TensorRT 10/11
Python API the code uses; real-GPU validation is scripts/validate_tensorrt.py."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from convcrf_deploy.install import install_hint
from convcrf_deploy.metadata import ModelMetadata
from convcrf_deploy.tensorrt import builder as builder_module
from convcrf_deploy.tensorrt import plugin as plugin_module
from convcrf_deploy.tensorrt import (EngineBuildError, PluginLibraryError, Profile,
                                     TensorRTUnavailableError, build_engine, engine_cache_key,
                                     find_plugin_library, metadata_path_for, parse_shape,
                                     read_metadata)

ENGINE_BYTES = b"FAKE-ENGINE"
NUM_CLASSES = 4


# ---- fake pycuda.driver ------------------------------------------------------------------

class FakeAllocation:
    def __init__(self, memory: dict, nbytes: int):
        self.memory = memory
        self.address = 0x1000 + 0x100000 * (len(memory) + 1) + len(memory.get("freed", []))
        while self.address in memory:
            self.address += 8
        memory[self.address] = np.zeros(nbytes, np.uint8)

    def __int__(self):
        return self.address

    def free(self):
        self.memory.pop(self.address)
        self.memory.setdefault("freed", []).append(self.address)


def make_fake_driver():
    driver = types.ModuleType("pycuda.driver")
    driver.memory = {}
    driver.contexts = []
    driver.copies = []

    class Context:
        def push(self):
            driver.contexts.append(self)

        def pop(self):
            driver.contexts.remove(self)

    class Device:
        def __init__(self, index):
            self.index = index

        def name(self):
            return "Fake GPU"

        def compute_capability(self):
            return (8, 6)

        def retain_primary_context(self):
            return Context()

    class Stream:
        handle = 1234

        def synchronize(self):
            pass

    def memcpy_htod_async(dst, host, stream):
        flat = np.ascontiguousarray(host).reshape(-1).view(np.uint8)
        driver.memory[int(dst)][:flat.size] = flat
        driver.copies.append(("htod", int(dst), flat.size))

    def memcpy_dtoh_async(host, src, stream):
        flat = host.reshape(-1).view(np.uint8)
        flat[:] = driver.memory[int(src)][:flat.size]
        driver.copies.append(("dtoh", int(src), flat.size))

    driver.init = lambda: None
    driver.Device = Device
    driver.Stream = Stream
    driver.pagelocked_empty = lambda n, dtype: np.zeros(n, dtype)
    driver.mem_alloc = lambda n: FakeAllocation(driver.memory, n)
    driver.memcpy_htod_async = memcpy_htod_async
    driver.memcpy_dtoh_async = memcpy_dtoh_async
    return driver


# ---- fake tensorrt ------------------------------------------------------------------------

def fake_model_function(image: np.ndarray):
    """What the fake engine computes: per-class scores from the image, softmax, argmax."""
    n, _, h, w = image.shape
    scores = np.stack([image[:, c % 3] * (c + 1) / 255.0 for c in range(NUM_CLASSES)], axis=1)
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    prob = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return prob, prob.argmax(axis=1).astype(np.int64), scores[:, :2].argmax(axis=1).astype(np.int32)


def make_fake_trt(driver, version="10.9.0.34", with_unary_labels=True):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.loaded_libraries = []
    trt.parse_errors = []
    trt.build_fails = False
    trt.built = []

    class Logger:
        WARNING = 2

        def __init__(self, severity=None):
            self.severity = severity

    class TensorIOMode:
        INPUT, OUTPUT = "INPUT", "OUTPUT"

    class DataType:
        FLOAT, HALF, INT32, INT64 = "FLOAT", "HALF", "INT32", "INT64"

    trt.Logger, trt.TensorIOMode, trt.DataType = Logger, TensorIOMode, DataType
    # The ONNX parser as onnx-tensorrt behaves (issue 10): "function" = TensorRT <= 10.6 (a
    # model-local function body always wins over a registered plugin), "plugin" = 10.7-10.14.
    # A node with neither body nor registered plugin is "Plugin not found".
    trt.function_preference = "function"
    trt.registered_plugins = {"ConvCRFKernel", "ConvCRFMessagePassing"}
    trt.unnamed_plugin_layers = False     # a TensorRT whose Python API hides plugin names
    trt.parsed_models = []
    trt.parser_flags = []
    trt.LayerType = types.SimpleNamespace(PLUGIN_V3="PLUGIN_V3", ELEMENTWISE="ELEMENTWISE")
    trt.PluginCapabilityType = types.SimpleNamespace(CORE="CORE")
    trt.nptype = lambda t: {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32,
                            "INT64": np.int64}[t]
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.BuilderFlag = types.SimpleNamespace(VERSION_COMPATIBLE="VERSION_COMPATIBLE")
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)

    class Registry:
        def load_library(self, path):
            trt.loaded_libraries.append(path)
            return object()

    registry = Registry()
    trt.get_plugin_registry = lambda: registry

    # -- engine and execution context
    io = {"image": ("INPUT", "FLOAT", (-1, 3, -1, -1)),
          "probabilities": ("OUTPUT", "FLOAT", (-1, NUM_CLASSES, -1, -1)),
          "labels": ("OUTPUT", "INT64", (-1, -1, -1))}
    if with_unary_labels:
        io["unary_labels"] = ("OUTPUT", "INT32", (-1, -1, -1))
    profile = ((1, 3, 8, 8), (1, 3, 16, 16), (2, 3, 32, 32))

    class ExecutionContext:
        def __init__(self):
            self.shape = None
            self.addresses = {}

        def set_input_shape(self, name, shape):
            ok = all(lo <= v <= hi for lo, v, hi in zip(profile[0], shape, profile[2]))
            self.shape = tuple(shape) if ok else None
            return ok

        def get_tensor_shape(self, name):
            n, _, h, w = self.shape
            return {"probabilities": (n, NUM_CLASSES, h, w)}.get(name, (n, h, w))

        def set_tensor_address(self, name, address):
            self.addresses[name] = address

        def execute_async_v3(self, stream_handle):
            assert stream_handle == 1234
            count = int(np.prod(self.shape))
            image = driver.memory[self.addresses["image"]][:count * 4].view(np.float32).reshape(self.shape)
            outputs = dict(zip(("probabilities", "labels", "unary_labels"), fake_model_function(image)))
            for name, value in outputs.items():
                if name in self.addresses:
                    raw = value.reshape(-1).view(np.uint8)
                    driver.memory[self.addresses[name]][:raw.size] = raw
            return True

    class Engine:
        num_io_tensors = len(io)

        def get_tensor_name(self, i):
            return list(io)[i]

        def get_tensor_mode(self, name):
            return io[name][0]

        def get_tensor_dtype(self, name):
            return io[name][1]

        def get_tensor_shape(self, name):
            return io[name][2]

        def get_tensor_profile_shape(self, name, index):
            return profile

        def create_execution_context(self):
            return ExecutionContext()

    class Runtime:
        def __init__(self, logger):
            self.engine_host_code_allowed = False

        def deserialize_cuda_engine(self, blob):
            return Engine() if blob == ENGINE_BYTES else None

    trt.Runtime = Runtime

    # -- builder
    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Layer:
        def __init__(self, layer_type, plugin_name=None):
            self.type, self._plugin_name = layer_type, plugin_name

    class PluginCore:
        def __init__(self, name):
            self.plugin_name = name

    class Plugin:
        def __init__(self, name):
            self.name = name

        def get_capability_interface(self, capability):
            assert capability == "CORE"
            return PluginCore(self.name)

    class IPluginV3Layer(Layer):
        def get_plugin(self):
            if trt.unnamed_plugin_layers:
                raise TypeError("unsupported in this release")
            return Plugin(self._plugin_name)

    trt.IPluginV3Layer = IPluginV3Layer

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.inputs = [Tensor("image", (-1, 3, -1, -1))]
            self.layers = []

        @property
        def num_layers(self):
            return len(self.layers)

        def get_layer(self, i):
            return self.layers[i]

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class ParserError:
        def __init__(self, text):
            self.text = text

        def desc(self):
            return self.text

        def node(self):
            return 3

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network

        def set_flag(self, flag):
            trt.parser_flags.append(flag)

        def parse(self, data, path=None):
            import onnx

            model = onnx.ModelProto.FromString(bytes(data))
            trt.parsed_models.append(model)
            self.errors = [ParserError(e) for e in trt.parse_errors]
            functions = {f.name for f in model.functions}
            plugins = trt.registered_plugins if trt.loaded_libraries else set()
            override = "ENABLE_PLUGIN_OVERRIDE" in trt.parser_flags
            for node in model.graph.node:
                use_function = node.op_type in functions and (
                    trt.function_preference == "function" and not override
                    or node.op_type not in plugins)
                if use_function:
                    self.network.layers.append(Layer("ELEMENTWISE"))   # the standard-op body
                elif node.op_type in plugins:
                    self.network.layers.append(Layer("PLUGIN_V3", node.op_type))
                elif node.domain == "trt.plugins":
                    self.errors.append(ParserError(
                        "Plugin not found, are the plugin name, version, and namespace correct?"))
                else:
                    self.network.layers.append(Layer("ELEMENTWISE"))
            return not self.errors

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

    class OptimizationProfile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class TimingCache:
        def __init__(self, blob):
            self.blob = blob

        def serialize(self):
            return self.blob + b"+updated"

    class Config:
        def __init__(self):
            self.pools, self.flags, self.profiles = {}, [], []
            self.plugins_to_serialize = []
            self.timing_cache = None

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool] = size

        def set_flag(self, flag):
            self.flags.append(flag)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)

        def create_timing_cache(self, blob):
            return TimingCache(bytes(blob))

        def set_timing_cache(self, cache, ignore_mismatch):
            self.timing_cache = cache

        def get_timing_cache(self):
            return self.timing_cache

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return OptimizationProfile()

        def build_serialized_network(self, network, config):
            trt.built.append((network, config))
            return None if trt.build_fails else ENGINE_BYTES

    trt.Builder, trt.OnnxParser = Builder, OnnxParser
    return trt


# ---- fixtures ------------------------------------------------------------------------------

@pytest.fixture
def plugin_lib(tmp_path, monkeypatch):
    """A stand-in plugin file named by $CONVCRF_TRT_PLUGIN; no installed copy."""
    lib = tmp_path / "libconvcrf_trt_plugin.so"
    lib.write_bytes(b"\x7fELF fake plugin")
    monkeypatch.setenv("CONVCRF_TRT_PLUGIN", str(lib))
    monkeypatch.setattr(plugin_module, "LIB_DIR", tmp_path / "no-installed-lib")
    monkeypatch.setattr(plugin_module, "_loaded", {})
    return lib


@pytest.fixture
def fakes(monkeypatch, plugin_lib, tmp_path):
    driver = make_fake_driver()
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = driver
    trt = make_fake_trt(driver)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    monkeypatch.setenv("CONVCRF_ENGINE_CACHE", str(tmp_path / "cache"))
    return types.SimpleNamespace(trt=trt, driver=driver, plugin=plugin_lib)


@pytest.fixture
def onnx_model(tmp_path) -> Path:
    """A sealed exported-like file without a CRF (the toy model's interface and metadata)."""
    return _toy_onnx(tmp_path / "model.onnx")


def _toy_onnx(path: Path, crf: bool = False) -> Path:
    import onnx

    from convcrf_deploy.exported_model import seal
    from convcrf_deploy.runtime.testing import write_toy_onnx

    write_toy_onnx(path, ["road", "car", "person", "sky"], input_size=(16, 24))
    if not crf:     # the toy records a CRF configuration; this one is a unary-only graph
        model = onnx.load(str(path))
        kept = [p for p in model.metadata_props if p.key != "convcrf.crf_config"]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
        seal(model)
        onnx.save(model, str(path))
    return path


# ---- shapes, profiles, cache keys -------------------------------------------------------------

def test_parse_shape_accepts_nchw_and_explains_errors():
    assert parse_shape("1x3x480x640") == (1, 3, 480, 640)
    assert parse_shape(" 2X3x8x9 ") == (2, 3, 8, 9)
    assert parse_shape("1,3,4,5") == (1, 3, 4, 5)
    assert parse_shape([1, 3, 4, 5]) == (1, 3, 4, 5)
    with pytest.raises(ValueError, match="NxCxHxW"):
        parse_shape("3x480x640")
    with pytest.raises(ValueError, match="NxCxHxW"):
        parse_shape("1x3xbigx640")
    with pytest.raises(ValueError, match=">= 1"):
        parse_shape("0x3x480x640")
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels, got C=4"):
        parse_shape("1x4x480x640")
    with pytest.raises(ValueError, match="four dimensions"):
        parse_shape([1, 3, 4])


def test_profile_defaults_and_ordering():
    # Nothing given: static profile at the model's nominal size.
    p = Profile.resolve(input_size=(240, 320))
    assert p.min == p.opt == p.max == (1, 3, 240, 320)
    # Only a range: opt is the nominal size clamped into it.
    p = Profile.resolve("1x3x100x100", None, "4x3x200x200", input_size=(240, 320))
    assert p == Profile((1, 3, 100, 100), (1, 3, 200, 200), (4, 3, 200, 200))
    # opt given, min/max default to it.
    p = Profile.resolve(None, "2x3x64x64", None)
    assert p.min == p.max == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="min <= opt <= max"):
        Profile.resolve("1x3x500x500", "1x3x100x100", None)
    with pytest.raises(ValueError, match="--opt"):
        Profile.resolve()


def test_engine_cache_key_changes_with_every_component():
    profile = Profile.resolve(opt_shape="1x3x64x64")
    base = dict(model_sha256="a" * 64, gpu="RTX 3090 sm_86", trt_version="10.9.0",
                profile=profile, version_compatible=False, plugin_sha256="p")
    key = engine_cache_key(**base)
    assert key == engine_cache_key(**base) and len(key) == 24
    variants = [dict(model_sha256="b" * 64), dict(gpu="A100 sm_80"), dict(trt_version="11.1.0"),
                dict(profile=Profile.resolve(opt_shape="1x3x64x96")),
                dict(version_compatible=True), dict(plugin_sha256="q")]
    keys = {engine_cache_key(**{**base, **change}) for change in variants}
    assert len(keys) == len(variants) and key not in keys


# ---- plugin library look-up ---------------------------------------------------------------

def test_find_plugin_library_order_and_messages(tmp_path, monkeypatch):
    monkeypatch.delenv("CONVCRF_TRT_PLUGIN", raising=False)
    monkeypatch.setattr(plugin_module, "LIB_DIR", tmp_path / "lib")
    with pytest.raises(PluginLibraryError) as info:
        find_plugin_library()
    message = str(info.value)
    for needle in ("--plugin PATH", "CONVCRF_TRT_PLUGIN", str(tmp_path / "lib"),
                   "CONVCRF_WITH_TENSORRT=ON TensorRT_INCLUDE_DIR=", "-DCONVCRF_WITH_TENSORRT=ON"):
        assert needle in message
    # Installed copy.
    (tmp_path / "lib").mkdir()
    installed = tmp_path / "lib" / "libconvcrf_trt_plugin.so"
    installed.write_bytes(b"x")
    assert find_plugin_library() == installed
    # Environment wins over the installed copy; an explicit path wins over both.
    env_lib = tmp_path / "env.so"
    env_lib.write_bytes(b"x")
    monkeypatch.setenv("CONVCRF_TRT_PLUGIN", str(env_lib))
    assert find_plugin_library() == env_lib.resolve()
    explicit = tmp_path / "explicit.so"
    explicit.write_bytes(b"x")
    assert find_plugin_library(explicit) == explicit.resolve()
    # A named but missing file is an error naming it, not a silent fallback.
    with pytest.raises(PluginLibraryError, match="missing.so.*from --plugin"):
        find_plugin_library(tmp_path / "missing.so")
    monkeypatch.setenv("CONVCRF_TRT_PLUGIN", str(tmp_path / "gone.so"))
    with pytest.raises(PluginLibraryError, match="gone.so.*from CONVCRF_TRT_PLUGIN"):
        find_plugin_library()


# ---- without TensorRT ---------------------------------------------------------------------

def test_build_without_tensorrt_names_the_extra(monkeypatch, onnx_model, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails like when not installed
    with pytest.raises(TensorRTUnavailableError, match=r'pip install "/path/to/convcrf-deploy\[tensorrt\]"'):
        build_engine(onnx_model)
    from convcrf_deploy.cli.build import main

    assert main([str(onnx_model)]) == 3  # a library is missing (cli/harness.py's table)
    err = capsys.readouterr().err
    assert install_hint("tensorrt") in err and "Traceback" not in err


def test_backend_without_tensorrt_names_the_extra(monkeypatch, tmp_path):
    from convcrf_deploy.runtime.backends import BackendUnavailableError, create_backend

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    engine = tmp_path / "model.engine"
    engine.write_bytes(ENGINE_BYTES)
    with pytest.raises(BackendUnavailableError, match=r"convcrf-deploy\[tensorrt\]"):
        create_backend(str(engine))


# ---- build_engine with the fakes -------------------------------------------------------------

def test_build_engine_writes_engine_and_metadata(fakes, onnx_model, tmp_path):
    out = tmp_path / "out" / "model.engine"
    path = build_engine(onnx_model, out, min_shape="1x3x8x8", max_shape="2x3x32x32",
                        workspace_mb=256)
    assert path == out and out.read_bytes() == ENGINE_BYTES
    assert read_metadata(out).class_names == ["road", "car", "person", "sky"]
    assert json.loads(metadata_path_for(out).read_text())["input_size"] == [16, 24]
    assert fakes.trt.loaded_libraries == [str(fakes.plugin.resolve())]
    network, config = fakes.trt.built[0]
    assert network.flags == 1  # strongly typed on TensorRT 10
    assert config.pools == {"WORKSPACE": 256 << 20}
    # opt = the nominal 16x24 clamped into the range.
    assert config.profiles[0].shapes["image"] == ((1, 3, 8, 8), (1, 3, 16, 24), (2, 3, 32, 32))
    assert config.flags == [] and config.plugins_to_serialize == []


def test_engine_build_shows_progress_on_a_terminal(fakes, onnx_model, tmp_path, monkeypatch):
    # Issue 21: builds ran minutes without a word; the builder reports through the one
    # progress helper (tests/test_progress.py checks that it draws only on a terminal).
    from convcrf_deploy.progress import Progress
    labels = []
    monkeypatch.setattr(Progress, "__enter__",
                        lambda self: labels.append(self.label) or self)
    build_engine(onnx_model, tmp_path / "m.engine", min_shape="1x3x8x8", max_shape="2x3x32x32")
    assert labels == ["TensorRT: building the engine for model.onnx"]


def test_build_engine_cache_hit_and_miss(fakes, onnx_model):
    first = build_engine(onnx_model, opt_shape="1x3x16x16")
    assert first.parent.name == "cache" and first.name.startswith("model-")
    second = build_engine(onnx_model, opt_shape="1x3x16x16")
    assert second == first and len(fakes.trt.built) == 1  # served from the cache
    third = build_engine(onnx_model, opt_shape="1x3x16x32")
    assert third != first and len(fakes.trt.built) == 2
    build_engine(onnx_model, opt_shape="1x3x16x16", force=True)
    assert len(fakes.trt.built) == 3
    assert fakes.trt.loaded_libraries == [str(fakes.plugin.resolve())]  # loaded once per process


def test_build_engine_turns_plugin_not_found_into_instructions(fakes, onnx_model):
    fakes.trt.parse_errors = ["Plugin not found, are the plugin name, version, and namespace "
                              "correct? (ConvCRFKernel)"]
    with pytest.raises(PluginLibraryError) as info:
        build_engine(onnx_model, onnx_model.with_suffix(".engine"))
    message = str(info.value)
    assert "ConvCRFKernel" in message and "--plugin PATH" in message
    assert str(fakes.plugin.resolve()) in message and "Plugin not found" in message
    fakes.trt.parse_errors = ["Unsupported ONNX data type: UINT8 (2)"]
    with pytest.raises(EngineBuildError, match="UINT8"):
        build_engine(onnx_model, onnx_model.with_suffix(".engine"))


def test_build_engine_failure_and_options(fakes, onnx_model, tmp_path):
    fakes.trt.build_fails = True
    with pytest.raises(EngineBuildError, match="failed to build.*--workspace"):
        build_engine(onnx_model, tmp_path / "x.engine")
    fakes.trt.build_fails = False
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    build_engine(onnx_model, tmp_path / "vc.engine", version_compatible=True, timing_cache=cache)
    _, config = fakes.trt.built[-1]
    assert config.flags == ["VERSION_COMPATIBLE"]
    assert config.plugins_to_serialize == [str(fakes.plugin.resolve())]
    assert cache.read_bytes() == b"old+updated"
    with pytest.raises(ValueError, match="workspace_mb"):
        build_engine(onnx_model, tmp_path / "y.engine", workspace_mb=0)


def test_build_engine_rejects_invalid_onnx(fakes, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf \xff\xff")
    with pytest.raises(ValueError, match="bad.onnx is not a readable ONNX model"):
        build_engine(bad, tmp_path / "bad.engine")


def test_cli_build(fakes, onnx_model, tmp_path, capsys):
    from convcrf_deploy.cli.build import main

    out = tmp_path / "cli.engine"
    assert main([str(onnx_model), "-o", str(out), "--min", "1x3x8x8", "--max", "1x3x32x32",
                 "--workspace", "64"]) == 0
    assert out.read_bytes() == ENGINE_BYTES
    assert "wrote" in capsys.readouterr().out
    assert fakes.trt.built[-1][1].pools == {"WORKSPACE": 64 << 20}
    assert main([str(tmp_path / "missing.onnx")]) == 2
    with pytest.raises(SystemExit):
        main([str(onnx_model), "--opt", "1x3x8"])
    fakes.trt.parse_errors = ["Plugin not found, are the plugin name, version, and namespace correct?"]
    assert main([str(onnx_model), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "--plugin PATH" in err and "Traceback" not in err


# ---- the ConvCRF must be built from the plugin ------------------------------------------------------

def _crf_onnx(path: Path, *, nodes: bool = True, functions: bool = True) -> Path:
    """An exported-like file (sealed): two ConvCRFKernel nodes and one ConvCRFMessagePassing
    (with their standard-op function bodies for the single-file flavour), CRF metadata."""
    import onnx
    from onnx import TensorProto, helper

    from convcrf_deploy import CRFConfig
    from convcrf_deploy.export import onnx_ops
    from convcrf_deploy.exported_model import seal

    attrs = onnx_ops.plugin_attributes(3)
    if nodes:
        graph_nodes = [
            helper.make_node("ConvCRFKernel", ["image"], ["k1"], domain="trt.plugins", **attrs),
            helper.make_node("ConvCRFKernel", ["image"], ["k2"], domain="trt.plugins", **attrs),
            helper.make_node("Add", ["k1", "k2"], ["k"]),
            helper.make_node("ConvCRFMessagePassing", ["image", "k"], ["probabilities"],
                             domain="trt.plugins", **attrs)]
    else:   # portable: the CRF inlined as standard ops
        graph_nodes = [helper.make_node("Identity", ["image"], ["probabilities"])]
    graph_nodes.append(helper.make_node("ArgMax", ["probabilities"], ["labels"], axis=1,
                                        keepdims=0))
    graph = helper.make_graph(
        graph_nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("labels", TensorProto.INT64, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20),
                                                    helper.make_opsetid("trt.plugins", 1)])
    if functions:
        model.functions.extend(onnx_ops.local_functions(3, 20))
    metadata = ModelMetadata.for_classes(["road", "car", "person", "sky"], input_size=(16, 24))
    flavor = "portable" if not nodes else "single-file" if functions else "plugin"
    props = {**metadata.to_onnx_props(), "convcrf.crf_config": CRFConfig(num_classes=4).to_json(),
             "convcrf.flavor": flavor}
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    seal(model)
    onnx.save(model, str(path))
    return path


def test_single_file_builds_with_the_plugin_even_where_tensorrt_prefers_function_bodies(
        fakes, tmp_path):
    """TensorRT <= 10.6 imports a single-file model's function bodies even with the plugin
    loaded; the builder strips them, so the engine has the plugin layers."""
    model = _crf_onnx(tmp_path / "single.onnx")
    lines = []
    build_engine(model, tmp_path / "e.engine", report=lines.append)
    assert fakes.trt.parsed_models[-1].functions == []          # bodies stripped
    layers = fakes.trt.built[-1][0].layers
    assert sorted(l._plugin_name for l in layers if l.type == "PLUGIN_V3") == [
        "ConvCRFKernel", "ConvCRFKernel", "ConvCRFMessagePassing"]
    assert lines == ["ConvCRF implementation: TensorRT plugin (2 ConvCRFKernel + "
                     "1 ConvCRFMessagePassing plugin layers)"]


def test_unregistered_plugin_is_plugin_not_found_not_a_silent_standard_op_crf(fakes, tmp_path):
    fakes.trt.registered_plugins = set()     # a library that does not register our creators
    with pytest.raises(PluginLibraryError) as info:
        build_engine(_crf_onnx(tmp_path / "single.onnx"), tmp_path / "e.engine")
    message = str(info.value)
    assert "Plugin not found" in message and str(fakes.plugin.resolve()) in message
    assert not fakes.trt.built


def test_network_with_standard_op_crf_is_an_error_unless_allowed(fakes, tmp_path, monkeypatch):
    """Acceptance (issue 10): a graph that would build with the standard-op CRF fails with a
    message that says so."""
    # A parser that imported the function bodies (as TensorRT <= 10.6 does), i.e. what
    # happens when the bodies reach it: simulate by not stripping them.
    monkeypatch.setattr(builder_module, "prepare_for_parser", _unstripped(builder_module))
    with pytest.raises(EngineBuildError, match=r"would build the ConvCRF with standard ops.*"
                       r"2 ConvCRFKernel, 1 ConvCRFMessagePassing node.*none.*"
                       r"--allow-standard-op-crf"):
        build_engine(_crf_onnx(tmp_path / "single.onnx"), tmp_path / "e.engine")
    assert not fakes.trt.built
    lines = []
    build_engine(_crf_onnx(tmp_path / "single.onnx"), tmp_path / "e.engine",
                 allow_standard_op_crf=True, report=lines.append)
    assert "standard ONNX ops, NOT the plugin" in lines[0]


def _unstripped(module):
    original = module.prepare_for_parser

    def prepare(exported):
        parsed = original(exported)
        parsed.data = exported.proto.SerializeToString()
        return parsed
    return prepare


def test_portable_file_is_refused_unless_allowed(fakes, tmp_path, capsys):
    from convcrf_deploy.cli.build import main

    model = _crf_onnx(tmp_path / "portable.onnx", nodes=False, functions=False)
    assert main([str(model), "-o", str(tmp_path / "p.engine")]) == 1
    err = capsys.readouterr().err
    assert "standard-op CRF instead of the ConvCRF plugin" in err
    assert "--flavor single-file" in err and "--allow-standard-op-crf" in err
    assert "Traceback" not in err and not fakes.trt.built
    assert main([str(model), "-o", str(tmp_path / "p.engine"), "--allow-standard-op-crf"]) == 0
    assert "ConvCRF implementation: standard ONNX ops" in capsys.readouterr().out


def test_cli_prints_the_plugin_implementation(fakes, tmp_path, capsys):
    from convcrf_deploy.cli.build import main

    assert main([str(_crf_onnx(tmp_path / "m.onnx")), "-o", str(tmp_path / "m.engine")]) == 0
    out = capsys.readouterr().out
    assert "ConvCRF implementation: TensorRT plugin (2 ConvCRFKernel + 1 ConvCRFMessagePassing" in out


def test_plugin_override_flag_where_the_enum_exists(fakes, tmp_path):
    """TensorRT >= 10.15 prefers function bodies unless kENABLE_PLUGIN_OVERRIDE is set."""
    model = _crf_onnx(tmp_path / "m.onnx")
    build_engine(model, tmp_path / "a.engine")
    assert fakes.trt.parser_flags == []          # 10.9: no such enum, nothing set
    fakes.trt.OnnxParserFlag = types.SimpleNamespace(
        NATIVE_INSTANCENORM="NATIVE_INSTANCENORM", ENABLE_PLUGIN_OVERRIDE="ENABLE_PLUGIN_OVERRIDE")
    build_engine(model, tmp_path / "b.engine")
    assert fakes.trt.parser_flags == ["ENABLE_PLUGIN_OVERRIDE"]


def test_unidentified_plugin_layers_fail_closed(fakes, tmp_path):
    fakes.trt.unnamed_plugin_layers = True
    with pytest.raises(EngineBuildError, match="3 plugin layer\\(s\\) could not be identified"):
        build_engine(_crf_onnx(tmp_path / "m.onnx"), tmp_path / "e.engine")


def test_backend_building_from_onnx_checks_the_plugin(fakes, tmp_path):
    from convcrf_deploy.runtime.backends.trt import TensorRTBackend

    model = _crf_onnx(tmp_path / "portable.onnx", nodes=False, functions=False)
    with pytest.raises(EngineBuildError, match="standard-op CRF"):
        TensorRTBackend(model, opt_shape="1x3x16x16")
    backend = TensorRTBackend(model, opt_shape="1x3x16x16", allow_standard_op_crf=True)
    assert backend.info.path.parent.name == "cache"


# ---- buffers -----------------------------------------------------------------------------------

def test_buffer_pool_grows_only_when_needed():
    from convcrf_deploy.runtime.backends.trt import BufferPool

    driver = make_fake_driver()
    pool = BufferPool(lambda n: np.zeros(n, np.uint8), driver.mem_alloc)
    view, ptr = pool.get("image", (1, 3, 16, 16), np.float32)
    assert view.shape == (1, 3, 16, 16) and view.dtype == np.float32
    assert pool.capacity("image") == 3 * 16 * 16 * 4 and pool.allocations == 1
    smaller, ptr2 = pool.get("image", (1, 3, 8, 8), np.float32)
    assert smaller.shape == (1, 3, 8, 8) and ptr2 == ptr and pool.allocations == 1
    half, _ = pool.get("image", (1, 3, 16, 16), np.float16)  # same bytes budget, other dtype
    assert half.dtype == np.float16 and pool.allocations == 1
    bigger, ptr3 = pool.get("image", (2, 3, 16, 16), np.float32)
    assert pool.allocations == 2 and pool.capacity("image") == 2 * 3 * 16 * 16 * 4
    assert driver.memory.get("freed") == [ptr]  # the old device buffer was freed
    pool.get("labels", (0, 4, 4), np.int64)  # empty tensors still get a valid buffer
    assert pool.capacity("labels") == 1
    with pytest.raises(ValueError, match="unresolved shape"):
        pool.get("probabilities", (-1, 4, 4, 4), np.float32)
    pool.release()
    assert set(driver.memory) == {"freed"}


# ---- the backend ---------------------------------------------------------------------------------

@pytest.fixture
def engine_file(tmp_path) -> Path:
    path = tmp_path / "model.engine"
    path.write_bytes(ENGINE_BYTES)
    return path


def test_backend_runs_engine_with_copies_and_metadata(fakes, engine_file):
    from convcrf_deploy.runtime.backends import create_backend

    metadata = ModelMetadata.for_classes(["a", "b", "c", "d"], input_size=(16, 16))
    metadata_path_for(engine_file).write_text(json.dumps(metadata.to_dict()))
    backend = create_backend(str(engine_file))
    assert type(backend).__name__ == "TensorRTBackend" and backend.metadata.class_names == ["a", "b", "c", "d"]
    assert fakes.trt.loaded_libraries == [str(fakes.plugin.resolve())]
    rng = np.random.default_rng(0)
    with backend:
        assert len(fakes.driver.contexts) == 1
        for shape in [(1, 3, 16, 16), (1, 3, 8, 12), (2, 3, 32, 32), (1, 3, 16, 16)]:
            image = rng.uniform(0, 255, shape).astype(np.float32)
            out = backend.infer({"image": image})
            prob, labels, unary = fake_model_function(image)
            np.testing.assert_allclose(out["probabilities"], prob, rtol=1e-6)
            assert out["probabilities"].dtype == np.float32
            np.testing.assert_array_equal(out["labels"], labels)
            assert out["labels"].dtype == np.int64 and out["unary_labels"].dtype == np.int64
            np.testing.assert_array_equal(out["unary_labels"], unary)
        # Reallocation only when a frame grew: first shape (4 tensors) + the 2x32x32 frame (4).
        assert backend._buffers.allocations == 8
        # Outputs are copies: a later call does not overwrite earlier results.
        first = backend.infer({"image": np.zeros((1, 3, 8, 8), np.float32)})["probabilities"]
        backend.infer({"image": np.full((1, 3, 8, 8), 255, np.float32)})
        np.testing.assert_allclose(first, 1.0 / NUM_CLASSES, rtol=1e-6)
    assert fakes.driver.contexts == [] and set(fakes.driver.memory) == {"freed"}


def test_backend_explains_shapes_outside_the_profile(fakes, engine_file):
    from convcrf_deploy.runtime.backends.trt import TensorRTBackend

    with TensorRTBackend(engine_file) as backend:
        with pytest.raises(ValueError, match=r"1x3x64x64 is outside.*min 1x3x8x8.*max 2x3x32x32.*--min/--max"):
            backend.infer({"image": np.zeros((1, 3, 64, 64), np.float32)})


def test_backend_metadata_fallbacks(fakes, engine_file, onnx_model, caplog):
    from convcrf_deploy.runtime.backends.trt import TensorRTBackend

    # No sidecar: generic names from the engine's class count, with a warning.
    backend = TensorRTBackend(engine_file)
    assert backend.metadata.class_names == [f"class_{i}" for i in range(NUM_CLASSES)]
    assert "no metadata sidecar" in caplog.text
    # Explicit metadata wins.
    explicit = ModelMetadata.for_classes(list("wxyz"))
    assert TensorRTBackend(engine_file, metadata=explicit).metadata is explicit
    # From ONNX: built through the cache, metadata from the sidecar build_engine wrote.
    backend = TensorRTBackend(onnx_model, opt_shape="1x3x16x16")
    assert backend.metadata.class_names == ["road", "car", "person", "sky"]
    assert backend.info.path.parent.name == "cache"


def test_backend_rejects_unloadable_engine(fakes, tmp_path):
    from convcrf_deploy.runtime.backends.trt import TensorRTBackend

    bad = tmp_path / "other.engine"
    bad.write_bytes(b"built elsewhere")
    with pytest.raises(ValueError, match="could not deserialise.*rebuild it with convcrf-build"):
        TensorRTBackend(bad)
    with pytest.raises(FileNotFoundError):
        TensorRTBackend(tmp_path / "missing.engine")


def test_modules_import_without_tensorrt_or_torch():
    import subprocess

    code = ("import sys; import convcrf_deploy.tensorrt, convcrf_deploy.cli.build, "
            "convcrf_deploy.runtime.backends.trt; "
            "bad = [m for m in ('tensorrt', 'pycuda', 'torch') if m in sys.modules]; "
            "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr


# ---- INT8 (QDQ) graphs: explicit quantisation --------------------------------------------------

def _int8_crf_onnx(path: Path, *, relu_after_conv: bool = True) -> Path:
    """A small plugin-flavour graph (3 convolutions -> logits -> ConvCRF nodes) whose unary is
    quantised by convcrf_deploy.export.quantize (ONNX Runtime calibrates only the unary)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from convcrf_deploy import CRFConfig
    from convcrf_deploy.data.scenes import SyntheticScene
    from convcrf_deploy.export import onnx_ops
    from convcrf_deploy.export.quantize import calibration_set, quantize_unary
    from convcrf_deploy.exported_model import seal

    rng = np.random.default_rng(0)
    shapes = {"c1": (8, 3, 3), "c2": (8, 8, 3), "c3": (NUM_CLASSES, 8, 1)}
    initializers, nodes, x = [], [], "image"
    for name, (cout, cin, k) in shapes.items():
        weight = rng.normal(0, (2.0 / (cin * k * k)) ** 0.5, (cout, cin, k, k))
        initializers += [numpy_helper.from_array(weight.astype(np.float32), f"{name}.w"),
                         numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}.b")]
        out = "logits" if name == "c3" else f"{name}.out"
        nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [out],
                                      pads=[k // 2] * 4, name=name))
        x = out
        if name != "c3" and relu_after_conv:
            nodes.append(helper.make_node("Relu", [out], [f"{name}.relu"], name=f"{name}.relu"))
            x = f"{name}.relu"
    attrs = onnx_ops.plugin_attributes(3)
    nodes += [helper.make_node("ConvCRFKernel", ["image"], ["k"], domain="trt.plugins", **attrs),
              helper.make_node("ConvCRFMessagePassing", ["logits", "k"], ["probabilities"],
                               domain="trt.plugins", **attrs),
              helper.make_node("ArgMax", ["probabilities"], ["labels"], axis=1, keepdims=0),
              helper.make_node("ArgMax", ["logits"], ["unary_labels"], axis=1, keepdims=0)]
    dims = ["N", "H", "W"]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("labels", TensorProto.INT64, dims),
         helper.make_tensor_value_info("unary_labels", TensorProto.INT64, dims)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20),
                                                    helper.make_opsetid("trt.plugins", 1)])
    metadata = ModelMetadata.for_classes(["road", "car", "person", "sky"], input_size=(16, 24))
    props = {**metadata.to_onnx_props(), "convcrf.crf_config": CRFConfig(num_classes=4).to_json(),
             "convcrf.precision": "fp32"}
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    frames = [SyntheticScene(32, 40, seed=i).render(i)[0][:, :, ::-1].copy() for i in range(8)]
    quantized = quantize_unary(model, calibration_set(frames, metadata)).model
    seal(quantized)
    onnx.save(quantized, str(path))
    return path


def _zero_points(model) -> list:
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return [values[n.input[2]] for n in model.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


def test_int8_graph_builds_as_symmetric_int8_with_the_plugin(fakes, tmp_path):
    """The QDQ file is TensorRT's explicit-quantisation input: its uint8 activation scales
    reach the parser as symmetric int8 (zero point 0), the network is strongly typed (no
    precision flag), and the ConvCRF is still the plugin, in fp32."""
    import onnx

    model = _int8_crf_onnx(tmp_path / "int8.onnx")
    original = onnx.load(str(model))
    assert any(z.dtype == np.uint8 for z in _zero_points(original))      # ONNX Runtime's choice
    lines = []
    build_engine(model, tmp_path / "e.engine", report=lines.append)
    parsed = fakes.trt.parsed_models[-1]
    zero_points = _zero_points(parsed)
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    network, config = fakes.trt.built[-1]
    assert network.flags == 1 << 0 and "INT8" not in config.flags          # strongly typed
    assert lines[0] == ("ConvCRF implementation: TensorRT plugin (1 ConvCRFKernel + "
                        "1 ConvCRFMessagePassing plugin layers)")
    assert lines[1].startswith("precision: INT8 explicit quantisation (")
    assert "uint8 scale(s) made symmetric int8 for TensorRT" in lines[1]
    assert lines[1].endswith("ConvCRF plugin in fp32")


def test_int8_flag_only_for_weakly_typed_networks(fakes, tmp_path):
    model = _int8_crf_onnx(tmp_path / "int8.onnx")
    fakes.trt.BuilderFlag.INT8 = "INT8"
    del fakes.trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED           # a weakly typed build
    build_engine(model, tmp_path / "weak.engine")
    network, config = fakes.trt.built[-1]
    assert network.flags == 0 and "INT8" in config.flags
    fakes.trt.__version__ = "11.1.0"                                     # always strongly typed
    build_engine(model, tmp_path / "eleven.engine")
    assert "INT8" not in fakes.trt.built[-1][1].flags
    build_engine(_crf_onnx(tmp_path / "float.onnx"), tmp_path / "float.engine")
    assert "INT8" not in fakes.trt.built[-1][1].flags                    # no Q/DQ: no flag


def test_symmetric_rewrite_keeps_the_graph_meaning(tmp_path):
    """What TensorRT is given computes what the file computes (checked in ONNX Runtime, which
    runs both): same labels on >= 98 % of the pixels, and a ReLU restored where a uint8 range
    starting at 0 was the only clamp."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from convcrf_deploy.exported_model import extract_part
    from convcrf_deploy.tensorrt.network import make_qdq_symmetric

    model = onnx.load(str(_int8_crf_onnx(tmp_path / "int8.onnx")))
    unary = extract_part(model, ["image"], ["logits"])
    symmetric = onnx.ModelProto()
    symmetric.CopyFrom(unary)
    info = make_qdq_symmetric(symmetric)
    assert info.made_symmetric > 0 and make_qdq_symmetric(symmetric).made_symmetric == 0
    image = np.random.default_rng(1).uniform(0, 255, (1, 3, 16, 24)).astype(np.float32)
    outputs = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
               .run(None, {"image": image})[0] for m in (unary, symmetric)]
    assert (outputs[0].argmax(1) == outputs[1].argmax(1)).mean() >= 0.98

    # x -> Q(uint8, zero point 0) -> DQ clamps negatives to 0: the rewrite must keep that.
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    graph = helper.make_graph(
        nodes, "clamp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5])],
        [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
         numpy_helper.from_array(np.array(0, np.uint8), "z")])
    clamp = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    clamp.ir_version = 10
    info = make_qdq_symmetric(clamp)
    assert info.relus_added == 1 and clamp.graph.node[0].op_type == "Relu"
    x = np.array([-3.0, -0.1, 0.0, 1.0, 25.5], np.float32)
    y = ort.InferenceSession(clamp.SerializeToString(), providers=["CPUExecutionProvider"]
                             ).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, [0, 0, 0, 1.0, 25.5], atol=0.1 * 255 / 127)
