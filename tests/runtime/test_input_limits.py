"""Models that take only some sizes (issue 23 item 6): a fixed-size export, a TensorRT
engine's profile, a Triton model's dims and pixel bound, a fixed batch. Known when the model
is loaded, they are settled then (fitted, or refused in one line naming the model's sizes and
the fix), never left to the inference library's error on the first frame."""
from __future__ import annotations

import logging
import types
from pathlib import Path

import numpy as np
import pytest

from convcrf_deploy.metadata import ModelMetadata
from convcrf_deploy.runtime import InputSizeError, Segmenter
from convcrf_deploy.runtime.backends import Backend, InputLimits
from convcrf_deploy.runtime.backends.triton.loader import ModelInfo
from convcrf_deploy.runtime.backends.trt.runner import TensorRTBackend
from convcrf_deploy.runtime.testing import write_toy_onnx


def frame(height, width):
    return np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return types.SimpleNamespace(
        # A --static export: the graph is 240x320, its metadata names another nominal size.
        static=str(write_toy_onnx(folder / "static.onnx", input_size=(60, 80),
                                  resize="stretch", fixed_size=(240, 320))),
        static_none=str(write_toy_onnx(folder / "static_none.onnx", input_size=(240, 320),
                                       resize="none", fixed_size=(240, 320))),
        height_only=str(write_toy_onnx(folder / "height.onnx", input_size=(48, 64),
                                       resize="stretch", fixed_size=(48, None))),
        batch2=str(write_toy_onnx(folder / "batch2.onnx", batch=2)),
        batch1=str(write_toy_onnx(folder / "batch1.onnx", batch=1, resize="none")))


def test_a_fixed_size_export_is_fed_at_its_own_size(models):
    segmenter = Segmenter(models.static)
    assert segmenter.input_limits.fixed_size == (240, 320)
    assert segmenter.input_size == (240, 320) and segmenter.resize == "stretch"
    result = segmenter(frame(480, 640))
    assert result.labels.shape == (480, 640)


@pytest.mark.parametrize("options", [dict(resize="none"), dict(input_size=(480, 640))])
def test_an_explicit_setting_the_model_cannot_take_is_refused_in_one_line(models, options):
    with pytest.raises(InputSizeError) as caught:
        Segmenter(models.static, **options)
    text = str(caught.value)
    assert "320x240 frames only" in text and "static.onnx" in text and "\n" not in text
    assert "without --static" in text
    if "resize" in options:
        assert "--resize letterbox or stretch" in text


def test_a_fixed_size_model_whose_metadata_says_none_is_letterboxed_with_a_notice(models,
                                                                                    caplog):
    with caplog.at_level(logging.WARNING):
        segmenter = Segmenter(models.static_none)
    assert segmenter.resize == "letterbox" and segmenter.input_size == (240, 320)
    assert segmenter(frame(480, 640)).labels.shape == (480, 640)
    assert sum("letterboxed" in r.getMessage() for r in caplog.records) == 1


def test_one_fixed_side_is_kept_and_the_other_follows_the_metadata(models):
    segmenter = Segmenter(models.height_only)
    assert segmenter.input_size == (48, 64)
    assert segmenter(frame(100, 30)).labels.shape == (100, 30)
    with pytest.raises(InputSizeError, match="--resize none"):
        Segmenter(models.height_only, resize="none")


def test_a_model_that_cannot_take_one_frame_is_refused_and_batch_one_is_fine(models):
    with pytest.raises(InputSizeError, match=r"batches of 2 frames.*dynamic batch or batch 1"):
        Segmenter(models.batch2)
    assert Segmenter(models.batch1)(frame(30, 40)).labels.shape == (30, 40)


class LimitedBackend(Backend):
    """A model that takes the sizes of ``limits`` (as TensorRT or Triton report them)."""

    name = "limited"

    def __init__(self, limits, input_size=(16, 24), resize="none"):
        super().__init__(ModelMetadata.for_classes(["a", "b"], input_size=input_size,
                                                   resize=resize))
        self.limits, self.seen = limits, []

    @property
    def input_limits(self):
        return self.limits

    def _activate(self):
        pass

    def _deactivate(self):
        pass

    def _infer(self, image):
        assert self.limits.refusal(*image.shape[2:]) is None, image.shape
        self.seen.append(image.shape[2:])
        n, _, h, w = image.shape
        return {"probabilities": np.full((n, 2, h, w), 0.5, np.float32),
                "labels": np.zeros((n, h, w), np.int64)}


def engine_limits(minimum, maximum):
    """The TensorRT backend's limits for an engine with this profile."""
    fake = types.SimpleNamespace(profile_range=lambda: (minimum, minimum, maximum),
                                 info=types.SimpleNamespace(path=Path("model.engine")))
    return TensorRTBackend.input_limits.fget(fake)


def test_an_engine_profile_is_checked_per_frame_size_with_resize_none():
    limits = engine_limits((1, 3, 8, 8), (2, 3, 32, 32))
    assert limits.batch == (1, 2) and limits.fixed_size == (None, None)
    backend = LimitedBackend(limits)
    segmenter = Segmenter(backend)
    assert segmenter(frame(20, 30)).labels.shape == (20, 30)
    with pytest.raises(InputSizeError) as caught:
        segmenter(frame(48, 64))
    text = str(caught.value)
    assert text.startswith("frame 64x48: ") and "8x8 to 32x32" in text
    assert "--resize letterbox or stretch" in text and "convcrf-build --min/--max" in text
    assert backend.seen == [(20, 30)]                  # the engine never saw the bad frame


