"""The torch-free native CRF executor (runtime/backends/native_crf.py) and the ONNX Runtime
backend that runs it: it equals ConvCRF's fused path, and on exported files the graph's own
CRF (demo model; +C/+T with trained-looking parameters in the blurred mode), and falls back
to the graph's CRF, saying why, when it cannot run."""
from __future__ import annotations

import numpy as np
import pytest

from convcrf_deploy import CRFConfig
from convcrf_deploy._native import cpu_library
from convcrf_deploy.runtime import Segmenter
from convcrf_deploy.runtime.backends import native_crf
from convcrf_deploy.runtime.backends.native_crf import NativeCRF, NativeCRFUnavailable
from convcrf_deploy.runtime.backends.onnxrt import OnnxRuntimeBackend
from convcrf_deploy.runtime.testing import write_toy_onnx

torch = pytest.importorskip("torch")
needs_native = pytest.mark.skipif(cpu_library() is None, reason="native library not built")


def perturbed_crf(config: CRFConfig, seed: int = 0):
    """A ConvCRF whose every parameter moved away from its initial value (as training does)."""
    from convcrf_deploy.model import ConvCRF

    torch.manual_seed(seed)
    crf = ConvCRF(config).eval()
    with torch.no_grad():
        for parameter in crf.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return crf


def random_inputs(n, c, h, w, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(n, c, h, w, generator=generator),
            255 * torch.rand(n, 3, h, w, generator=generator))


# ---- NativeCRF == ConvCRF -----------------------------------------------------------------------

@needs_native
@pytest.mark.parametrize("mode", ["full", "blurred"])
@pytest.mark.parametrize("extras", [{}, {"compatibility": "learned"}, {"learned_features": True},
                                    {"compatibility": "learned", "learned_features": True}])
@pytest.mark.parametrize("blur, size", [(3, (37, 50)), (1, (9, 13)), (4, (5, 3))])
def test_native_crf_equals_convcrf(mode, extras, blur, size):
    config = CRFConfig(num_classes=6, filter_size=5, blur=blur, iterations=3,
                       intermediate_resolution=mode, **extras)
    crf = perturbed_crf(config)
    logits, image = random_inputs(2, 6, *size)
    with torch.inference_mode():
        expected = crf(logits, image).numpy()
    got = NativeCRF(config, crf.state_dict(), threads=2)(logits.numpy(), image.numpy())
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_array_equal(native_crf.argmax_classes(got), expected.argmax(1))


@needs_native
def test_native_crf_zero_iterations_is_the_softmax():
    config = CRFConfig(num_classes=3, iterations=0)
    logits, image = random_inputs(1, 3, 6, 7)
    got = NativeCRF(config, perturbed_crf(config).state_dict())(logits.numpy(), image.numpy())
    np.testing.assert_allclose(got, torch.softmax(logits, 1).numpy(), atol=1e-6)


@needs_native
def test_native_crf_bad_input_and_parameters_are_clear_errors():
    config = CRFConfig(num_classes=3, filter_size=3)
    state = perturbed_crf(config).state_dict()
    crf = NativeCRF(config, state)
    logits, image = (t.numpy() for t in random_inputs(1, 3, 6, 7))
    with pytest.raises(ValueError, match=r"logits must be float32 \[N, 3, H, W\]"):
        crf(logits[:, :2], image)
    with pytest.raises(ValueError, match=r"image must be float32 \[N, 3, H, W\]"):
        crf(logits, image[:, :, :5])
    logits[0, 1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        crf(logits, image)
    with pytest.raises(NativeCRFUnavailable, match="compatibility.weight"):
        NativeCRF(config.replace(compatibility="learned"), state)


def test_argmax_classes_takes_the_first_of_ties():
    x = np.array([[[[1.0, 2.0]], [[1.0, 3.0]], [[0.5, 3.0]]]], np.float32)  # [1, 3, 1, 2]
    np.testing.assert_array_equal(native_crf.argmax_classes(x), [[[0, 1]]])


# ---- exported files: native == the graph's CRF --------------------------------------------------

def export(model, path):
    pytest.importorskip("onnxscript")
    from convcrf_deploy.export import export_onnx

    export_onnx(model, path, verify=False)
    return path


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory):
    return export("demo", tmp_path_factory.mktemp("native") / "demo.onnx")


