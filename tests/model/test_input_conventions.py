"""Inputs outside the conventions get a clear message (issue 11): NaN or huge image values,
a NaN ``initial_q``, an image in 0..1 instead of 0..255, and a one-class CRF."""
from __future__ import annotations

import warnings

import pytest
import torch

from convcrf_deploy import CRFConfig, ConvCRF

CONFIG = CRFConfig(num_classes=3, filter_size=5, blur=2, iterations=2)


def inputs(height=16, width=20):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 3, height, width, generator=generator)
    image = torch.rand(1, 3, height, width, generator=generator) * 255
    return logits, image


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("bad", ["nan", "inf", "3e38"])
def test_non_finite_or_huge_image_is_an_error(bad, grad):
    logits, image = inputs()
    image[0, 1, 3, 4] = float(bad)
    crf = ConvCRF(CONFIG)
    with torch.set_grad_enabled(grad), pytest.raises(ValueError, match="image must hold finite "
                                                                        "RGB values in 0..255"):
        crf(logits, image)


def test_non_finite_initial_q_is_an_error():
    logits, image = inputs()
    start = torch.softmax(logits, 1)
    start[0, 0, 2, 2] = float("nan")
    with torch.inference_mode(), pytest.raises(ValueError, match="initial_q contains NaN"):
        ConvCRF(CONFIG)(logits, image, initial_q=start)


def test_image_in_unit_range_warns_once_per_model():
    logits, image = inputs()
    crf = ConvCRF(CONFIG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.inference_mode():
            crf(logits, image / 255)
            crf(logits, image / 255)
            crf(logits, image)                        # 0..255: no warning
            ConvCRF(CONFIG)(logits, image / 255)      # another model warns again
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len([m for m in messages if "expects RGB in 0..255" in m]) == 2, messages


def test_valid_image_does_not_warn():
    logits, image = inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.inference_mode():
            q = ConvCRF(CONFIG)(logits, image)
    assert torch.isfinite(q).all()


def test_one_class_crf_is_refused_with_a_hint():
    with pytest.raises(ValueError, match=r"num_classes: must be >= 2.*\[0, f\]"):
        CRFConfig(num_classes=1)
    with pytest.raises(ValueError, match="must be >= 2"):
        CRFConfig.from_dict({**CONFIG.to_dict(), "num_classes": 1})
