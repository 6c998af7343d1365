"""The torch-free native CRF executor (crf/native.py) and the ONNX Runtime
backend that runs it: it equals ConvCRF's fused path, and on exported files the graph's own
CRF (demo model; +C/+T with trained-looking parameters in the blurred mode), and falls back
to the graph's CRF, saying why, when it cannot run."""
from __future__ import annotations

import numpy as np
import pytest

from convcrf_deploy import CRFConfig
from convcrf_deploy._native import cpu_library
from convcrf_deploy.runtime import Segmenter
from convcrf_deploy.crf import native as native_crf
from convcrf_deploy.crf.native import NativeCRF, NativeCRFUnavailable
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
@pytest.mark.parametrize("mode", ["full", "blurred"])
@pytest.mark.parametrize("weight, iterations", [(0.5, 2), (1.0, 1), (0.8, 3)])
def test_native_crf_warm_start_equals_convcrf(mode, weight, iterations):
    """The warm start is the schedule's, so NativeCRF (runtime) and ConvCRF (its native and
    its differentiable executor) give the same warm-started result."""
    config = CRFConfig(num_classes=4, filter_size=5, blur=3, iterations=5,
                       intermediate_resolution=mode, compatibility="learned")
    crf = perturbed_crf(config, seed=3)
    logits, image = random_inputs(2, 4, 29, 34, seed=3)
    previous = torch.softmax(4 * torch.randn(2, 4, 29, 34), dim=1)
    options = {"initial_q_weight": weight, "iterations": iterations}
    with torch.inference_mode():
        fused = crf(logits, image, initial_q=previous, **options).numpy()
    differentiable = crf(logits.clone().requires_grad_(True), image, initial_q=previous,
                         **options).detach().numpy()
    got = NativeCRF(config, crf.state_dict(), threads=2)(
        logits.numpy(), image.numpy(), initial_q=previous.numpy(), **options)
    np.testing.assert_allclose(got, fused, atol=1e-5)
    np.testing.assert_allclose(got, differentiable, atol=1e-4)
    cold = NativeCRF(config, crf.state_dict())(logits.numpy(), image.numpy(),
                                               iterations=iterations)
    assert np.abs(got - cold).max() > 1e-3  # the start mattered


@needs_native
def test_native_crf_warm_start_arguments_are_checked():
    config = CRFConfig(num_classes=3, filter_size=3)
    crf = NativeCRF(config, perturbed_crf(config).state_dict())
    logits, image = (t.numpy() for t in random_inputs(1, 3, 6, 7))
    with pytest.raises(ValueError, match="initial_q must have the shape"):
        crf(logits, image, initial_q=np.ones((1, 3, 6, 6), np.float32))
    with pytest.raises(ValueError, match="initial_q_weight must be in 0..1"):
        crf(logits, image, initial_q=np.ones_like(logits) / 3, initial_q_weight=2.0)
    with pytest.raises(ValueError, match="initial_q contains NaN"):
        crf(logits, image, initial_q=np.full_like(logits, np.nan))
    with pytest.raises(ValueError, match="iterations must be an int >= 0"):
        crf(logits, image, iterations=-1)


def test_the_old_import_path_is_an_alias():
    from convcrf_deploy.runtime.backends import native_crf as alias

    assert alias.NativeCRF is NativeCRF and alias.NativeCRFUnavailable is NativeCRFUnavailable
    assert alias.argmax_classes is native_crf.argmax_classes
    assert alias.STATE_KEY == native_crf.STATE_KEY


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


# ---- warm start on the ONNX Runtime backend (issue 19) ------------------------------------------

def demo_clip(count, size=(48, 64)):
    from convcrf_deploy.runtime.streams import open_source

    return [frame.image for frame in open_source("demo", demo_size=size, demo_frames=count)]


@needs_native
def test_onnxruntime_warm_start_agrees_with_torch_over_a_demo_clip(demo_onnx):
    """The warm start is the schedule's on both backends: over 100 consecutive demo frames the
    ONNX Runtime (unary in ONNX Runtime, native CRF) and PyTorch labels agree."""
    frames = demo_clip(100)
    options = {"resize": "none", "warm_start": True, "warm_start_iterations": 2, "threads": 1}
    torch_path = Segmenter("demo", "torch", **options)
    onnx_path = Segmenter(str(demo_onnx), **options, return_probabilities=True)
    assert onnx_path.describe()["warm_start"] and onnx_path.describe()["crf_executor"] == "native"
    agree = total = 0
    for frame in frames:
        a, b = torch_path(frame).labels, onnx_path(frame)
        agree += int((a == b.labels).sum())
        total += a.size
    assert agree / total >= 0.999, f"labels agree on {agree / total:.4%} of pixels"
    # It was a warm start (2 iterations from the previous frame), not the full CRF.
    cold = Segmenter(str(demo_onnx), resize="none", threads=1, return_probabilities=True)
    assert np.abs(cold(frames[-1]).probabilities - b.probabilities).max() > 1e-3
    assert onnx_path.backend.warm_start.previous is not None
    onnx_path.reset()
    assert onnx_path.backend.warm_start.previous is None
    assert not onnx_path.backend.thread_safe  # one stream's state: calls are serialised


