"""The two ConvCRF ops (contract in docs/ops.md), as PyTorch custom ops with autograd.

* :func:`gaussian_kernel` ``(features [N,D,h,w], filter_size) -> K [N,k*k,h,w]``
* :func:`message_passing` ``(q [N,C,h,w], K [N,k*k,h,w], filter_size) -> M [N,C,h,w]``

They run the native CPU library on CPU tensors, the native CUDA library on CUDA tensors when
it is built, and the pure-PyTorch reference (:mod:`convcrf_deploy.ops.reference`) otherwise
or when ``implementation="reference"`` is asked for. fp16/bf16 inputs are computed in fp32
and returned in their own dtype.

Example:
    >>> import torch
    >>> from convcrf_deploy import ops
    >>> features = torch.randn(1, 5, 32, 48)
    >>> K = ops.gaussian_kernel(features, filter_size=7)       # [1, 49, 32, 48]
    >>> M = ops.message_passing(torch.rand(1, 21, 32, 48), K, 7)  # [1, 21, 32, 48]
"""
from __future__ import annotations

from typing import Literal

import torch

from .. import _native
from ..config import validate_filter_size
from .reference import gaussian_kernel_reference, message_passing_reference

__all__ = ["gaussian_kernel", "message_passing", "native_kernel_pair",
           "native_pairwise_kernel_from_image", "native_available",
           "Implementation",
           "gaussian_kernel_reference", "message_passing_reference", "validate_filter_size"]

Implementation = Literal["auto", "native", "reference"]
_FLOAT_TYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def native_available(device: str = "cpu") -> bool:
    """Whether the native library for ``device`` ("cpu" or "cuda") is built and loadable."""
    if device == "cpu":
        return _native.cpu_library() is not None
    if device == "cuda":
        return _native.cuda_library() is not None
    return False


def _check_4d(name: str, t: torch.Tensor, layout: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor {layout}, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"{name} must have shape {layout}, got {tuple(t.shape)} "
                         f"({t.dim()} dimensions)")
    if t.dtype not in _FLOAT_TYPES:
        raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")


def _cuda_dtype(t: torch.Tensor) -> int | None:
    """dtype code of the CUDA launchers for ``t``, or None when they do not take it."""
    return {torch.float32: _native.CUDA_FLOAT32, torch.float16: _native.CUDA_FLOAT16}.get(t.dtype)


def _native_dtype(t: torch.Tensor) -> torch.Tensor:
    """Contiguous tensor in a dtype the native libraries compute in (fp32 or fp64)."""
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    return t.contiguous()


def _threads() -> int:
    # torch's setting, capped at the CPUs this process may use (its affinity mask).
    return _native.default_threads()


# ---- native dispatch (no autograd here: the custom ops below add it) ------------------------

def _cpu_call(name: str, dtype: torch.dtype):
    lib = _native.cpu_library()
    suffix = "f64" if dtype == torch.float64 else "f32"
    return getattr(lib, f"convcrf_{name}_{suffix}")


def _run_gaussian_kernel(features: torch.Tensor, filter_size: int) -> torch.Tensor:
    n, d, h, w = features.shape
    if (features.device.type == "cuda" and _cuda_dtype(features) is not None
            and _native.cuda_library() is not None):
        # fp32 and fp16 run natively (fp32 accumulation inside the kernel).
        x = features.contiguous()
        out = torch.empty(n, filter_size * filter_size, h, w, dtype=x.dtype, device=x.device)
        _native.check(_native.cuda_library().convcrf_cuda_gaussian_kernel(
            x.data_ptr(), _cuda_dtype(x), n, d, h, w, filter_size, out.data_ptr(),
            torch.cuda.current_stream(x.device).cuda_stream), "gaussian_kernel (CUDA)")
        return out
    x = _native_dtype(features)
    if features.device.type == "cpu" and _native.cpu_library() is not None:
        out = torch.empty(n, filter_size * filter_size, h, w, dtype=x.dtype)
        _native.check(_cpu_call("gaussian_kernel", x.dtype)(
            x.data_ptr(), n, d, h, w, filter_size, out.data_ptr(), _threads()), "gaussian_kernel")
    else:
        out = gaussian_kernel_reference(x, filter_size)
    return out.to(features.dtype)


