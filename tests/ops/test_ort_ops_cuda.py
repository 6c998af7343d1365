"""libconvcrf_ort_ops_cuda on ONNX Runtime's CUDA execution provider (issue 20, item 6).

Runs only where onnxruntime-gpu sees a GPU and the CUDA variant was built (scripts/gpu_check.sh
runs it there); skips everywhere else, e.g. in CI. Both ops on the CUDA execution provider
(ONNX Runtime's profile says which provider ran each node) against the CPU library's results on
the CPU execution provider: fp32 and fp16, odd sizes, images smaller than the window, batch 2,
1 and 21 classes, k = 3..13, sizes changing between runs.

Uses only the part of pytest that scripts/gpu_check.py's stand-in runner provides.
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from convcrf_deploy import _native  # noqa: E402

CUDA_EP = "CUDAExecutionProvider"
pytestmark = pytest.mark.skipif(CUDA_EP not in ort.get_available_providers(),
                                reason="onnxruntime has no CUDA execution provider (onnxruntime-gpu)")
TYPES = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}


def _library(cuda: bool) -> str:
    try:
        return _native.ort_ops_library(cuda=cuda)
    except _native.NativeError as exc:
        if cuda and os.environ.get("CONVCRF_REQUIRE_NATIVE") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def _model(k: int, elem_type: int) -> bytes:
    """features -> ConvCRFKernel -> K; (q, K) -> ConvCRFMessagePassing -> M."""
    attrs = {"filter_size": k, "plugin_version": "1", "plugin_namespace": ""}
    nodes = [helper.make_node("ConvCRFKernel", ["features"], ["K"], domain="trt.plugins",
                              name="kernel_node", **attrs),
             helper.make_node("ConvCRFMessagePassing", ["q", "K"], ["M"], domain="trt.plugins",
                              name="message_passing_node", **attrs)]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("features", elem_type, ["n", "d", "h", "w"]),
         helper.make_tensor_value_info("q", elem_type, ["n", "c", "h", "w"])],
        [helper.make_tensor_value_info("M", elem_type, None),
         helper.make_tensor_value_info("K", elem_type, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                   helper.make_opsetid("trt.plugins", 1)]).SerializeToString()


def _session(model: bytes, cuda: bool, profile_dir: str | None = None):
    options = ort.SessionOptions()
    options.register_custom_ops_library(_library(cuda))
    if profile_dir:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(profile_dir, "ort_ops")
    providers = [CUDA_EP, "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    return ort.InferenceSession(model, options, providers=providers)


CASES = [(2, 5, 13, 17, 7, 21), (1, 3, 2, 9, 5, 1), (2, 2, 11, 3, 13, 4), (1, 5, 61, 83, 3, 21),
         (2, 5, 48, 64, 11, 21), (1, 5, 37, 50, 9, 2)]


@pytest.mark.parametrize("n,d,h,w,k,c", CASES)
def test_both_ops_on_the_cuda_provider_match_the_cpu_library(n, d, h, w, k, c):
    rng = np.random.default_rng(h * w + k)
    for dtype in (np.float32, np.float16):
        features = rng.normal(size=(n, d, h, w)).astype(dtype)
        q = rng.random((n, c, h, w)).astype(dtype)
        model = _model(k, TYPES[dtype])
        with tempfile.TemporaryDirectory() as folder:
            gpu = _session(model, cuda=True, profile_dir=folder)
            m_gpu, k_gpu = gpu.run(None, {"features": features, "q": q})
            with open(gpu.end_profiling()) as profile:
                events = json.load(profile)
        providers = {e["args"]["op_name"]: e["args"].get("provider") for e in events
                     if e.get("cat") == "Node" and "op_name" in e.get("args", {})}
        for op in ("ConvCRFKernel", "ConvCRFMessagePassing"):
            assert providers.get(op) == CUDA_EP, f"{op} ran on {providers.get(op)}, not {CUDA_EP}"
        m_cpu, k_cpu = _session(model, cuda=False).run(None, {"features": features, "q": q})
        assert m_gpu.dtype == dtype and m_gpu.shape == (n, c, h, w) and k_gpu.shape == (n, k * k, h, w)
        tol = 1e-4 if dtype == np.float32 else 4e-3
        np.testing.assert_allclose(k_gpu.astype(np.float32), k_cpu.astype(np.float32), rtol=tol, atol=tol)
        np.testing.assert_allclose(m_gpu.astype(np.float32), m_cpu.astype(np.float32), rtol=tol,
                                   atol=tol * max(1.0, float(np.abs(m_cpu.astype(np.float32)).max())))


def test_one_cuda_session_takes_any_batch_and_size():
    session = _session(_model(7, TensorProto.FLOAT), cuda=True)
    reference = _session(_model(7, TensorProto.FLOAT), cuda=False)
    rng = np.random.default_rng(5)
    for n, h, w in ((1, 8, 8), (3, 19, 5), (2, 120, 160), (1, 4, 31)):
        feeds = {"features": rng.normal(size=(n, 5, h, w)).astype(np.float32),
                 "q": rng.random((n, 21, h, w)).astype(np.float32)}
        got, want = session.run(None, feeds), reference.run(None, feeds)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