def test_an_engine_whose_profile_excludes_the_models_size_is_refused_at_load():
    limits = engine_limits((1, 3, 8, 8), (1, 3, 32, 32))
    assert Segmenter(LimitedBackend(limits, (16, 24), "stretch"))(frame(480, 640)).labels.shape \
        == (480, 640)
    with pytest.raises(InputSizeError, match=r"8x8 to 32x32.*resized to its input_size 320x240"):
        Segmenter(LimitedBackend(limits, (240, 320), "stretch"))
    with pytest.raises(InputSizeError, match="batches of 2"):
        Segmenter(LimitedBackend(engine_limits((2, 3, 8, 8), (4, 3, 32, 32))))


def test_a_fixed_engine_is_a_fixed_size_model():
    limits = engine_limits((1, 3, 16, 24), (1, 3, 16, 24))
    assert limits.fixed_size == (16, 24)
    with pytest.raises(InputSizeError, match="24x16 frames only"):
        Segmenter(LimitedBackend(limits), resize="none")
    assert Segmenter(LimitedBackend(limits)).resize == "letterbox"


def triton_limits(dims, max_pixels=None, max_batch=8):
    parameters = {"convcrf.max_pixels": str(max_pixels)} if max_pixels else {}
    return ModelInfo("UINT8", ["labels"], max_batch, parameters, dims).input_limits("server")


def test_a_triton_models_pixel_bound_and_dims_are_known_before_the_first_request():
    limits = triton_limits((3, -1, -1), max_pixels=640 * 480)
    assert limits.max_pixels == 640 * 480 and limits.batch == (1, 8)
    segmenter = Segmenter(LimitedBackend(limits))
    assert segmenter(frame(480, 640)).labels.shape == (480, 640)
    with pytest.raises(InputSizeError, match=r"frame 1280x720: .*at most 307200 pixels"):
        segmenter(frame(720, 1280))
    fixed = triton_limits(("3", "240", "320"))            # gRPC's JSON gives strings
    assert fixed.fixed_size == (240, 320)
    assert Segmenter(LimitedBackend(fixed, (60, 80), "stretch")).input_size == (240, 320)


def test_a_fixed_size_torch_export_program_is_a_fixed_size_model(tmp_path):
    torch = pytest.importorskip("torch")
    from convcrf_deploy.model.unary_files import load_unary_file
    from user_model_fixtures import ProgramNet
    torch.export.save(torch.export.export(ProgramNet.build(3), (torch.rand(1, 3, 40, 56),)),
                      str(tmp_path / "fixed.pt2"))
    model = load_unary_file(tmp_path / "fixed.pt2")
    with pytest.raises(InputSizeError, match=r"56x40 frames only.*torch.export program.*"
                                             r"--resize letterbox or stretch"):
        Segmenter(model, "torch", resize="none")
    segmenter = Segmenter(model, "torch")
    assert segmenter.input_limits.fixed_size == (40, 56)
    assert segmenter(frame(60, 90)).labels.shape == (60, 90)


def _one_size_model(input_size):
    """A checkpoint-style network that runs at 32x48 only (a Linear on the flattened image),
    as the new-user trial's, which failed mid-run with status 1."""
    torch = pytest.importorskip("torch")
    from convcrf_deploy import ConvCRF, CRFConfig, SegmentationModel

    class OneSize(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)
            self.fc = torch.nn.Linear(3 * 32 * 48, 3)

        def forward(self, x):
            return self.conv(x) + self.fc(x.flatten(1))[:, :, None, None]

    return SegmentationModel(OneSize(), ConvCRF(CRFConfig(num_classes=3)),
                             ModelMetadata(["a", "b", "c"], input_size=input_size)).eval()


def test_a_network_of_one_size_is_a_fixed_size_model():
    model = _one_size_model((32, 48))
    with pytest.raises(InputSizeError, match=r"48x32 frames only.*runs at its input_size only"):
        Segmenter(model, "torch", resize="none")
    segmenter = Segmenter(model, "torch")
    assert segmenter.input_limits.fixed_size == (32, 48)
    assert segmenter(frame(77, 101)).labels.shape == (77, 101)


def test_a_network_that_runs_at_no_size_it_is_given_is_refused_at_load():
    from convcrf_deploy.model.constraints import ConstraintError
    with pytest.raises(ConstraintError, match=r"failed at every size probed.*nor at its "
                                              r"input_size 320x240 \(WxH\).*\"input_size\""):
        Segmenter(_one_size_model((240, 320)), "torch")


def test_limits_from_shapes_and_their_descriptions():
    assert InputLimits.from_shape(["N", 3, "H", "W"], "x").fixed_size == (None, None)
    limits = InputLimits.from_shape([1, 3, 240, 320], "its graph")
    assert limits.fixed_size == (240, 320) and limits.batch == (1, 1)
    assert limits.describe() == "320x240 frames only (its graph)"
    assert limits.refusal(240, 320) is None and "480x640" not in (limits.refusal(480, 640) or "")
    assert limits.refusal(480, 640).startswith("640x480 is outside")
