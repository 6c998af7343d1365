"""Runtime backends: the registry, OnnxRuntimeBackend and TorchBackend (incl. warm start)."""
from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
from onnx import helper

from convcrf_deploy.exported_model import seal
from convcrf_deploy.metadata import ModelMetadata
from convcrf_deploy.runtime import BackendUnavailableError, create_backend
from convcrf_deploy.runtime.backends import backend_name_for
from convcrf_deploy.runtime.backends.onnxrt import OnnxRuntimeBackend
from convcrf_deploy.runtime.testing import write_toy_onnx

CLASSES = ("background", "disc", "box", "triangle", "star")


@pytest.fixture
def toy_onnx(tmp_path):
    return write_toy_onnx(tmp_path / "toy.onnx", CLASSES, input_size=(48, 64), resize="stretch")


def random_image(n=1, h=24, w=32, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, 3, h, w)).astype(np.float32)


# -- registry -----------------------------------------------------------------------------------

@pytest.mark.parametrize("model, expected", [
    ("m.onnx", "onnxruntime"), ("M.ONNX", "onnxruntime"), ("m.engine", "tensorrt"),
    ("m.plan", "tensorrt"), ("m.pt", "torch"), ("m.pth", "torch"), ("demo", "torch")])
def test_backend_is_chosen_from_the_file_type(model, expected):
    assert backend_name_for(model) == expected


def test_explicit_backend_names_and_aliases_win():
    assert backend_name_for("m.onnx", "torch") == "torch"
    assert backend_name_for("m.pt", "ort") == "onnxruntime"
    assert backend_name_for("m.bin", "trt") == "tensorrt"


def test_unknown_backend_or_suffix_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backend 'tflite'"):
        backend_name_for("m.onnx", "tflite")
    with pytest.raises(ValueError, match=r"cannot tell which backend.*convcrf-run --backend, "
                                         r"Segmenter\(backend=\.\.\.\)"):
        backend_name_for("model.bin")


def test_a_folder_given_as_the_model_is_named(tmp_path):
    # New-user trial: "cannot tell which backend runs 'emptydir' from its suffix ... pass
    # backend=" (the API's argument, not the command's).
    folder = tmp_path / "emptydir"
    folder.mkdir()
    with pytest.raises(ValueError, match="'.*emptydir' is a folder, not a model file"):
        backend_name_for(str(folder))


def test_missing_model_file_is_reported_before_loading(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_backend(tmp_path / "absent.onnx")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None,
                    reason="TensorRT is installed here")
def test_tensorrt_backend_without_tensorrt_names_the_extra(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0" * 16)
    with pytest.raises(BackendUnavailableError, match=r"convcrf-deploy\[tensorrt\]"):
        create_backend(engine)


# -- ONNX Runtime -------------------------------------------------------------------------------

def test_onnxruntime_backend_outputs_follow_the_interface(toy_onnx):
    backend = create_backend(toy_onnx)
    assert isinstance(backend, OnnxRuntimeBackend) and backend.name == "onnxruntime"
    assert backend.metadata == ModelMetadata(list(CLASSES), input_size=(48, 64), resize="stretch")
    with backend:
        out = backend.infer({"image": random_image(n=2, h=24, w=40)})
    assert set(out) == {"probabilities", "labels", "unary_labels"}
    assert out["probabilities"].shape == (2, 5, 24, 40) and out["probabilities"].dtype == np.float32
    assert out["labels"].shape == (2, 24, 40) and out["labels"].dtype == np.int64
    np.testing.assert_allclose(out["probabilities"].sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out["labels"], out["probabilities"].argmax(1))
    assert backend.last_inference_time is not None and backend.last_inference_time > 0


def test_onnxruntime_backend_rejects_bad_input(toy_onnx):
    backend = OnnxRuntimeBackend(toy_onnx)
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        backend.infer({"image": np.zeros((1, 24, 32, 3), np.float32)})
    with pytest.raises(ValueError, match="feed must contain 'image'"):
        backend.infer({"input": random_image()})


def test_unavailable_provider_names_the_gpu_extra(toy_onnx):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA provider is available here")
    with pytest.raises(BackendUnavailableError, match=r"convcrf-deploy\[gpu\]"):
        OnnxRuntimeBackend(toy_onnx, providers=("cuda", "cpu"))
    with pytest.raises(ValueError, match="providers must be"):
        OnnxRuntimeBackend(toy_onnx, providers=("gpu",))


def test_plugin_flavour_graph_without_the_custom_ops_says_what_to_do(toy_onnx, tmp_path):
    model = onnx.load(str(toy_onnx))
    # A ConvCRF node in the plugin domain without a local function body: it needs our
    # custom-op library in ONNX Runtime (tests/runtime/backends/test_onnxrt_custom_ops.py).
    model.graph.node.append(helper.make_node("ConvCRFKernel", ["scaled"], ["kernel"],
                                             domain="trt.plugins", filter_size=5))
    model.opset_import.append(helper.make_opsetid("trt.plugins", 1))
    for prop in model.metadata_props:
        if prop.key == "convcrf.flavor":
            prop.value = "plugin"
    seal(model)                     # edited on purpose: sealed again
    path = tmp_path / "plugin.onnx"
    onnx.save(model, str(path))
    with pytest.raises(BackendUnavailableError,
                       match="libconvcrf_ort_ops.*register_custom_ops_library.*single-file"):
        OnnxRuntimeBackend(path, custom_ops=False)


def test_graph_without_crf_config_is_known_to_have_no_crf(toy_onnx, tmp_path):
    from convcrf_deploy.metadata import ONNX_KEYS
    from convcrf_deploy.runtime import Segmenter

    assert OnnxRuntimeBackend(toy_onnx).has_crf
    model = onnx.load(str(toy_onnx))
    kept = [p for p in model.metadata_props if p.key != ONNX_KEYS["crf_config"]]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    seal(model)
    path = tmp_path / "unary_only.onnx"
    onnx.save(model, str(path))
    backend = OnnxRuntimeBackend(path)
    assert not backend.has_crf
    assert not Segmenter(backend)(np.zeros((8, 8, 3), np.uint8)).crf


def test_onnx_file_without_convcrf_metadata_is_rejected(toy_onnx, tmp_path):
    model = onnx.load(str(toy_onnx))
    del model.metadata_props[:]
    path = tmp_path / "bare.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ValueError, match="exported by convcrf-export"):
        OnnxRuntimeBackend(path)


# -- PyTorch ----------------------------------------------------------------------------------

@pytest.fixture
def torch_model():
    torch = pytest.importorskip("torch")
    from convcrf_deploy import CRFConfig
    from convcrf_deploy.model import ConvCRF, FastFCN, SegmentationModel

    torch.manual_seed(0)
    crf = ConvCRF(CRFConfig(num_classes=5, filter_size=5, iterations=3))
    return SegmentationModel(FastFCN(5), crf, ModelMetadata(list(CLASSES))).eval()


def test_torch_backend_runs_the_crf_and_reports_the_unary(torch_model):
    import torch

    backend = create_backend(torch_model)
    image = random_image()
    out = backend.infer({"image": image})
    with torch.no_grad():
        x = torch.from_numpy(image)
        expected = torch_model(x).numpy()
        unary = torch_model.forward_unary(x).argmax(1).numpy()
    assert backend.name == "torch"
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5)
    np.testing.assert_array_equal(out["unary_labels"], unary)
    np.testing.assert_array_equal(out["labels"], out["probabilities"].argmax(1))


