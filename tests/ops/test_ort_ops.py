"""libconvcrf_ort_ops: the ConvCRF ops as ONNX Runtime custom ops (issue 20, plugins/onnxruntime).

Everything runs through a plain ``onnxruntime.InferenceSession`` with
``SessionOptions.register_custom_ops_library(convcrf_deploy.ort_ops_library())``, as a user
would: both ops against a brute-force loop over docs/ops.md (odd sizes, images smaller than the
window, 1 and 21 classes, k = 3..13, batch 2, fp16, sizes changing between runs), and bad nodes
(wrong rank, dtype, attribute type or value) giving an ONNX Runtime error that names the node.
The bad cases run in one child process, so that a crash fails the test instead of the run.

The library is built only where the ONNX Runtime headers are found; the tests skip without it,
except under CONVCRF_REQUIRE_NATIVE=1 (CI) when the headers sit beside the clone, where a
missing library is a failed build.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

from convcrf_deploy import _native, ort_ops_library  # noqa: E402

DOMAIN = "trt.plugins"
HEADERS = Path(__file__).resolve().parents[3] / "shared" / "third_party" / "onnxruntime-1.16.3" / "include"
ONNX_TYPES = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16,
              np.float64: TensorProto.DOUBLE}


@pytest.fixture(scope="module")
def library() -> str:
    try:
        return ort_ops_library()
    except _native.NativeError as exc:
        if os.environ.get("CONVCRF_REQUIRE_NATIVE") == "1" and HEADERS.is_dir():
            pytest.fail(f"the ONNX Runtime headers are at {HEADERS} but the custom-op library "
                        f"was not built: {exc}")
        pytest.skip(str(exc))


def attributes(k=7, **overrides):
    attrs = {"filter_size": k, "plugin_version": "1", "plugin_namespace": ""}
    attrs.update(overrides)
    return {name: value for name, value in attrs.items() if value is not None}


def model(op: str, input_types, attrs: dict, shapes=None) -> bytes:
    """One ``trt.plugins`` node ``op`` named ``crf_node`` with inputs x0 (, x1) of ONNX element
    types ``input_types`` and declared ``shapes`` (default: 4-D, every dim symbolic)."""
    names = [f"x{i}" for i in range(len(input_types))]
    shapes = shapes or [[f"n{i}", f"c{i}", "h", "w"] for i in range(len(names))]
    node = helper.make_node(op, names, ["y"], domain=DOMAIN, name="crf_node", **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, t, s)
                      for n, t, s in zip(names, input_types, shapes)],
        [helper.make_tensor_value_info("y", input_types[0], None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                   helper.make_opsetid(DOMAIN, 1)]).SerializeToString()


def session(library, model_bytes, threads=None):
    options = ort.SessionOptions()
    if threads is not None:
        options.add_session_config_entry(_native.ORT_OPS_THREADS_KEY, str(threads))
    options.register_custom_ops_library(library)
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def run_op(library, op, inputs, k, threads=None):
    dtype = inputs[0].dtype.type
    s = session(library, model(op, [ONNX_TYPES[dtype]] * len(inputs), attributes(k)), threads)
    return s.run(None, {f"x{i}": a for i, a in enumerate(inputs)})[0]


# ---- brute force over the definitions of docs/ops.md ------------------------------------------

def brute_kernel(f: np.ndarray, k: int) -> np.ndarray:
    """K[n,o(dy,dx),y,x] = exp(-0.5 sum_d (F[n,d,y,x] - F[n,d,y+dy,x+dx])^2); 0 at the centre
    and outside. One pixel and offset at a time (vectorised over n only)."""
    f = f.astype(np.float64)
    n, _, h, w = f.shape
    r = k // 2
    out = np.zeros((n, k * k, h, w))
    for y in range(h):
        for x in range(w):
            for dy in range(-r, r + 1):
                for dx in range(-r, r + 1):
                    yy, xx = y + dy, x + dx
                    if (dy, dx) == (0, 0) or not (0 <= yy < h and 0 <= xx < w):
                        continue
                    d2 = ((f[:, :, y, x] - f[:, :, yy, xx]) ** 2).sum(axis=1)
                    out[:, (dy + r) * k + dx + r, y, x] = np.exp(-0.5 * d2)
    return out


def brute_message_passing(q: np.ndarray, kern: np.ndarray, k: int) -> np.ndarray:
    """M[n,c,y,x] = sum_{dy,dx} K[n,o(dy,dx),y,x] q[n,c,y+dy,x+dx] (zero outside)."""
    q, kern = q.astype(np.float64), kern.astype(np.float64)
    n, c, h, w = q.shape
    r = k // 2
    out = np.zeros((n, c, h, w))
    for y in range(h):
        for x in range(w):
            for dy in range(-r, r + 1):
                for dx in range(-r, r + 1):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < h and 0 <= xx < w:
                        out[:, :, y, x] += kern[:, (dy + r) * k + dx + r, y, x, None] * q[:, :, yy, xx]
    return out


# (N, D or C, h, w, k): odd sizes; h, w or both below the window; 1 and 21 classes; k = 3..13.
CASES = [(2, 5, 13, 17, 7), (1, 3, 2, 9, 5), (2, 2, 11, 3, 7), (1, 1, 4, 5, 13), (2, 21, 9, 7, 3),
         (1, 1, 15, 12, 9), (2, 4, 6, 13, 11), (1, 21, 5, 5, 5)]


@pytest.mark.parametrize("n,c,h,w,k", CASES)
def test_both_ops_match_the_brute_force_contract(library, n, c, h, w, k):
    rng = np.random.default_rng(n * 1000 + c * 100 + h * 10 + w + k)
    features = (rng.normal(size=(n, c, h, w)) * 0.7).astype(np.float32)
    kern = run_op(library, "ConvCRFKernel", [features], k)
    assert kern.shape == (n, k * k, h, w) and kern.dtype == np.float32
    np.testing.assert_allclose(kern, brute_kernel(features, k), rtol=1e-5, atol=1e-6)
    # A general K (not symmetric, centre non-zero) exercises every offset of the sum.
    q = rng.random((n, c, h, w)).astype(np.float32)
    general = rng.random((n, k * k, h, w)).astype(np.float32)
    messages = run_op(library, "ConvCRFMessagePassing", [q, general], k)
    assert messages.shape == q.shape and messages.dtype == np.float32
    np.testing.assert_allclose(messages, brute_message_passing(q, general, k), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [3, 7, 11])
def test_fp16_inputs_compute_in_fp32_and_return_fp16(library, k):
    rng = np.random.default_rng(k)
    features = rng.normal(size=(2, 5, 9, 14)).astype(np.float16)
    kern = run_op(library, "ConvCRFKernel", [features], k)
    assert kern.dtype == np.float16 and kern.shape == (2, k * k, 9, 14)
    # Reference from the same fp16 inputs in fp64: only the output rounding to fp16 differs.
    np.testing.assert_allclose(kern.astype(np.float64), brute_kernel(features, k), rtol=1e-3, atol=1e-3)
    q = rng.random((2, 21, 9, 14)).astype(np.float16)
    messages = run_op(library, "ConvCRFMessagePassing", [q, kern], k)
    assert messages.dtype == np.float16
    np.testing.assert_allclose(messages.astype(np.float64), brute_message_passing(q, kern, k),
                               rtol=2e-3, atol=2e-3)


def test_one_session_takes_any_batch_and_size(library):
    s = session(library, model("ConvCRFMessagePassing", [TensorProto.FLOAT] * 2, attributes(5)))
    rng = np.random.default_rng(1)
    for n, c, h, w in ((1, 3, 8, 8), (2, 3, 19, 5), (3, 1, 4, 31), (1, 3, 0, 7)):
        q = rng.random((n, c, h, w)).astype(np.float32)
        kern = rng.random((n, 25, h, w)).astype(np.float32)
        out = s.run(None, {"x0": q, "x1": kern})[0]
        assert out.shape == (n, c, h, w)
        np.testing.assert_allclose(out, brute_message_passing(q, kern, 5), rtol=1e-5, atol=1e-5)


def test_threads_come_from_the_session_config_entry(library):
    rng = np.random.default_rng(2)
    features = rng.normal(size=(1, 5, 23, 29)).astype(np.float32)
    one = run_op(library, "ConvCRFKernel", [features], 7, threads=1)
    default = run_op(library, "ConvCRFKernel", [features], 7)
    np.testing.assert_allclose(one, default, rtol=1e-6, atol=1e-7)
    options = ort.SessionOptions()
    options.add_session_config_entry(_native.ORT_OPS_THREADS_KEY, "two")
    with pytest.raises(Exception, match="convcrf.num_threads='two' is not a thread count"):
        options.register_custom_ops_library(library)


def test_a_missing_filter_size_is_the_contracts_default_7(library):
    features = np.random.default_rng(3).normal(size=(1, 2, 6, 6)).astype(np.float32)
    s = session(library, model("ConvCRFKernel", [TensorProto.FLOAT], attributes(None)))
    kern = s.run(None, {"x0": features})[0]
    np.testing.assert_allclose(kern, brute_kernel(features, 7), rtol=1e-5, atol=1e-6)


# ---- bad nodes: an ONNX Runtime error naming the node, never a crash ----------------------------

F32, F16, F64 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE
KERNEL, MP = "ConvCRFKernel", "ConvCRFMessagePassing"


def _f(*shape, dtype=np.float32):
    return np.ones(shape, dtype)


# name -> (model bytes, feeds, words the error must contain besides the node's name)
BAD_NODES = {
    "even filter_size": (model(KERNEL, [F32], attributes(4)), {"x0": _f(1, 2, 5, 5)},
                         ["filter_size=4", "odd"]),
    "filter_size above 31": (model(MP, [F32, F32], attributes(33)),
                             {"x0": _f(1, 2, 5, 5), "x1": _f(1, 1089, 5, 5)}, ["filter_size=33"]),
    "filter_size not an INT": (model(KERNEL, [F32], attributes(7.0)), {"x0": _f(1, 2, 5, 5)},
                               ["filter_size must be an INT"]),
    "filter_size a string": (model(KERNEL, [F32], attributes("7")), {"x0": _f(1, 2, 5, 5)},
                             ["filter_size must be an INT"]),
    "plugin_version 2": (model(KERNEL, [F32], attributes(plugin_version="2")),
                         {"x0": _f(1, 2, 5, 5)}, ["plugin_version", '"2"']),
    "plugin_version an INT": (model(KERNEL, [F32], attributes(plugin_version=1)),
                              {"x0": _f(1, 2, 5, 5)}, ["plugin_version must be a STRING"]),
    "plugin_namespace set": (model(MP, [F32, F32], attributes(3, plugin_namespace="ns")),
                             {"x0": _f(1, 2, 5, 5), "x1": _f(1, 9, 5, 5)}, ["plugin_namespace"]),
    "declared rank 3": (model(KERNEL, [F32], attributes(), [["d", "h", "w"]]),
                        {"x0": _f(2, 5, 5)}, ["4-D", "rank 3"]),
    "declared K channels": (model(MP, [F32, F32], attributes(3), [["n", 4, "h", "w"], ["n", 25, "h", "w"]]),
                            {"x0": _f(1, 4, 5, 5), "x1": _f(1, 25, 5, 5)}, ["25 channels", "k*k=9"]),
    "run-time rank 5": (model(KERNEL, [F32], attributes(), [None]), {"x0": _f(1, 1, 2, 5, 5)},
                        ["4-D", "rank 5"]),
    "run-time rank 2 of K": (model(MP, [F32, F32], attributes(3), [None, None]),
                             {"x0": _f(1, 2, 5, 5), "x1": _f(9, 25)}, ["'K'", "rank 2"]),
    "run-time K channels": (model(MP, [F32, F32], attributes(7)),
                            {"x0": _f(1, 2, 5, 5), "x1": _f(1, 9, 5, 5)}, ["9 channels", "k*k=49"]),
    "q and K sizes differ": (model(MP, [F16, F16], attributes(3)),
                             {"x0": _f(1, 2, 5, 6, dtype=np.float16), "x1": _f(1, 9, 5, 7, dtype=np.float16)},
                             ["disagree in w"]),
    "q and K batches differ": (model(MP, [F32, F32], attributes(3)),
                               {"x0": _f(2, 2, 5, 5), "x1": _f(1, 9, 5, 5)}, ["disagree in N"]),
    "float64 input": (model(KERNEL, [F64], attributes()), {"x0": _f(1, 2, 5, 5, dtype=np.float64)},
                      ["tensor(double)"]),
    "mixed fp32 and fp16": (model(MP, [F32, F16], attributes(3)),
                            {"x0": _f(1, 2, 5, 5), "x1": _f(1, 9, 5, 5, dtype=np.float16)}, []),
}

CHILD = """
import json, sys
import numpy as np, onnxruntime as ort
library, folder = sys.argv[1], sys.argv[2]
results = {}
for name in json.loads(open(folder + "/cases.json").read()):
    options = ort.SessionOptions()
    options.register_custom_ops_library(library)
    feeds = dict(np.load(folder + "/" + name + ".npz"))
    try:
        session = ort.InferenceSession(open(folder + "/" + name + ".onnx", "rb").read(), options,
                                       providers=["CPUExecutionProvider"])
        session.run(None, feeds)
        results[name] = None
    except Exception as exc:
        results[name] = type(exc).__name__ + ": " + str(exc)
