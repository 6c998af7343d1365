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

Two code paths compute the same function:

* the differentiable path (PyTorch ops plus the custom ops), used whenever a gradient is
  needed or on devices without a fused kernel;
* the fused CPU inference path, which does the full-resolution part of each iteration
  (upsample, add, softmax, pool) in one native pass; used under ``torch.no_grad()`` on CPU.
"""
from __future__ import annotations

import math
import threading

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import _native
from .._warnings import warn
from ..config import CRFConfig
from .. import ops
from ..ops.mean_field import full_resolution_step, full_resolution_step_available


# Per-thread scratch for the fused path's full-resolution unary term, reused while the input
# shape stays the same: a fresh 10-100 MB buffer per frame costs milliseconds of page faults.
_scratch = threading.local()


def _unary_term_buffer(like: torch.Tensor) -> torch.Tensor:
    buffer = getattr(_scratch, "unary_term", None)
    if buffer is None or buffer.shape != like.shape:
        buffer = torch.empty_like(like)
        _scratch.unary_term = buffer
    return buffer


def _axis_centres(size: int, blur: int, device, dtype) -> torch.Tensor:
    """``[ceil(size/blur)]``: mean full-resolution coordinate of each pooled window."""
    # Integer arange, then cast: exported as an int64 Range (a float Range's element count
    # is rounded differently by ONNX runtimes and TensorRT).
    starts = torch.arange(0, size, blur, device=device).to(dtype)
    ends = torch.clamp(starts + blur, max=size)
    return (starts + ends - 1) / 2


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
            # multithreaded PyTorch op runs between the native ones (see _forward_fused).
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

    def _messages(self, q_low: torch.Tensor, kernel: torch.Tensor, *,
                  weighted: bool = True) -> torch.Tensor:
        """Blurred-grid messages after compatibility and (if ``weighted``) the per-class
        message weights, ``[N, C, h, w]``."""
        m = ops.message_passing(q_low, kernel, self.config.filter_size,
                                implementation=self.implementation)
        if self.compatibility is not None:
            m = self.compatibility(m)
        return m * self.message_weight.view(1, -1, 1, 1) if weighted else m

    def _use_fused(self, unary_logits: torch.Tensor) -> bool:
        if self.implementation == "reference" or unary_logits.device.type != "cpu":
            return False
        if _native.cpu_library() is None:
            return False
        return not (torch.is_grad_enabled() and
                    (unary_logits.requires_grad or any(p.requires_grad for p in self.parameters())))

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
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
            raise ValueError(f"iterations must be an int >= 0, got {iterations!r}")
        if initial_q is not None:
            if tuple(initial_q.shape) != tuple(unary_logits.shape):
                raise ValueError(f"initial_q must have the shape of unary_logits "
                                 f"{tuple(unary_logits.shape)}, got {tuple(initial_q.shape)}")
            if not 0.0 <= initial_q_weight <= 1.0:
                raise ValueError(f"initial_q_weight must be in 0..1, got {initial_q_weight}")
            initial_q = initial_q.float()
        out_dtype = unary_logits.dtype
        z = unary_logits.float()
        img = image.float()
        if iterations == 0:
            if not bool(torch.isfinite(z).all()):
                raise self._non_finite_error()
            return torch.softmax(z, dim=1).to(out_dtype)
        height, width = z.shape[2:]
        kernel = self.pairwise_kernel(img, height, width)
        start = (initial_q, initial_q_weight)
        if self._use_fused(z):
            # Checks finiteness in its first native pass.
            q = self._forward_fused(z, kernel, iterations=iterations, start=start)
        else:
            if not bool(torch.isfinite(z).all()):
                raise self._non_finite_error()
            q = self._forward_differentiable(z, kernel, iterations=iterations, start=start)
        return q.to(out_dtype)

    def _forward_differentiable(self, z: torch.Tensor, kernel: torch.Tensor, *,
                                iterations: int | None = None,
                                start: tuple[torch.Tensor | None, float] = (None, 1.0)) -> torch.Tensor:
        """Mean-field with PyTorch ops and the custom ops (autograd; also what export traces).
        ``z`` is ``[N, C, H, W]`` float32, ``kernel`` from :meth:`pairwise_kernel`."""
        cfg = self.config
        iterations = cfg.iterations if iterations is None else iterations
        height, width = z.shape[2:]
        scale = (self.unary_weight - self.message_weight).view(1, -1, 1, 1)
        unary_term = scale * torch.log_softmax(z, dim=1)
        q = torch.softmax(z, dim=1)
        initial_q, weight = start
        if initial_q is not None:
            q = weight * initial_q + (1.0 - weight) * q
        if self._blurred_intermediate(iterations):
            # Fast mode: iterate on the blurred grid, only the last update at full resolution.
            unary_low = pool(unary_term, cfg.blur)
            q_low = pool(q, cfg.blur)
            for _ in range(iterations - 1):
                q_low = torch.softmax(unary_low + self._messages(q_low, kernel), dim=1)
            m = self._messages(q_low, kernel)
            return torch.softmax(unary_term + upsample(m, cfg.blur, height, width), dim=1)
        if self.implementation != "reference" and full_resolution_step_available(unary_term, q):
            # The same iterations with the full-resolution part (upsample, softmax, pool) as one
            # native op with a native backward: training time was almost all in those ops.
            q_low = pool(q, cfg.blur)
            for _ in range(iterations):
                q, q_low = full_resolution_step(unary_term, self._messages(q_low, kernel),
                                                cfg.blur)
            return q
        for _ in range(iterations):
            m = self._messages(pool(q, cfg.blur), kernel)
            q = torch.softmax(unary_term + upsample(m, cfg.blur, height, width), dim=1)
        return q

    def _blurred_intermediate(self, iterations: int) -> bool:
        return (self.config.intermediate_resolution == "blurred" and self.config.blur > 1
                and iterations > 1)

    @torch.no_grad()
    def _forward_fused(self, z: torch.Tensor, kernel: torch.Tensor, *, iterations: int,
                       start: tuple[torch.Tensor | None, float]) -> torch.Tensor:
        """The same function as :meth:`_forward_differentiable`, with the full-resolution part
        of every iteration in one native pass (CPU, float32, no autograd)."""
        cfg = self.config
        lib = _native.cpu_library()
        n, c, h, w = z.shape
        b = cfg.blur
        z = z.contiguous()
        hl, wl = -(-h // b), -(-w // b)
        scale = (self.unary_weight - self.message_weight).float().contiguous()
        threads = _native.default_threads()
        blurred = self._blurred_intermediate(iterations)

        message_weight = self.message_weight.float().contiguous()

        def step(unary, messages=None, *, logit_scale=None, out_scale=None, log_unary=None,
                 log_unary_low=None, q_low=None, q_full=None, grid=(h, w, b)) -> None:
            # Messages arrive unweighted: the native pass applies message_weight, so no
            # multithreaded PyTorch op runs between two native calls (its idle threads spin
            # and would compete with ours for the cores).
            ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
            status = lib.convcrf_mean_field_step_f32(
                ptr(unary), ptr(messages), None if messages is None else ptr(message_weight),
                n, c, *grid, ptr(logit_scale), ptr(out_scale), ptr(log_unary),
                ptr(log_unary_low), ptr(q_low), ptr(q_full), threads)
            if status == _native.STATUS_NON_FINITE:
                raise self._non_finite_error()
            _native.check(status, "mean-field step")

        # Step 0: Q = softmax(z), pooled, plus the weighted log-softmax unary term, which the
        # exact mode keeps at full resolution and the fast mode only on the blurred grid.
        q_low = torch.empty(n, c, hl, wl)
        unary_term = None if blurred else _unary_term_buffer(z)
        unary_low = torch.empty(n, c, hl, wl) if blurred else None
        step(z, out_scale=scale, log_unary=unary_term, log_unary_low=unary_low, q_low=q_low)
        initial_q, weight = start
        if initial_q is not None:
            # Pooling is linear: pool(w*Q0 + (1-w)*softmax(z)) = w*pool(Q0) + (1-w)*pool(softmax(z)).
            q_low = weight * pool(initial_q, b) + (1.0 - weight) * q_low
        q_full = torch.empty_like(z)
        if blurred:
            for _ in range(iterations - 1):
                # A step on the blurred grid itself (blur 1: no resampling, no pooling).
                next_low = torch.empty_like(q_low)
                step(unary_low, self._messages(q_low, kernel, weighted=False).contiguous(),
                     q_low=next_low, grid=(hl, wl, 1))
                q_low = next_low
            # The last iteration recomputes the unary term from z on the fly rather than
            # reading a stored full-resolution copy: memory traffic is what costs here.
            step(z, self._messages(q_low, kernel, weighted=False).contiguous(), logit_scale=scale,
                 q_full=q_full)
            return q_full
        for it in range(iterations):
            m = self._messages(q_low, kernel, weighted=False).contiguous()
            last = it == iterations - 1
            next_low = None if last else torch.empty_like(q_low)
            step(unary_term, m, q_low=next_low, q_full=q_full if last else None)
            q_low = next_low
        return q_full