def test_torch_backend_without_crf_returns_the_unary_softmax(torch_model):
    import torch

    backend = create_backend(torch_model, crf=False)
    image = random_image(seed=1)
    out = backend.infer({"image": image})
    with torch.no_grad():
        expected = torch.softmax(torch_model.forward_unary(torch.from_numpy(image)), 1).numpy()
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-6)
    np.testing.assert_array_equal(out["labels"], out["unary_labels"])


def test_warm_start_follows_the_convcrf_update_rule(torch_model):
    """With mix 0 and the configured iterations, a warm-started frame must equal the full CRF
    (same update rule, Q0 = softmax of the unary); with mix 1 it must differ."""
    import torch

    from convcrf_deploy.runtime.backends.torch import WarmStartMeanField

    crf = torch_model.crf
    logits = torch.randn(1, 5, 24, 32)
    image = torch.from_numpy(random_image(seed=2))
    with torch.no_grad():
        cold = crf(logits, image)
        same_rule = WarmStartMeanField(crf, iterations=crf.config.iterations, mix=0.0)
        same_rule.previous = torch.full_like(cold, 0.2)
        np.testing.assert_allclose(same_rule(logits, image).numpy(), cold.numpy(), atol=1e-5)
        warm = WarmStartMeanField(crf, iterations=1, mix=1.0)
        first = warm(logits, image)  # no previous frame: the full CRF
        np.testing.assert_allclose(first.numpy(), cold.numpy(), atol=1e-6)
        second = warm(logits, image)
        assert second.shape == cold.shape
        np.testing.assert_allclose(second.sum(1).numpy(), 1.0, atol=1e-5)
        assert not np.allclose(second.numpy(), torch.softmax(logits, 1).numpy(), atol=1e-3)
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        WarmStartMeanField(crf, iterations=0)


def test_torch_backend_warm_start_resets_on_size_change(torch_model):
    backend = create_backend(torch_model, warm_start=True, warm_start_iterations=1)
    backend.infer({"image": random_image(h=24, w=32)})
    assert backend.warm_start.previous is not None
    out = backend.infer({"image": random_image(h=16, w=20)})
    assert out["labels"].shape == (1, 16, 20)
    assert tuple(backend.warm_start.previous.shape[-2:]) == (16, 20)
    backend.deactivate()
    assert backend.warm_start.previous is None


def test_backends_say_whether_calls_may_run_concurrently(torch_model):
    from convcrf_deploy.runtime.backends.torch import TorchBackend
    from convcrf_deploy.runtime.backends.trt import TensorRTBackend

    assert TorchBackend(torch_model).thread_safe
    # The warm start carries one stream's previous frame: its calls are serialised.
    assert not TorchBackend(torch_model, warm_start=True).thread_safe
    assert TensorRTBackend.thread_safe is False  # one execution context and buffer pool
    assert OnnxRuntimeBackend.thread_safe


def test_torch_backend_stages_compose_to_infer(torch_model):
    from convcrf_deploy.runtime.backends.torch import TorchBackend

    backend = TorchBackend(torch_model)
    image = random_image(n=2, h=20, w=28)
    assert backend.stages == ("unary", "crf", "full")
    assert backend.describe()["crf_executor"] in ("native", "torch")
    logits = backend.infer_unary(image)
    assert logits.shape == (2, 5, 20, 28) and logits.dtype == np.float32
    np.testing.assert_allclose(backend.infer_crf(logits, image),
                               backend.infer({"image": image})["probabilities"], atol=1e-6)
    with pytest.raises(ValueError, match="matching image"):
        backend.infer_crf(logits[:, :, :10], image)
