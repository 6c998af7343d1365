"""fullcrf_inference against the real pydensecrf (CI installs pydensecrf2 through the test extra)."""
import sys

import numpy as np
import pytest

from convcrf_deploy import CRFConfig
from convcrf_deploy.fullcrf import FullCRFUnavailable, fullcrf_inference

dcrf = pytest.importorskip("pydensecrf.densecrf")


def scene(height=24, width=30, classes=3, seed=0):
    """A textured two-colour image and noisy logits that favour the wrong class on a few pixels."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    image[:, width // 2:] = (200, 40, 40)
    image += rng.integers(0, 30, image.shape, dtype=np.uint8)  # texture: colour distances vary
    labels = (np.arange(width)[None, :] >= width // 2).astype(int).repeat(height, 0)
    logits = rng.normal(0, 1, (classes, height, width)).astype(np.float32)
    logits[labels, np.arange(height)[:, None], np.arange(width)[None, :]] += 2.0
    return logits, image, labels


def softmax(x):
    e = np.exp(x - x.max(0, keepdims=True))
    return e / e.sum(0, keepdims=True)


def test_parameters_are_mapped_from_the_config():
    """Same result as pydensecrf driven by hand with the paper's mapping of CRFConfig."""
    logits, image, _ = scene()
    config = CRFConfig(num_classes=3, iterations=4, smoothness_bandwidth=2.5, smoothness_weight=4.0,
                       appearance_position_bandwidth=30.0, appearance_color_bandwidth=9.0,
                       appearance_weight=6.0)
    c, h, w = logits.shape
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(np.ascontiguousarray(-np.log(softmax(logits)).reshape(c, -1), np.float32))
    crf.addPairwiseGaussian(sxy=2.5, compat=4.0)
    crf.addPairwiseBilateral(sxy=30.0, srgb=9.0, rgbim=image, compat=6.0)
    expected = np.asarray(crf.inference(4), np.float32).reshape(c, h, w)
    q = fullcrf_inference(logits, image, config)
    assert q.shape == (3, 24, 30) and q.dtype == np.float32
    np.testing.assert_allclose(q, expected, atol=1e-5)
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-4)
    # Each mapped parameter matters (a swapped or dropped one would change the result).
    for change in ({"appearance_weight": 1.0}, {"smoothness_weight": 0.5},
                   {"appearance_color_bandwidth": 50.0}, {"iterations": 1}):
        other = fullcrf_inference(logits, image, config.replace(**change))
        assert np.abs(other - q).max() > 1e-3, change


def test_zero_iterations_is_the_softmax_of_the_logits_even_far_from_zero():
    """The unary energy comes from the logits (-log_softmax), not from exp(logits): logits of
    -300 underflow exp() to 0, which a probability round trip turned into a uniform unary."""
    logits, image, _ = scene(height=8, width=10)
    logits = logits - 300.0
    q = fullcrf_inference(logits, image, CRFConfig(num_classes=3, iterations=0))
    np.testing.assert_allclose(q, softmax(logits.astype(np.float64)), atol=1e-5)


def test_the_crf_cleans_up_the_noise():
    logits, image, labels = scene(height=32, width=40, seed=3)
    unary_accuracy = (logits.argmax(0) == labels).mean()
    q = fullcrf_inference(logits, image, CRFConfig(num_classes=3))
    assert (q.argmax(0) == labels).mean() > unary_accuracy
    assert (q.argmax(0) == labels).mean() > 0.98


@pytest.mark.parametrize("logits_shape, image_shape, dtype, match", [
    ((3, 8, 10), (8, 11, 3), np.uint8, "image must be uint8 RGB"),
    ((3, 8, 10), (8, 10, 3), np.float32, "image must be uint8 RGB"),
    ((1, 8, 10), (8, 10, 3), np.uint8, "C >= 2"),
    ((8, 10), (8, 10, 3), np.uint8, r"float \[C, H, W\]"),
])
def test_bad_input_is_named(logits_shape, image_shape, dtype, match):
    with pytest.raises(ValueError, match=match):
        fullcrf_inference(np.zeros(logits_shape, np.float32), np.zeros(image_shape, dtype))


def test_config_class_count_must_match():
    logits, image, _ = scene()
    with pytest.raises(ValueError, match="config has 21 classes, the logits 3"):
        fullcrf_inference(logits, image, CRFConfig(num_classes=21))


def test_missing_library_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    logits, image, _ = scene()
    with pytest.raises(FullCRFUnavailable, match="pydensecrf2"):
        fullcrf_inference(logits, image)
