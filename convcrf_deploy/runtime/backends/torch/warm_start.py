"""Video-aware mean-field: start from the previous frame's result with fewer iterations.

Consecutive video frames change little, so the previous frame's CRF output is a better
starting point for mean-field than the softmax of the current unary. Each frame runs
``ConvCRF.forward`` (the fused native path on CPU) from

    Q0 = mix * Q_previous + (1 - mix) * softmax(z)

for ``iterations`` steps (default 2 instead of the configured 5). The first frame, and any
frame whose size differs from the previous one, runs the full CRF.
"""
from __future__ import annotations

import torch

from ....model import ConvCRF


class WarmStartMeanField:
    """Stateful mean-field for one video stream.

    Args:
        crf: the model's :class:`ConvCRF`.
        iterations: mean-field iterations on warm-started frames (>= 1).
        mix: weight of the previous frame's probabilities in the initial ``Q`` (0..1).

    Call with ``unary_logits [N, C, H, W]`` and ``image [N, 3, H, W]`` RGB 0..255; returns the
    probabilities ``[N, C, H, W]`` (float32).
    """

    def __init__(self, crf: ConvCRF, iterations: int = 2, mix: float = 0.5):
        if iterations < 1:
            raise ValueError(f"warm-start iterations must be >= 1, got {iterations}")
        if not 0.0 <= mix <= 1.0:
            raise ValueError(f"warm-start mix must be in 0..1, got {mix}")
        self.crf = crf
        self.iterations = iterations
        self.mix = mix
        self.previous: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget the previous frame (call on a scene cut or a new stream)."""
        self.previous = None

    def __call__(self, unary_logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        z = unary_logits.float()
        previous = self.previous
        if previous is None or previous.shape != z.shape or self.crf.config.iterations == 0:
            q = self.crf(z, image).float()
        else:
            q = self.crf(z, image, initial_q=previous, initial_q_weight=self.mix,
                         iterations=self.iterations).float()
        self.previous = q
        return q
