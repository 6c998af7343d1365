"""Input constraints at run time (issue 18 item 3): ModelMetadata records them, every
backend's infer pads to them (edge pixels, bottom/right) and crops back, the Segmenter pads in
its buffer. No torch needed."""
from __future__ import annotations

import numpy as np
import pytest

from convcrf_deploy.metadata import ONNX_KEYS, ModelMetadata
from convcrf_deploy.runtime import Segmenter
from convcrf_deploy.runtime.backends.base import Backend
from convcrf_deploy.runtime.padding import crop_outputs, pad_image, replicate_edges

CLASSES = ["a", "b", "c"]


def test_padded_size_and_words():
    unet = ModelMetadata(CLASSES, pad_multiple=32)
    segformer = ModelMetadata(CLASSES, pad_multiple=4, min_size=32)
    assert unet.padded_size(77, 101) == (96, 128)
    assert unet.padded_size(96, 128) == (96, 128) and unet.satisfied_by(96, 128)
    assert segformer.padded_size(19, 23) == (32, 32)
    assert segformer.padded_size(61, 83) == (64, 84)
    assert ModelMetadata(CLASSES).padded_size(7, 9) == (7, 9)
    assert ModelMetadata(CLASSES, min_size=30).padded_size(7, 90) == (30, 90)
    assert "--pad-multiple 4" in segformer.describe_constraints()
    assert "at least 32 px (--min-size 32)" in segformer.describe_constraints()
    assert ModelMetadata(CLASSES).describe_constraints() == "none"
    for bad in (0, -1, 2.5, True, 4096):
        with pytest.raises(ValueError, match="pad_multiple"):
            ModelMetadata(CLASSES, pad_multiple=bad)


def test_constraints_travel_in_onnx_props_and_dicts():
    meta = ModelMetadata(CLASSES, pad_multiple=16, min_size=48)
    props = meta.to_onnx_props()
    assert props[ONNX_KEYS["pad_multiple"]] == "16" and props[ONNX_KEYS["min_size"]] == "48"
    assert ModelMetadata.from_onnx_props(props) == meta
    assert ModelMetadata.from_dict(meta.to_dict()) == meta
    # Files and checkpoints from before constraints existed: none.
    old = {k: v for k, v in props.items() if k not in (ONNX_KEYS["pad_multiple"],
                                                       ONNX_KEYS["min_size"])}
    assert ModelMetadata.from_onnx_props(old).padded_size(7, 9) == (7, 9)
    plain = ModelMetadata(CLASSES).to_dict()
    assert "pad_multiple" not in plain and "min_size" not in plain   # older readers load it
    with pytest.raises(ValueError, match="convcrf.pad_multiple is 'x'"):
        ModelMetadata.from_onnx_props({**props, ONNX_KEYS["pad_multiple"]: "x"})


def test_pad_image_repeats_edges_and_crop_restores_the_size():
    meta = ModelMetadata(CLASSES, pad_multiple=8, min_size=12)
    image = np.random.default_rng(0).uniform(0, 255, (2, 3, 5, 9)).astype(np.float32)
    padded, crop = pad_image(image, meta)
    assert padded.shape == (2, 3, 16, 16) and crop == (5, 9)
    np.testing.assert_array_equal(padded, np.pad(image, ((0, 0), (0, 0), (0, 11), (0, 7)),
                                                 mode="edge"))
    same, none = pad_image(padded, meta)
    assert same is padded and none is None
    outputs = {"probabilities": np.zeros((2, 3, 16, 16), np.float32),
               "labels": np.arange(512).reshape(2, 16, 16)}
    cropped = crop_outputs(outputs, crop)
    assert cropped["probabilities"].shape == (2, 3, 5, 9)
    np.testing.assert_array_equal(cropped["labels"], outputs["labels"][:, :5, :9])
    assert cropped["labels"].flags.c_contiguous
    assert crop_outputs(outputs, None) is outputs
    buffer = np.zeros((1, 1, 3, 4), np.float32)
    buffer[0, 0, :2, :3] = [[1, 2, 3], [4, 5, 6]]
    replicate_edges(buffer, 2, 3)
    np.testing.assert_array_equal(buffer[0, 0], [[1, 2, 3, 3], [4, 5, 6, 6], [4, 5, 6, 6]])


class Stride32Backend(Backend):
    """Fails unless H and W are multiples of 32 (like a U-Net graph); labels = column index
    modulo 3 so that cropping can be checked."""

    name = "stride32"

    def __init__(self, constrained=True, **metadata):
        super().__init__(ModelMetadata(CLASSES, pad_multiple=32 if constrained else 1,
                                       **metadata))
        self.shapes = []

    @property
    def stages(self):
        return ("unary", "full")

    def _activate(self):
        pass

    def _deactivate(self):
        pass

    def _check(self, image):
        self.shapes.append(image.shape[-2:])
        if image.shape[-2] % 32 or image.shape[-1] % 32:
            raise RuntimeError(f"graph cannot run at {image.shape[-2:]}")

    def _infer_unary(self, image):
        self._check(image)
        return np.repeat(image[:, :1], 3, axis=1)

    def _infer(self, image):
        self._check(image)
        n, _, h, w = image.shape
        labels = np.broadcast_to(np.arange(w) % 3, (n, h, w)).astype(np.int64)
        probabilities = np.repeat(image[:, :1] / 255, 3, axis=1)
        return {"probabilities": probabilities, "labels": labels, "unary_labels": labels}


def test_backend_infer_pads_for_any_caller_and_crops_back():
    backend = Stride32Backend()
    image = np.random.default_rng(1).uniform(0, 255, (1, 3, 77, 101)).astype(np.float32)
    outputs = backend.infer({"image": image})
    assert backend.shapes[-1] == (96, 128)
    assert outputs["labels"].shape == (1, 77, 101) and outputs["probabilities"].shape == \
        (1, 3, 77, 101)
    np.testing.assert_array_equal(outputs["labels"][0, 0], np.arange(101) % 3)
    np.testing.assert_allclose(outputs["probabilities"][:, 0], image[:, 0] / 255)
    logits = backend.infer_unary(image)
    assert logits.shape == (1, 3, 77, 101)
    np.testing.assert_array_equal(logits[:, 0], image[:, 0])
    # Without recorded constraints the same graph fails: the padding is what makes it run.
    with pytest.raises(RuntimeError, match="cannot run"):
        Stride32Backend(constrained=False).infer({"image": image})


@pytest.mark.parametrize("resize, input_size", [("none", None), ("stretch", (50, 70)),
                                                ("letterbox", (50, 70))])
def test_segmenter_pads_in_its_buffer(resize, input_size):
    backend = Stride32Backend(resize=resize, input_size=input_size or (240, 320))
    segmenter = Segmenter(backend)
    frame = np.random.default_rng(2).integers(0, 255, (77, 101, 3), dtype=np.uint8)
    image = segmenter.preprocess(frame)
    resized = (77, 101) if resize == "none" else (50, 70)
    assert image.shape[-2:] == backend.metadata.padded_size(*resized) == \
        ((96, 128) if resize == "none" else (64, 96))
    h, w = resized
    below, right = image[..., h:, :w], image[..., w:]
    np.testing.assert_array_equal(below, np.broadcast_to(image[..., h - 1:h, :w], below.shape))
    np.testing.assert_array_equal(right, np.broadcast_to(image[..., w - 1:w], right.shape))
    result = segmenter(frame)
    assert result.labels.shape == (77, 101)
    assert backend.shapes[-1] == image.shape[-2:]
    if resize == "none":
        np.testing.assert_array_equal(result.labels[0], np.arange(101) % 3)
