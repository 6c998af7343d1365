"""The warm start of the torch backend: :class:`convcrf_deploy.crf.WarmStartMeanField` on
``ConvCRF`` (the stream logic is torch-free and shared with the native CRF of the ONNX Runtime
backend; this module keeps the torch backend's name for it)."""
from __future__ import annotations

from ....crf.warm_start import WarmStartMeanField as _WarmStartMeanField


class WarmStartMeanField(_WarmStartMeanField):
    """:class:`convcrf_deploy.crf.WarmStartMeanField` on a ``ConvCRF``: logits of any float
    dtype are computed in float32, and the probabilities are float32 ``[N, C, H, W]``."""

    def __call__(self, unary_logits, image):
        return super().__call__(unary_logits.float(), image).float()
