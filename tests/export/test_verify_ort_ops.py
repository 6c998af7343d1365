"""Export verification of the plugin flavour in ONNX Runtime with libconvcrf_ort_ops (issue 20,
item 3): seconds and bounded memory instead of the reference evaluator's minutes; where the
library is not installed, the standard-op function bodies run in ONNX Runtime (issue 18 item 5;
the reference evaluator stays available with runtime="reference")."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from convcrf_deploy import CRFConfig, _native
from convcrf_deploy.export import export_onnx
from convcrf_deploy.export.verify import run_graph

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

try:
    _native.ort_ops_library()
    HAVE_LIBRARY = True
except _native.NativeError:
    HAVE_LIBRARY = False
needs_library = pytest.mark.skipif(not HAVE_LIBRARY, reason="libconvcrf_ort_ops not built")

CONFIG = CRFConfig(num_classes=3, filter_size=5, blur=2, iterations=2)


@pytest.fixture(scope="module")
def crf():
    from convcrf_deploy.model import ConvCRF

    torch.manual_seed(0)
    return ConvCRF(CONFIG).eval()


@pytest.fixture(scope="module")
def plugin_export(crf, tmp_path_factory):
    return export_onnx(crf, tmp_path_factory.mktemp("verify") / "crf.plugin.onnx", flavor="plugin",
                       part="crf", verify=False).path


def feeds(batch=2, height=37, width=50, seed=0):
    rng = np.random.default_rng(seed)
    return {"logits": (3 * rng.standard_normal((batch, 3, height, width))).astype(np.float32),
            "image": rng.uniform(0, 255, (batch, 3, height, width)).astype(np.float32)}


@needs_library
def test_plugin_exports_are_verified_in_onnx_runtime_with_the_custom_ops(crf, tmp_path):
    report = export_onnx(crf, tmp_path / "crf.onnx", flavor="plugin", part="crf")
    assert report.ok, report.summary()
    assert report.verification.backend.startswith("ONNX Runtime")
    assert report.verification.backend.endswith("+ libconvcrf_ort_ops")


@needs_library
def test_fp16_plugin_export_of_the_demo_is_verified_at_480x640_in_onnx_runtime(tmp_path):
    """The case that took the reference evaluator 295 s and 2.6 GB (batch 2 at 480x640);
    ONNX Runtime with the custom ops: 1.4 s (docs/onnxruntime.md)."""
    report = export_onnx("demo", tmp_path / "demo16.onnx", flavor="plugin", fp16=True)
    assert report.ok, report.summary()
    assert report.verification.size == (480, 640) and report.verification.batch == 2
    assert report.verification.backend.endswith("+ libconvcrf_ort_ops")


@needs_library
def test_onnx_runtime_with_the_custom_ops_equals_the_reference_evaluator(plugin_export):
    model = onnx.load(str(plugin_export))
    inputs = feeds()
    backend, (ort_probabilities, ort_labels) = run_graph(model, inputs, "plugin")
    assert "libconvcrf_ort_ops" in backend
    reference, (ref_probabilities, ref_labels) = run_graph(model, inputs, "plugin", runtime="reference")
    assert reference.startswith("onnx.reference")
    np.testing.assert_allclose(ort_probabilities, ref_probabilities, atol=1e-5)
    np.testing.assert_array_equal(ort_labels, ref_labels)


def test_without_the_library_the_function_bodies_run_in_onnx_runtime(plugin_export, tmp_path,
                                                                     monkeypatch):
    """Not the reference evaluator any more (minutes, and OOM-killed above 23 GB on a
    DeepLabV3+ at 256x320): the single-file flavour's function bodies grafted on, in ORT."""
    monkeypatch.delenv(_native.ORT_OPS_ENV, raising=False)
    monkeypatch.setattr(_native, "LIB_DIR", tmp_path)
    monkeypatch.setattr(_native, "library_dirs", lambda: [tmp_path])
    model = onnx.load(str(plugin_export))
    backend, (probabilities, _) = run_graph(model, feeds(1, 9, 11), "plugin")
    assert backend.startswith("ONNX Runtime") and "function bodies" in backend
    assert probabilities.shape == (1, 3, 9, 11)
    with pytest.raises(_native.NativeError, match="libconvcrf_ort_ops.so is not installed"):
        run_graph(model, feeds(1, 9, 11), "plugin", runtime="onnxruntime")
    reference, _ = run_graph(model, feeds(1, 9, 11), "plugin", runtime="reference")
    assert reference.startswith("onnx.reference")