def _run_message_passing(q: torch.Tensor, kernel: torch.Tensor, filter_size: int) -> torch.Tensor:
    n, c, h, w = q.shape
    if (q.device.type == "cuda" and _cuda_dtype(q) is not None
            and _native.cuda_library() is not None):
        qx, kx = q.contiguous(), kernel.to(q.dtype).contiguous()
        out = torch.empty_like(qx)
        _native.check(_native.cuda_library().convcrf_cuda_message_passing(
            qx.data_ptr(), kx.data_ptr(), _cuda_dtype(qx), n, c, h, w, filter_size,
            out.data_ptr(), torch.cuda.current_stream(qx.device).cuda_stream),
            "message_passing (CUDA)")
        return out
    qx = _native_dtype(q)
    kx = _native_dtype(kernel).to(qx.dtype)
    if q.device.type == "cpu" and _native.cpu_library() is not None:
        out = torch.empty(n, c, h, w, dtype=qx.dtype)
        _native.check(_cpu_call("message_passing", qx.dtype)(
            qx.data_ptr(), kx.data_ptr(), n, c, h, w, filter_size, out.data_ptr(), _threads()),
            "message_passing")
    else:
        out = message_passing_reference(qx, kx, filter_size)
    return out.to(q.dtype)


# ---- custom ops ------------------------------------------------------------------------------

@torch.library.custom_op("convcrf::gaussian_kernel", mutates_args=())
def _gaussian_kernel_op(features: torch.Tensor, filter_size: int) -> torch.Tensor:
    return _run_gaussian_kernel(features, filter_size)


@_gaussian_kernel_op.register_fake
def _(features: torch.Tensor, filter_size: int) -> torch.Tensor:
    n, _, h, w = features.shape
    return features.new_empty(n, filter_size * filter_size, h, w)


@torch.library.custom_op("convcrf::gaussian_kernel_backward", mutates_args=())
def _gaussian_kernel_backward_op(grad_kernel: torch.Tensor, features: torch.Tensor,
                                 kernel: torch.Tensor, filter_size: int) -> torch.Tensor:
    n, d, h, w = features.shape
    if features.device.type == "cpu" and _native.cpu_library() is not None:
        f = _native_dtype(features)
        k, g = kernel.to(f.dtype).contiguous(), grad_kernel.to(f.dtype).contiguous()
        out = torch.empty_like(f)
        _native.check(_cpu_call("gaussian_kernel_backward", f.dtype)(
            f.data_ptr(), k.data_ptr(), g.data_ptr(), n, d, h, w, filter_size, out.data_ptr(),
            _threads()), "gaussian_kernel backward")
        return out.to(features.dtype)
    # Other devices: differentiate the reference (same formula, computed by autograd).
    with torch.enable_grad():
        f = features.detach().float().requires_grad_(True)
        (grad,) = torch.autograd.grad(gaussian_kernel_reference(f, filter_size), f,
                                      grad_kernel.float())
    return grad.to(features.dtype)


@_gaussian_kernel_backward_op.register_fake
def _(grad_kernel, features, kernel, filter_size):
    return torch.empty_like(features)


def _gaussian_kernel_setup(ctx, inputs, output):
    features, filter_size = inputs
    ctx.save_for_backward(features, output)
    ctx.filter_size = filter_size


def _gaussian_kernel_backward(ctx, grad_kernel):
    features, kernel = ctx.saved_tensors
    grad = None
    if ctx.needs_input_grad[0]:
        grad = _gaussian_kernel_backward_op(grad_kernel.contiguous(), features, kernel,
                                            ctx.filter_size)
    return grad, None


_gaussian_kernel_op.register_autograd(_gaussian_kernel_backward, setup_context=_gaussian_kernel_setup)


@torch.library.custom_op("convcrf::message_passing", mutates_args=())
def _message_passing_op(q: torch.Tensor, kernel: torch.Tensor, filter_size: int) -> torch.Tensor:
    return _run_message_passing(q, kernel, filter_size)


@_message_passing_op.register_fake
def _(q, kernel, filter_size):
    return torch.empty_like(q)


@torch.library.custom_op("convcrf::message_passing_backward", mutates_args=())
def _message_passing_backward_op(grad_messages: torch.Tensor, q: torch.Tensor,
                                 kernel: torch.Tensor, filter_size: int,
                                 need_q: bool, need_kernel: bool) -> list[torch.Tensor]:
    n, c, h, w = q.shape
    if q.device.type == "cpu" and _native.cpu_library() is not None:
        g = _native_dtype(grad_messages)
        qx, kx = q.to(g.dtype).contiguous(), kernel.to(g.dtype).contiguous()
        grad_q = torch.zeros_like(qx)
        grad_k = torch.zeros_like(kx)
        if need_q:
            _native.check(_cpu_call("message_passing_transposed", g.dtype)(
                g.data_ptr(), kx.data_ptr(), n, c, h, w, filter_size, grad_q.data_ptr(),
                _threads()), "message_passing backward (q)")
        if need_kernel:
            _native.check(_cpu_call("message_passing_kernel_grad", g.dtype)(
                g.data_ptr(), qx.data_ptr(), n, c, h, w, filter_size, grad_k.data_ptr(),
                _threads()), "message_passing backward (kernel)")
        return [grad_q.to(q.dtype), grad_k.to(kernel.dtype)]
    with torch.enable_grad():
        qf = q.detach().float().requires_grad_(True)
        kf = kernel.detach().float().requires_grad_(True)
        grad_q, grad_k = torch.autograd.grad(message_passing_reference(qf, kf, filter_size),
                                             (qf, kf), grad_messages.float())
    return [grad_q.to(q.dtype), grad_k.to(kernel.dtype)]