@pytest.fixture(scope="module")
def learned_blurred_onnx(tmp_path_factory):
    """+C and +T, fast (blurred) mode, parameters away from their initial values."""
    from convcrf_deploy.metadata import ModelMetadata
    from convcrf_deploy.model import FastFCN, SegmentationModel

    config = CRFConfig(num_classes=4, filter_size=5, blur=2, iterations=3,
                       compatibility="learned", learned_features=True,
                       intermediate_resolution="blurred")
    crf = perturbed_crf(config, seed=1)
    torch.manual_seed(1)
    model = SegmentationModel(FastFCN(4, width=8), crf, ModelMetadata.for_classes("abcd")).eval()
    return export(model, tmp_path_factory.mktemp("native") / "learned.onnx")


def random_image(n, h, w, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, 3, h, w)).astype(np.float32)


@needs_native
@pytest.mark.parametrize("model", ["demo_onnx", "learned_blurred_onnx"])
def test_onnxruntime_native_crf_equals_the_graphs_crf(model, request):
    path = request.getfixturevalue(model)
    native = OnnxRuntimeBackend(path, threads=2)
    graph = OnnxRuntimeBackend(path, threads=2, crf_executor="graph")
    assert native.describe()["crf_executor"] == "native"
    assert graph.describe()["crf_executor"] == "graph"
    image = random_image(2, 53, 71)
    got, expected = native.infer({"image": image}), graph.infer({"image": image})
    assert set(got) == set(expected) == {"probabilities", "labels", "unary_labels"}
    np.testing.assert_allclose(got["probabilities"], expected["probabilities"], atol=1e-4)
    for name in ("labels", "unary_labels"):
        assert got[name].dtype == np.int64
        np.testing.assert_array_equal(got[name], expected[name])
    # The stages split exactly what infer runs.
    logits = native.infer_unary(image)
    np.testing.assert_array_equal(native.infer_crf(logits, image), got["probabilities"])
    np.testing.assert_allclose(graph.infer_crf(logits, image), expected["probabilities"],
                               atol=1e-5)


@needs_native
def test_onnxruntime_crf_off_runs_the_unary_only(demo_onnx):
    backend = OnnxRuntimeBackend(demo_onnx, threads=1)
    image = random_image(1, 40, 56)
    with_crf = backend.infer({"image": image})
    backend.crf_enabled = False
    without = backend.infer({"image": image})
    np.testing.assert_array_equal(without["labels"], with_crf["unary_labels"])
    np.testing.assert_allclose(without["probabilities"].sum(1), 1.0, atol=1e-5)
    segmenter = Segmenter(OnnxRuntimeBackend(demo_onnx, threads=1), crf=False)
    result = segmenter(np.zeros((40, 56, 3), np.uint8))
    assert not result.crf and not segmenter.describe()["crf"]


def test_fallback_to_the_graph_when_the_library_is_missing(demo_onnx, monkeypatch):
    monkeypatch.setattr(native_crf, "library_available", lambda: False)
    backend = OnnxRuntimeBackend(demo_onnx, threads=1)
    described = Segmenter(backend).describe()
    assert described["crf_executor"] == "graph" and described["crf"]
    assert "libconvcrf_cpu is not built" in described["crf_executor_detail"]
    assert backend.infer({"image": random_image(1, 24, 32)})["probabilities"].shape == \
        (1, 5, 24, 32)
    with pytest.raises(ValueError, match="native CRF cannot run.*not built"):
        OnnxRuntimeBackend(demo_onnx, crf_executor="native")


def test_fallback_to_the_graph_when_the_file_lacks_the_parameters(tmp_path):
    path = write_toy_onnx(tmp_path / "toy.onnx")  # records a CRF config but no parameters
    described = OnnxRuntimeBackend(path).describe()
    assert described["crf_executor"] == "graph"
    assert "re-export" in described["crf_executor_detail"]
    with pytest.raises(ValueError, match="crf_executor must be one of"):
        OnnxRuntimeBackend(path, crf_executor="fast")


