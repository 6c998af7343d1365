"""`ConvCRF`: the convolutional CRF of Teichmann & Cipolla as a PyTorch module.

Mean-field inference with windowed Gaussian message passing (docs/ops.md) on a blurred grid:

    Q = softmax(z)
    repeat iterations:
        M = message_passing(pool(Q), K)                     # at 1/blur resolution
        Q = softmax((unary_weight - w) * log_softmax(z) + w * upsample(compat(M)))

with ``K = w_app * gaussian_kernel(appearance features) + w_smooth * gaussian_kernel(smoothness
features)`` built once per image from pooled (position, RGB) features. Pooling is average
pooling by ``blur`` with the last window covering the remainder (``ceil(H / blur)`` rows);
upsampling is bilinear by ``blur`` (half-pixel centres), cropped back to ``H x W``.

The schedule (iteration order, weighting, +C, warm start, fast mode) is
:func:`convcrf_deploy.crf.schedule.mean_field`, shared with the runtime's native CRF. This
module builds the pairwise kernel and chooses the executor (:mod:`.executors`) that computes
the same function:

* :class:`~.executors.TorchExecutor` (PyTorch ops plus the custom ops), used whenever a
  gradient is needed, on devices without a fused kernel, and by export;
* the native executor, which does the full-resolution part of each iteration (upsample, add,
  softmax, pool) in one native pass; used under ``torch.no_grad()`` on CPU.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .._warnings import warn
from ..config import CRFConfig
from .. import ops
from ..crf.schedule import check_arguments, mean_field
from .executors import TorchExecutor, native_executor, native_executor_available, pool
from .executors import upsample  # noqa: F401 - public here too (convcrf_deploy.model.upsample)


def _axis_centres(size: int, blur: int, device, dtype) -> torch.Tensor:
    """``[ceil(size/blur)]``: mean full-resolution coordinate of each pooled window."""
    # Integer arange, then cast: exported as an int64 Range (a float Range's element count
    # is rounded differently by ONNX runtimes and TensorRT).
    starts = torch.arange(0, size, blur, device=device).to(dtype)
    ends = torch.clamp(starts + blur, max=size)
    return (starts + ends - 1) / 2


class ConvCRF(nn.Module):
    """Convolutional CRF layer.

    Args:
        config: hyper-parameters and which of them train (:class:`CRFConfig`).
        implementation: ``"auto"`` (native kernels when built), ``"native"`` or
            ``"reference"`` (pure PyTorch ``F.unfold``, the original implementation's method).

    Shapes:
        - unary_logits: ``(N, C, H, W)`` logits of the unary network (not probabilities).
        - image: ``(N, 3, H, W)`` RGB in 0..255 (any float dtype or uint8).
        - output: ``(N, C, H, W)`` class probabilities, in the dtype of ``unary_logits``.

    Example:
        >>> crf = ConvCRF(CRFConfig(num_classes=21, filter_size=7))
        >>> probs = crf(torch.randn(1, 21, 120, 160), torch.rand(1, 3, 120, 160) * 255)
    """

    def __init__(self, config: CRFConfig | None = None, *, implementation: ops.Implementation = "auto"):
        super().__init__()
        self.config = config or CRFConfig()
        cfg = self.config
        self.implementation = implementation
        trainable = set(cfg.trainable)

        def parameter(value, group: str) -> nn.Parameter:
            tensor = torch.as_tensor(value, dtype=torch.float32).clone()
            return nn.Parameter(tensor, requires_grad=group in trainable)

        # Bandwidths are stored as logs so that training keeps them positive.
        self.log_appearance_position_bandwidth = parameter(
            math.log(cfg.appearance_position_bandwidth), "bandwidths")
        self.log_appearance_color_bandwidth = parameter(
            math.log(cfg.appearance_color_bandwidth), "bandwidths")
        self.log_smoothness_bandwidth = parameter(math.log(cfg.smoothness_bandwidth), "bandwidths")
        self.appearance_weight = parameter(cfg.appearance_weight, "kernel_weights")
        self.smoothness_weight = parameter(cfg.smoothness_weight, "kernel_weights")
        self.message_weight = parameter(
            torch.full((cfg.num_classes,), float(cfg.message_weight)), "message_weight")
        self.register_buffer("unary_weight", torch.tensor(float(cfg.unary_weight)))

        self.compatibility: nn.Conv2d | None = None
        if cfg.compatibility == "learned":
            # +C: a 1x1 convolution over classes, initialised to Potts (identity: with softmax
            # normalisation Potts' -sum_{l' != l} M(l') equals M(l) up to a per-pixel constant).
            conv = nn.Conv2d(cfg.num_classes, cfg.num_classes, kernel_size=1, bias=False)
            with torch.no_grad():
                conv.weight.copy_(torch.eye(cfg.num_classes).view_as(conv.weight))
            conv.weight.requires_grad_("compatibility" in trainable)
            self.compatibility = conv

        self.feature_transform: nn.Conv2d | None = None
        if cfg.learned_features:
            # +T: smoothness features = a learnable 1x1 map of (x, y, r, g, b) / bandwidths,
            # initialised to the hand-crafted (x, y) / theta_gamma. A 1x1 map keeps the layer
            # independent of the image size.
            conv = nn.Conv2d(5, 2, kernel_size=1, bias=True)
            with torch.no_grad():
                conv.weight.zero_()
                conv.weight[0, 0, 0, 0] = 1.0
                conv.weight[1, 1, 0, 0] = 1.0
                conv.bias.zero_()
            for p in conv.parameters():
                p.requires_grad_("features" in trainable)
            self.feature_transform = conv

    # ---- validation ----------------------------------------------------------------------

    def _validate(self, unary_logits: torch.Tensor, image: torch.Tensor) -> None:
        cfg = self.config
        for name, t, layout in (("unary_logits", unary_logits, "[N, C, H, W]"),
                                ("image", image, "[N, 3, H, W]")):
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"{name} must be a torch.Tensor {layout}, got {type(t).__name__}")
            if t.dim() != 4:
                raise ValueError(f"{name} must have shape {layout}, got {tuple(t.shape)}; add a "
                                 "batch dimension with .unsqueeze(0) for a single image")
            if t.numel() == 0:
                raise ValueError(f"{name} is empty (shape {tuple(t.shape)}): every dimension "
                                 "must be at least 1")
        if not unary_logits.is_floating_point():
            raise ValueError(f"unary_logits must be floating point, got {unary_logits.dtype}")
        n, c, h, w = unary_logits.shape
        if image.shape[1] != 3:
            raise ValueError(f"image must have 3 (RGB) channels in dimension 1, got shape "
                             f"{tuple(image.shape)}; for HWC images use .permute(0, 3, 1, 2)")
        if (image.shape[0], image.shape[2], image.shape[3]) != (n, h, w):
            raise ValueError(f"unary_logits {tuple(unary_logits.shape)} and image "
                             f"{tuple(image.shape)} disagree on N, H or W; resize the logits to "
                             "the image size first")
        if c != cfg.num_classes:
            raise ValueError(f"unary_logits has {c} classes but CRFConfig.num_classes is "
                             f"{cfg.num_classes}")
        if unary_logits.device != image.device:
            raise ValueError(f"unary_logits is on {unary_logits.device} but image is on "
                             f"{image.device}")

    @staticmethod
    def _non_finite_error() -> ValueError:
        return ValueError("unary_logits contains NaN or infinite values; the CRF expects finite "
                          "logits (log-probabilities of 0 give -inf: clamp them first)")

    # ---- pieces ------------------------------------------------------------------------

    def pairwise_kernel(self, image: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """``[N, k*k, h, w]``: the weighted sum of the appearance and smoothness kernels on
        the blurred grid (``h = ceil(H/blur)``). ``image`` is ``[N, 3, H, W]`` float32."""
        cfg = self.config
        b, k = cfg.blur, cfg.filter_size
        trained = [self.log_appearance_position_bandwidth, self.log_appearance_color_bandwidth,
                   self.log_smoothness_bandwidth, self.appearance_weight, self.smoothness_weight]
        if (self.implementation != "reference" and self.feature_transform is None
                and not (torch.is_grad_enabled() and any(p.requires_grad for p in trained))
                and image.shape[2:] == (height, width)):
            # Inference on CPU: pooling, features and both kernels in one native call, so no
            # multithreaded PyTorch op runs between the native ones (executors.native_executor).
            # Scalars go in as tensors: reading them (float()) must wait until the op has
            # ruled out tracing, where it would be data-dependent.
            fused = ops.native_pairwise_kernel_from_image(
                image, b, k, *(t.exp() for t in trained[:3]), self.appearance_weight,
                self.smoothness_weight)
            if fused is not None:
                return fused
        n = image.shape[0]
        rgb = pool(image, b)
        h, w = rgb.shape[2:]
        ys = _axis_centres(height, b, image.device, image.dtype).view(1, 1, h, 1).expand(n, 1, h, w)
        xs = _axis_centres(width, b, image.device, image.dtype).view(1, 1, 1, w).expand(n, 1, h, w)
        position = torch.cat([xs, ys], dim=1)
        theta_alpha = self.log_appearance_position_bandwidth.exp()
        theta_beta = self.log_appearance_color_bandwidth.exp()
        theta_gamma = self.log_smoothness_bandwidth.exp()
        appearance = torch.cat([position / theta_alpha, rgb / theta_beta], dim=1)
        smoothness = position / theta_gamma
        if self.feature_transform is not None:
            smoothness = self.feature_transform(torch.cat([smoothness, rgb / theta_beta], dim=1))
        impl = self.implementation
        if impl != "reference":
            # Inference on CPU: both kernels and their weighted sum in one native pass.
            fused = ops.native_kernel_pair(appearance, smoothness, self.appearance_weight,
                                           self.smoothness_weight, k)
            if fused is not None:
                return fused
        return (self.appearance_weight * ops.gaussian_kernel(appearance.contiguous(), k,
                                                             implementation=impl)
                + self.smoothness_weight * ops.gaussian_kernel(smoothness.contiguous(), k,
                                                               implementation=impl))

    # ---- forward ---------------------------------------------------------------------------

    def forward(self, unary_logits: torch.Tensor, image: torch.Tensor, *,
                initial_q: torch.Tensor | None = None, initial_q_weight: float = 1.0,
                iterations: int | None = None) -> torch.Tensor:
        """Run mean-field inference.

        Args:
            unary_logits: ``(N, C, H, W)`` logits (fp32, fp16 or bf16; computed in fp32).
            image: ``(N, 3, H, W)`` RGB in 0..255.
            initial_q: optional ``(N, C, H, W)`` probabilities to start mean-field from, e.g.
                the previous video frame's result (warm start). The start is
                ``initial_q_weight * initial_q + (1 - initial_q_weight) * softmax(unary)``.
            initial_q_weight: weight of ``initial_q`` in the start, 0..1.
            iterations: mean-field iterations for this call (default: ``config.iterations``);
                a warm start typically needs fewer.

        Returns:
            ``(N, C, H, W)`` probabilities in ``unary_logits.dtype``.

        Raises:
            ValueError: bad shapes or dtypes; NaN/infinite logits; an image with NaN/infinite
                values or values beyond +-65535; a non-finite ``initial_q``.

        Warns (once per ConvCRF): ``UserWarning`` when an image's values all lie in 0..1 (an
        image scaled to 0..1 instead of 0..255 makes the colour kernel see no edges).
        """
        self._validate(unary_logits, image)
        # Values outside the conventions (issue 11): NaN/huge image values or a NaN initial_q
        # gave all-NaN probabilities silently; a 0..1 image makes the CRF worse than none.
        low, high = (float(v) for v in torch.aminmax(image.detach().float()))
        if not (math.isfinite(low) and math.isfinite(high)) or max(-low, high) > 65535:
            raise ValueError(f"image must hold finite RGB values in 0..255, got values in "
                             f"[{low:.4g}, {high:.4g}]; replace NaN/inf pixels and scale the "
                             "image to 0..255")
        if 0 < high <= 1.0 and low >= 0 and not getattr(self, "_warned_unit_range", False):
            self._warned_unit_range = True
            warn(f"ConvCRF: the image's values lie in [{low:.3g}, {high:.3g}]; the CRF "
                 "expects RGB in 0..255 (its colour bandwidth is in those units), multiply a "
                 "0..1 image by 255", UserWarning)
        if initial_q is not None and not bool(torch.isfinite(initial_q.detach()).all()):
            raise ValueError("initial_q contains NaN or infinite values; pass the finite "
                             "probabilities of a previous result (or no initial_q)")
        iterations = self.config.iterations if iterations is None else iterations
        check_arguments(iterations, unary_logits.shape,
                        None if initial_q is None else initial_q.shape, initial_q_weight)
        out_dtype = unary_logits.dtype
        z = unary_logits.float()
        img = image.float()
        height, width = z.shape[2:]

        def kernel() -> torch.Tensor:
            return self.pairwise_kernel(img, height, width)
        if iterations > 0 and native_executor_available(self, z):
            # The native executor checks finiteness in its first native pass.
            executor = native_executor(self, z, kernel)
            start = None if initial_q is None else initial_q.detach().float().contiguous().numpy()
            q = torch.from_numpy(mean_field(executor, self.config, iterations=iterations,
                                            initial_q=start, initial_q_weight=initial_q_weight))
        else:
            if not bool(torch.isfinite(z).all()):
                raise self._non_finite_error()
            start = None if initial_q is None else initial_q.float()
            q = mean_field(TorchExecutor(self, z, kernel), self.config, iterations=iterations,
                           initial_q=start, initial_q_weight=initial_q_weight)
        return q.to(out_dtype)

    def _forward_differentiable(self, z: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """Mean-field on PyTorch ops (:class:`~.executors.TorchExecutor`) with the configured
        iterations and a given pairwise kernel; what export traces. ``z`` is ``[N, C, H, W]``
        float32, ``kernel`` from :meth:`pairwise_kernel`."""
        return mean_field(TorchExecutor(self, z, lambda: kernel), self.config)