@_message_passing_backward_op.register_fake
def _(grad_messages, q, kernel, filter_size, need_q, need_kernel):
    return [torch.empty_like(q), torch.empty_like(kernel)]


def _message_passing_setup(ctx, inputs, output):
    q, kernel, filter_size = inputs
    ctx.save_for_backward(q, kernel)
    ctx.filter_size = filter_size


def _message_passing_backward(ctx, grad_messages):
    q, kernel = ctx.saved_tensors
    need_q, need_kernel = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not (need_q or need_kernel):
        return None, None, None
    grad_q, grad_k = _message_passing_backward_op(grad_messages.contiguous(), q, kernel,
                                                  ctx.filter_size, need_q, need_kernel)
    return (grad_q if need_q else None), (grad_k if need_kernel else None), None


_message_passing_op.register_autograd(_message_passing_backward,
                                      setup_context=_message_passing_setup)


# ---- public API ------------------------------------------------------------------------------

def _plain_call(*tensors: torch.Tensor) -> bool:
    """True when no autograd, tracing or tensor subclass is involved, so the implementation can
    be called directly. The custom op's dispatcher is skipped then: besides its per-call cost,
    its first call imports torch._dynamo, which takes seconds and delays a video's first frame."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    grad = torch.is_grad_enabled()
    return all(type(t) is torch.Tensor and not (grad and t.requires_grad) for t in tensors)


def _require_native(implementation: str, device: torch.device) -> None:
    if implementation not in ("auto", "native", "reference"):
        raise ValueError(f"implementation must be 'auto', 'native' or 'reference', got "
                         f"{implementation!r}")
    if implementation == "native" and not native_available(device.type):
        raise RuntimeError(f"implementation='native' but the native {device.type} library is "
                           "not built; reinstall with `pip install .` (a C++ compiler is needed)")


def gaussian_kernel(features: torch.Tensor, filter_size: int, *,
                    implementation: Implementation = "auto") -> torch.Tensor:
    """Windowed Gaussian kernel of per-pixel features.

    Args:
        features: ``[N, D, h, w]`` float tensor, features already divided by their bandwidths.
        filter_size: odd window size ``k`` (1..31).
        implementation: ``"auto"`` (native when built, else reference), ``"native"`` or
            ``"reference"``.

    Returns:
        ``K [N, k*k, h, w]`` with ``K[n, (dy+r)*k + (dx+r), y, x] =
        exp(-0.5 * sum_d (F[n,d,y,x] - F[n,d,y+dy,x+dx])^2)``, ``r = k // 2``, zero at the
        centre and where ``(y+dy, x+dx)`` is outside the image. Same dtype as ``features``.
    """
    _check_4d("features", features, "[N, D, h, w]")
    validate_filter_size(filter_size)
    _require_native(implementation, features.device)
    if implementation == "reference":
        return gaussian_kernel_reference(features, filter_size)
    if _plain_call(features):
        return _run_gaussian_kernel(features, filter_size)
    return _gaussian_kernel_op(features, filter_size)


def native_kernel_pair(features_a: torch.Tensor, features_b: torch.Tensor,
                       weight_a: torch.Tensor | float, weight_b: torch.Tensor | float,
                       filter_size: int) -> torch.Tensor | None:
    """``weight_a * gaussian_kernel(features_a) + weight_b * gaussian_kernel(features_b)`` in
    one native pass, or ``None`` where that fast path does not apply (not CPU float32, the
    library missing, autograd, tracing or compilation): callers then compose the two ops.

    Args:
        features_a, features_b: ``[N, Da, h, w]`` and ``[N, Db, h, w]`` float32 CPU features.
        weight_a, weight_b: scalars (Python floats or one-element tensors).
        filter_size: odd window size ``k``.

    Returns:
        ``[N, k*k, h, w]`` float32, or ``None``. Inference only: one PyTorch op per kernel and
        weight (each multithreaded, each a wake-up of PyTorch's threads) become one call.
    """
    weights = [w for w in (weight_a, weight_b) if isinstance(w, torch.Tensor)]
    if torch.is_grad_enabled() and any(w.requires_grad for w in weights):
        return None  # the weights are being trained: compose the differentiable ops
    if not _plain_call(features_a, features_b) or _native.cpu_library() is None:
        return None
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in (features_a, features_b)):
        return None
    validate_filter_size(filter_size)
    features = torch.cat([features_a, features_b], dim=1).contiguous()
    n, d, h, w = features.shape
    out = torch.empty(n, filter_size * filter_size, h, w)
    _native.check(_native.cpu_library().convcrf_pairwise_kernel_f32(
        features.data_ptr(), n, d, h, w, filter_size, features_a.shape[1], float(weight_a),
        float(weight_b), out.data_ptr(), _threads()), "pairwise kernel")
    return out


def native_pairwise_kernel_from_image(image: torch.Tensor, blur: int, filter_size: int,
                                      theta_alpha: float | torch.Tensor,
                                      theta_beta: float | torch.Tensor,
                                      theta_gamma: float | torch.Tensor,
                                      weight_a: float | torch.Tensor,
                                      weight_b: float | torch.Tensor) -> torch.Tensor | None:
    """ConvCRF's whole inference pairwise kernel from the image in native code, or ``None``
    where that path does not apply (not a plain CPU float32 tensor, the library missing,
    tracing or compilation).

    Args:
        image: ``[N, 3, H, W]`` float32 RGB (0..255).
        blur: pooling factor >= 1; filter_size: odd ``k``.
        theta_alpha, theta_beta, theta_gamma: appearance position/colour and smoothness
            bandwidths (pixels, colour units, pixels).
        weight_a, weight_b: appearance and smoothness kernel weights.
        (Scalars may be one-element tensors; they are read only once the fast path applies.)

    Returns:
        ``[N, k*k, ceil(H/blur), ceil(W/blur)]`` float32: ``weight_a * G((x, y)/theta_alpha,
        rgb/theta_beta) + weight_b * G((x, y)/theta_gamma)`` on the pooled grid, as
        ``ConvCRF.pairwise_kernel`` without a feature transform. Inference only (no autograd):
        the pooling and feature ops, each a multithreaded PyTorch op, become part of one call.
    """
    if not _plain_call(image) or _native.cpu_library() is None:
        return None
    if image.device.type != "cpu" or image.dtype != torch.float32 or image.dim() != 4:
        return None
    validate_filter_size(filter_size)
    x = image.contiguous()
    n, _, h, w = x.shape
    out = torch.empty(n, filter_size * filter_size, -(-h // blur), -(-w // blur))
    _native.check(_native.cpu_library().convcrf_pairwise_kernel_from_image_f32(
        x.data_ptr(), n, h, w, blur, filter_size, float(theta_alpha), float(theta_beta),
        float(theta_gamma), float(weight_a), float(weight_b), out.data_ptr(), _threads()),
        "pairwise kernel")
    return out


def message_passing(q: torch.Tensor, kernel: torch.Tensor, filter_size: int, *,
                    implementation: Implementation = "auto") -> torch.Tensor:
    """Windowed message passing: a per-pixel filter shared by all classes.

    Args:
        q: ``[N, C, h, w]`` (class probabilities in mean-field inference).
        kernel: ``[N, k*k, h, w]``, e.g. from :func:`gaussian_kernel`.
        filter_size: odd window size ``k``; must satisfy ``kernel.shape[1] == k*k``.
        implementation: see :func:`gaussian_kernel`.

    Returns:
        ``M [N, C, h, w]`` with ``M[n,c,y,x] = sum_{dy,dx} K[n,(dy+r)*k+(dx+r),y,x] *
        q[n,c,y+dy,x+dx]`` (terms outside the image are zero). Same dtype as ``q``.
    """
    _check_4d("q", q, "[N, C, h, w]")
    _check_4d("kernel", kernel, "[N, k*k, h, w]")
    validate_filter_size(filter_size)
    n, c, h, w = q.shape
    expected = (n, filter_size * filter_size, h, w)
    if tuple(kernel.shape) != expected:
        raise ValueError(f"kernel must have shape [N, k*k, h, w] = {list(expected)} for q of "
                         f"shape {list(q.shape)} and filter_size {filter_size}, got "
                         f"{list(kernel.shape)}")
    if q.device != kernel.device:
        raise ValueError(f"q is on {q.device} but kernel is on {kernel.device}")
    _require_native(implementation, q.device)
    if implementation == "reference":
        return message_passing_reference(q, kernel.to(q.dtype), filter_size)
    if _plain_call(q, kernel):
        return _run_message_passing(q, kernel, filter_size)
    return _message_passing_op(q, kernel, filter_size)