@needs_native
def test_run_summary_and_stats_json_name_the_crf_executor(demo_onnx, tmp_path, capsys):
    import json

    from convcrf_deploy.cli.run import main

    stats = tmp_path / "stats.json"
    assert main(["--video", "demo", "--model", str(demo_onnx), "--headless", "--max-frames",
                 "2", "--size", "64x48", "--threads", "1", "--stats-json", str(stats)]) == 0
    assert "CRF executor native" in capsys.readouterr().out
    data = json.loads(stats.read_text())
    assert data["crf_executor"] == "native" and "libconvcrf_cpu" in data["crf_executor_detail"]


def test_hud_names_the_crf_executor(tmp_path):
    from convcrf_deploy.runtime.video import RunReport, _hud_lines
    from convcrf_deploy.runtime.visualize import Renderer

    segmenter = Segmenter(str(write_toy_onnx(tmp_path / "toy.onnx")))
    lines = _hud_lines(RunReport(source="x"), segmenter, Renderer([[0, 0, 0]]), live=False)
    assert "CRF on (graph)" in lines[1]


def edited_copy(path, tmp_path, edit):
    import json

    import onnx

    from convcrf_deploy.exported_model import DIGEST_KEY

    # The file digest covers convcrf.crf_state (tests/test_export_safety.py). Without the
    # digest entry (an edit made on purpose, or a file from an older export) the native
    # executor's own check against the graph must still refuse parameters that disagree.
    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != DIGEST_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for prop in model.metadata_props:
        if prop.key == native_crf.STATE_KEY:
            prop.value = edit(json.loads(prop.value), prop.value)
    out = tmp_path / "edited.onnx"
    onnx.save(model, str(out))
    return out


@needs_native
def test_parameters_that_disagree_with_the_graph_are_refused(demo_onnx, tmp_path):
    import json

    def edit(state, _):
        state["appearance_weight"] = state["appearance_weight"] * 3
        return json.dumps(state)
    with pytest.raises(ValueError, match="disagree with its graph.*re-export"):
        OnnxRuntimeBackend(edited_copy(demo_onnx, tmp_path, edit))


@needs_native
def test_damaged_parameters_are_refused(demo_onnx, tmp_path):
    damaged = edited_copy(demo_onnx, tmp_path, lambda state, text: text[: len(text) // 2])
    with pytest.raises(ValueError, match="convcrf.crf_state.*damaged"):
        OnnxRuntimeBackend(damaged)


@needs_native
@pytest.mark.parametrize("options", [{"fp16": True}, {"static": True, "height": 48, "width": 64}])
def test_fp16_and_static_exports_run_the_native_crf(options, tmp_path):
    # Field report: fp16 exports were refused as "edited or damaged" (the load-time check
    # compared an fp16 graph with the fp32 native CRF at 1e-4), and static exports failed
    # with a traceback (the check fed a 19x23 image to a graph fixed at another size).
    from convcrf_deploy.export import export_onnx
    from convcrf_deploy.metadata import ModelMetadata
    from convcrf_deploy.model import FastFCN, SegmentationModel

    torch.manual_seed(2)
    config = CRFConfig(num_classes=3, filter_size=5, blur=2, iterations=3)
    model = SegmentationModel(FastFCN(3, width=8), perturbed_crf(config, seed=2),
                              ModelMetadata.for_classes("abc")).eval()
    path = tmp_path / "model.onnx"
    export_onnx(model, path, verify=False, **options)
    native = OnnxRuntimeBackend(path, threads=1)
    assert native.describe()["crf_executor"] == "native"
    graph = OnnxRuntimeBackend(path, threads=1, crf_executor="graph")
    image = random_image(1, 48, 64)
    got, expected = native.infer({"image": image}), graph.infer({"image": image})
    difference = np.abs(got["probabilities"] - expected["probabilities"].astype(np.float32))
    assert difference.mean() < (2e-3 if options.get("fp16") else 1e-5)