print(json.dumps(results))
"""


def test_bad_nodes_give_errors_naming_the_node_never_a_crash(library, tmp_path):
    names = {name: f"case{i}" for i, name in enumerate(BAD_NODES)}
    for name, (model_bytes, feeds, _) in BAD_NODES.items():
        (tmp_path / f"{names[name]}.onnx").write_bytes(model_bytes)
        np.savez(tmp_path / f"{names[name]}.npz", **feeds)
    (tmp_path / "cases.json").write_text(json.dumps(list(names.values())))
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD), library, str(tmp_path)],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, f"the child process died ({child.returncode}): {child.stderr[-3000:]}"
    results = json.loads(child.stdout.strip().splitlines()[-1])
    for name, (_, _, words) in BAD_NODES.items():
        message = results[names[name]]
        assert message is not None, f"{name}: no error"
        assert "crf_node" in message, f"{name}: the error does not name the node: {message}"
        for word in words:
            assert word in message, f"{name}: {word!r} not in {message!r}"


def test_the_library_path_is_public_and_explains_a_missing_build(monkeypatch, tmp_path):
    monkeypatch.setenv(_native.ORT_OPS_ENV, str(tmp_path / "missing.so"))
    with pytest.raises(_native.NativeError, match="CONVCRF_ORT_OPS_LIBRARY=.*is not a file"):
        ort_ops_library()
    monkeypatch.delenv(_native.ORT_OPS_ENV)
    monkeypatch.setattr(_native, "LIB_DIR", tmp_path)
    monkeypatch.setattr(_native, "library_dirs", lambda: [tmp_path])
    with pytest.raises(_native.NativeError, match="ONNXRUNTIME_INCLUDE_DIR=.*pip install"):
        ort_ops_library()
    with pytest.raises(_native.NativeError, match="nvcc"):
        ort_ops_library(cuda=True)
    (tmp_path / _native.library_filename("convcrf_ort_ops")).write_bytes(b"")
    assert ort_ops_library() == str(tmp_path / _native.library_filename("convcrf_ort_ops"))


def test_the_library_needs_no_libonnxruntime_and_finds_the_cpu_library_beside_it(library):
    if not sys.platform.startswith("linux"):
        pytest.skip("ELF check")
    import shutil

    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf not installed")
    dynamic = subprocess.run([readelf, "-d", library], capture_output=True, text=True, check=True).stdout
    assert "libonnxruntime" not in dynamic
    assert "[libconvcrf_cpu.so]" in dynamic and "$ORIGIN" in dynamic
    symbols = subprocess.run(["nm", "-D", "--defined-only", library], capture_output=True, text=True,
                             check=True).stdout.split()
    assert "RegisterCustomOps" in symbols


def test_a_registered_kernel_takes_precedence_over_a_model_local_function_body(library):
    """The single-file flavour gives the nodes model-local function bodies. With the library
    registered, ONNX Runtime runs our kernel, not the body (here an Identity, told apart by its
    output shape); without it, the body."""
    attrs = attributes(3)
    node = helper.make_node(KERNEL, ["x0"], ["y"], domain=DOMAIN, name="crf_node", **attrs)
    body = helper.make_function(DOMAIN, KERNEL, ["features"], ["K"],
                                [helper.make_node("Identity", ["features"], ["K"])],
                                [helper.make_opsetid("", 18)], attributes=list(attrs))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x0", F32, ["n", "d", "h", "w"])],
                              [helper.make_tensor_value_info("y", F32, None)])
    single_file = helper.make_model(graph, functions=[body], opset_imports=[
        helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)]).SerializeToString()
    features = np.random.default_rng(4).normal(size=(1, 2, 5, 6)).astype(np.float32)
    plain = ort.InferenceSession(single_file, providers=["CPUExecutionProvider"])
    assert plain.run(None, {"x0": features})[0].shape == (1, 2, 5, 6)
    ours = session(library, single_file).run(None, {"x0": features})[0]
    np.testing.assert_allclose(ours, brute_kernel(features, 3), rtol=1e-5, atol=1e-6)


def test_the_process_keeps_one_cpu_library_and_thread_pool(library):
    """The custom ops and the Python runtime (ctypes) share one libconvcrf_cpu, so one pool of
    worker threads: the library finds the copy beside it, which the package loads too."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs /proc/self/maps")
    assert _native.cpu_library() is not None
    run_op(library, "ConvCRFKernel", [np.ones((1, 2, 4, 4), np.float32)], 3)
    mapped = {line.split()[-1] for line in maps.read_text().splitlines()
              if line.rstrip().endswith(_native.library_filename("convcrf_cpu"))}
    assert len(mapped) == 1, mapped