@needs_native
def test_convcrf_run_warm_starts_an_onnx_model(demo_onnx, tmp_path, capsys):
    import json

    from convcrf_deploy.cli.run import main

    stats = tmp_path / "stats.json"
    assert main(["--model", str(demo_onnx), "--warm-start", "--video", "demo", "--headless",
                 "--max-frames", "4", "--size", "64x48", "--threads", "1",
                 "--stats-json", str(stats)]) == 0
    data = json.loads(stats.read_text())
    assert data["backend"] == "onnxruntime" and data["warm_start"] is True
    assert data["crf_executor"] == "native" and data["frames"] == 4
    assert set(data["accuracy"]) == {"unary", "crf"}


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


# ---- the frame time split (issue 18 item 6) ---------------------------------------------------

@needs_native
@pytest.mark.parametrize("executor", ["native", "graph"])
def test_onnxruntime_times_unary_and_crf_apart_with_either_executor(demo_onnx, executor):
    segmenter = Segmenter(str(demo_onnx), resize="none", threads=1, crf_executor=executor)
    assert segmenter.describe()["crf_executor"] == executor
    frame = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    timings = segmenter(frame).timings
    assert {"unary", "crf"} <= set(timings)
    assert timings["inference"] >= timings["unary"] + timings["crf"] > 0
    segmenter.crf = False
    timings = segmenter(frame).timings
    assert "unary" in timings and "crf" not in timings


@needs_native
@pytest.mark.parametrize("executor", ["native", "graph"])
def test_stats_json_summary_and_hud_split_the_frame_time(demo_onnx, executor, tmp_path, capsys):
    import json

    import cv2

    from convcrf_deploy.cli.run import main

    stats, recording = tmp_path / "stats.json", tmp_path / "hud_%02d.png"
    assert main(["--video", "demo", "--model", str(demo_onnx), "--headless", "--max-frames",
                 "3", "--size", "64x48", "--threads", "1", "--crf-executor", executor,
                 "--stats-json", str(stats), "--save", str(recording)]) == 0
    out = capsys.readouterr().out
    assert f"CRF executor {executor}" in out
    assert "frame time" in out and "crf" in out.split("frame time")[1].split("\n")[0]
    data = json.loads(stats.read_text())
    assert data["crf_executor"] == executor
    assert {"preprocess", "unary", "crf", "postprocess"} <= set(data["stages_ms"])
    parts = data["frame_split"]["parts"]
    assert list(parts) == ["preprocess", "unary", "crf", "other", "postprocess"]
    assert parts["crf"]["percent"] > 0 and parts["unary"]["percent"] > 0
    assert sum(part["percent"] for part in parts.values()) == pytest.approx(100, abs=0.1)
    assert cv2.imread(str(tmp_path / "hud_02.png")) is not None  # the HUD was drawn


def test_hud_shows_unary_and_crf_time_when_the_backend_splits_them(tmp_path):
    from convcrf_deploy.runtime.video import RunReport, _hud_lines
    from convcrf_deploy.runtime.visualize import Renderer

    segmenter = Segmenter(str(write_toy_onnx(tmp_path / "toy.onnx")))
    report = RunReport(source="x")
    report.latency.add_all({"preprocess": 1.0, "inference": 20.0, "postprocess": 1.0})
    assert "inf 20.0" in _hud_lines(report, segmenter, Renderer([[0, 0, 0]]), live=False)[0]
    report = RunReport(source="x")
    report.latency.add_all({"preprocess": 1.0, "inference": 20.0, "unary": 12.0, "crf": 7.0,
                            "postprocess": 1.0})
    line = _hud_lines(report, segmenter, Renderer([[0, 0, 0]]), live=False)[0]
    assert "unary 12.0 crf 7.0" in line and "inf" not in line


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


@pytest.mark.parametrize("value", [np.nan, np.inf, 1e9, -1e9])
def test_every_backend_refuses_nan_and_huge_images(demo_onnx, value):
    """Second new-user trial: the graph's CRF returned label 0 and NaN probabilities for a NaN
    image, and ONNX Runtime took 1e9, where PyTorch (ConvCRF) refuses both."""
    from convcrf_deploy.runtime import create_backend
    from convcrf_deploy.runtime.backends.base import check_image_values
    from convcrf_deploy.serving.python_model import check_frames
    image = np.full((1, 3, 24, 32), 100, np.float32)
    image[0, 1, 3, 4] = value
    with pytest.raises(ValueError, match=r"finite RGB values in 0..255"):
        check_image_values(image)
    assert "finite RGB values" in check_frames(image, 10 ** 6)   # a Triton request
    backends = [create_backend(str(demo_onnx), crf_executor="graph"), create_backend("demo")]
    if cpu_library() is not None:
        backends.append(create_backend(str(demo_onnx), crf_executor="native"))
    for backend in backends:
        with pytest.raises(ValueError, match=r"finite RGB values in 0..255"):
            backend.infer({"image": image})
    finite = np.full((1, 3, 24, 32), 100, np.float32)
    assert backends[0].infer({"image": finite})["labels"].shape == (1, 24, 32)
