"""The executors ``ConvCRF`` runs the mean-field schedule (:mod:`convcrf_deploy.crf.schedule`)
with.

* :class:`TorchExecutor`: PyTorch ops and the custom ops (:mod:`convcrf_deploy.ops`),
  differentiable; the full-resolution part of an exact-mode iteration is the native
  differentiable op :func:`~convcrf_deploy.ops.mean_field.full_resolution_step` where it can
  run (CPU, float32, not tracing), standard ops otherwise. Training, CUDA, the reference
  implementation and export (which traces it) use it.
* :func:`native_executor`: :class:`convcrf_deploy.crf.native.NativeExecutor` (the runtime's
  executor, NumPy and the native library) on zero-copy views of ConvCRF's CPU tensors: its
  inference path under ``torch.no_grad()``, where the full-resolution part of every iteration
  is one native pass and no multithreaded PyTorch op runs between two native calls (idle
  OpenMP threads would compete with the native ones for the cores).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

from .. import _native, ops
from ..crf.native import MeanFieldWeights, NativeExecutor
from ..ops.mean_field import full_resolution_step, full_resolution_step_available

if TYPE_CHECKING:
    from .convcrf import ConvCRF


def pool(x: torch.Tensor, blur: int) -> torch.Tensor:
    """``[N, C, H, W] -> [N, C, ceil(H/b), ceil(W/b)]``: mean over each ``b x b`` window, the
    last window of each axis covering only the pixels that remain."""
    if blur == 1:
        return x
    return F.avg_pool2d(x, blur, stride=blur, ceil_mode=True, count_include_pad=False)


def upsample(x: torch.Tensor, blur: int, height: int, width: int) -> torch.Tensor:
    """``[N, C, h, w] -> [N, C, H, W]``: bilinear by ``blur`` (half-pixel), cropped."""
    if blur == 1:
        return x
    up = F.interpolate(x, scale_factor=blur, mode="bilinear", align_corners=False)
    return up[:, :, :height, :width]


class TorchExecutor:
    """:class:`~convcrf_deploy.crf.schedule.MeanFieldExecutor` on PyTorch tensors, with
    autograd, for one call of ``crf``.

    Args:
        crf: the :class:`ConvCRF` (its parameters, ``implementation`` and configuration).
        logits: float32 ``[N, C, H, W]`` unary logits (finite: the caller checks).
        pairwise_kernel: returns the kernel ``[N, k*k, h, w]`` (``ConvCRF.pairwise_kernel``).
    """

    def __init__(self, crf: "ConvCRF", logits: torch.Tensor,
                 pairwise_kernel: Callable[[], torch.Tensor]):
        self.crf = crf
        self.z = logits
        self._pairwise_kernel = pairwise_kernel
        self.blur = crf.config.blur
        self.has_compatibility = crf.compatibility is not None
        self.unary_term: torch.Tensor | None = None
        self.unary_low: torch.Tensor | None = None
        self.native_step = False

    def softmax(self) -> torch.Tensor:
        return torch.softmax(self.z, dim=1)

    def pairwise_kernel(self) -> torch.Tensor:
        return self._pairwise_kernel()

    def start(self, blurred: bool) -> torch.Tensor:
        crf = self.crf
        scale = (crf.unary_weight - crf.message_weight).view(1, -1, 1, 1)
        self.unary_term = scale * torch.log_softmax(self.z, dim=1)
        q = torch.softmax(self.z, dim=1)
        if blurred:
            self.unary_low = pool(self.unary_term, self.blur)
        else:
            # The full-resolution part (upsample, softmax, pool) as one native op with a
            # native backward: training time was almost all in those ops.
            self.native_step = (crf.implementation != "reference"
                                and full_resolution_step_available(self.unary_term, q))
        return pool(q, self.blur)

    def pool(self, q: torch.Tensor) -> torch.Tensor:
        return pool(q, self.blur)

    def message_passing(self, q_low: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        return ops.message_passing(q_low, kernel, self.crf.config.filter_size,
                                   implementation=self.crf.implementation)

    def compatibility(self, messages: torch.Tensor) -> torch.Tensor:
        return self.crf.compatibility(messages)

    def _weighted(self, messages: torch.Tensor) -> torch.Tensor:
        return messages * self.crf.message_weight.view(1, -1, 1, 1)

    def blurred_update(self, messages: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.unary_low + self._weighted(messages), dim=1)

    def full_resolution_update(self, messages: torch.Tensor, last: bool) -> torch.Tensor:
        m = self._weighted(messages)
        if self.native_step:
            q, q_low = full_resolution_step(self.unary_term, m, self.blur)
            return q if last else q_low
        height, width = self.z.shape[2:]
        q = torch.softmax(self.unary_term + upsample(m, self.blur, height, width), dim=1)
        return q if last else pool(q, self.blur)


def native_executor_available(crf: "ConvCRF", logits: torch.Tensor) -> bool:
    """Whether :func:`native_executor` can run this call: CPU, the native library built, not
    the reference implementation, and no gradient wanted."""
    if crf.implementation == "reference" or logits.device.type != "cpu":
        return False
    if _native.cpu_library() is None:
        return False
    return not (torch.is_grad_enabled() and
                (logits.requires_grad or any(p.requires_grad for p in crf.parameters())))


def native_executor(crf: "ConvCRF", logits: torch.Tensor,
                    pairwise_kernel: Callable[[], torch.Tensor]) -> NativeExecutor:
    """:class:`NativeExecutor` on views of ``logits`` (float32 CPU ``[N, C, H, W]``) and of the
    kernel ``pairwise_kernel()`` returns; its arrays convert back with ``torch.from_numpy``
    (no copies). Only when :func:`native_executor_available`."""
    c = crf.config.num_classes

    def array(t: torch.Tensor):
        return t.detach().float().contiguous().numpy()
    weights = MeanFieldWeights(
        message_weight=array(crf.message_weight),
        unary_scale=array(crf.unary_weight - crf.message_weight),
        compatibility=(None if crf.compatibility is None
                       else array(crf.compatibility.weight.reshape(c, c))))
    return NativeExecutor(crf.config, weights, array(logits),
                          lambda: array(pairwise_kernel()), _native.default_threads(),
                          non_finite=crf._non_finite_error)
