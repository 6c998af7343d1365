"""The ONNX Runtime backend with the custom-op library libconvcrf_ort_ops (issue 20, item 2).

The backend registers the library with its sessions, so the plugin flavour runs in ONNX
Runtime like the others; describe() and the run stats say what ran the CRF; the single-file
flavour's ConvCRF nodes run on our kernels once the library is registered (ONNX Runtime's
profile shows them as nodes; without the library they are inlined into standard ops); a
plugin-flavour file without the library is refused with a message naming the library and how to
register it.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from convcrf_deploy import _native
from convcrf_deploy.runtime import BackendUnavailableError, Segmenter
from convcrf_deploy.runtime.backends.onnxrt import OnnxRuntimeBackend
from convcrf_deploy.runtime.backends.onnxrt.loader import SessionLoader

pytest.importorskip("torch")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

try:
    LIBRARY = _native.ort_ops_library()
except _native.NativeError:
    LIBRARY = None
needs_library = pytest.mark.skipif(LIBRARY is None, reason="libconvcrf_ort_ops not built")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """The demo model in the plugin and single-file flavours (one trace, two exports)."""
    from convcrf_deploy.export import export_onnx

    folder = tmp_path_factory.mktemp("flavours")
    return {flavor: export_onnx("demo", folder / f"demo.{flavor}.onnx", flavor=flavor,
                                verify=False).path
            for flavor in ("plugin", "single-file")}


def random_image(n=1, h=45, w=58, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, 3, h, w)).astype(np.float32)


@needs_library
def test_the_plugin_flavour_runs_in_onnx_runtime_with_either_crf_executor(exports):
    native = OnnxRuntimeBackend(exports["plugin"], threads=2)
    graph = OnnxRuntimeBackend(exports["plugin"], threads=2, crf_executor="graph")
    for backend in (native, graph):
        assert backend.describe()["custom_ops_library"] == LIBRARY
        assert backend.describe()["flavor"] == "plugin"
    assert native.describe()["crf_executor"] == "native"
    described = graph.describe()
    assert described["crf_executor"] == "graph"
    assert "ConvCRF nodes on libconvcrf_ort_ops" in described["crf_executor_detail"]
    image = random_image(2)
    got, expected = graph.infer({"image": image}), native.infer({"image": image})
    np.testing.assert_allclose(got["probabilities"], expected["probabilities"], atol=1e-4)
    np.testing.assert_array_equal(got["labels"], expected["labels"])
    # The CRF stage alone, on a session of the graph's CRF part (which has the custom nodes).
    logits = graph.infer_unary(image)
    np.testing.assert_allclose(graph.infer_crf(logits, image), expected["probabilities"],
                               atol=1e-4)


def _profiled_op_types(loader: SessionLoader, path, image) -> set[str]:
    options = loader.session_options()
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(["labels"], {"image": image})
    with open(session.end_profiling()) as profile:
        events = json.load(profile)
    return {e["args"]["op_name"] for e in events if e.get("cat") == "Node" and "op_name" in e.get("args", {})}


@needs_library
def test_the_single_file_flavours_crf_nodes_run_our_kernels_once_registered(exports, tmp_path):
    """Documented in docs/onnxruntime.md ("What runs where"): a registered kernel takes
    precedence over a node's model-local function body."""
    path = tmp_path / "single.onnx"
    path.write_bytes(exports["single-file"].read_bytes())
    image = random_image()
    with_library = _profiled_op_types(SessionLoader(path, threads=1), path, image)
    assert {"ConvCRFKernel", "ConvCRFMessagePassing"} <= with_library
    without = _profiled_op_types(SessionLoader(path, threads=1, custom_ops=False), path, image)
    assert not {"ConvCRFKernel", "ConvCRFMessagePassing"} & without
    assert {"Slice", "ReduceSum"} <= without          # the inlined function bodies
    ours = OnnxRuntimeBackend(path, threads=1, crf_executor="graph")
    bodies = OnnxRuntimeBackend(path, threads=1, crf_executor="graph", custom_ops=False)
    assert "on libconvcrf_ort_ops" in ours.describe()["crf_executor_detail"]
    assert "function bodies: custom_ops=False" in bodies.describe()["crf_executor_detail"]
    np.testing.assert_allclose(ours.infer({"image": image})["probabilities"],
                               bodies.infer({"image": image})["probabilities"], atol=1e-4)


def test_a_plugin_flavour_file_without_the_library_names_it_and_how_to_register_it(
        exports, tmp_path, monkeypatch):
    monkeypatch.delenv(_native.ORT_OPS_ENV, raising=False)
    monkeypatch.setattr(_native, "LIB_DIR", tmp_path)   # an installation without the library
    monkeypatch.setattr(_native, "library_dirs", lambda: [tmp_path])
    with pytest.raises(BackendUnavailableError) as caught:
        OnnxRuntimeBackend(exports["plugin"])
    message = str(caught.value)
    for words in ("'plugin'-flavour export", "libconvcrf_ort_ops", "is not installed",
                  "ONNXRUNTIME_INCLUDE_DIR", "register_custom_ops_library(convcrf_deploy.ort_ops_library())",
                  "--flavor single-file"):
        assert words in message, (words, message)
    # The single-file flavour still runs, on its function bodies, and says so.
    described = OnnxRuntimeBackend(exports["single-file"], crf_executor="graph").describe()
    assert described["custom_ops_library"] is None
    assert "function bodies: libconvcrf_ort_ops.so is not installed" in described["crf_executor_detail"]


def test_a_named_library_that_is_not_a_file_is_refused(exports, tmp_path):
    with pytest.raises(ValueError, match="custom_ops=.*is not a file"):
        OnnxRuntimeBackend(exports["plugin"], custom_ops=tmp_path / "nothing.so")


@needs_library
def test_convcrf_run_on_the_plugin_flavour_names_the_crf_executor(exports, tmp_path, capsys):
    from convcrf_deploy.cli.run import main

    stats = tmp_path / "stats.json"
    assert main(["--video", "demo", "--model", str(exports["plugin"]), "--headless",
                 "--max-frames", "2", "--size", "64x48", "--threads", "1",
                 "--stats-json", str(stats)]) == 0
    assert "CRF executor native" in capsys.readouterr().out
    data = json.loads(stats.read_text())
    assert data["crf_executor"] == "native"
    result = Segmenter(str(exports["plugin"]), threads=1)(np.zeros((48, 64, 3), np.uint8))
    assert result.labels.shape == (48, 64)
