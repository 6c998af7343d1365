"""The full-resolution part of one mean-field iteration as one differentiable native op (CPU).

    Q     = softmax_C(unary_term + crop(upsample_bilinear(messages_low, blur)))   [N, C, H, W]
    Q_low = avg_pool(Q, blur, ceil_mode, padding excluded)                     [N, C, h, w]

This is exactly what ``ConvCRF._forward_differentiable`` computes with PyTorch ops (softmax,
``F.interpolate`` with ``align_corners=False``, ``avg_pool2d``), in one native forward pass
(``convcrf_mean_field_step_f32``) and two native backward passes
(``convcrf_mean_field_step_backward_f32``) instead of about ten full-resolution PyTorch ops and
their backwards: the training step's time was almost all in those.
"""
from __future__ import annotations

import torch

from .. import _native


def full_resolution_step_available(*tensors: torch.Tensor) -> bool:
    """Whether :func:`full_resolution_step` can run these tensors: CPU, float32, the native
    library built, and no tracing or compilation (exported graphs keep the standard ops)."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    if _native.cpu_library() is None:
        return False
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


class _FullResolutionStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, unary_term, messages_low, blur):
        n, c, h, w = unary_term.shape
        unary_term = unary_term.contiguous()
        messages_low = messages_low.contiguous()
        q_full = torch.empty_like(unary_term)
        q_low = torch.empty_like(messages_low)
        lib = _native.cpu_library()
        status = lib.convcrf_mean_field_step_f32(
            unary_term.data_ptr(), messages_low.data_ptr(), None, n, c, h, w, blur, None, None,
            None, None, q_low.data_ptr(), q_full.data_ptr(), _native.default_threads())
        _native.check(status, "mean-field step")
        ctx.save_for_backward(q_full)
        ctx.blur = blur
        ctx.low_shape = messages_low.shape
        return q_full, q_low

    @staticmethod
    def backward(ctx, grad_q_full, grad_q_low):
        (q_full,) = ctx.saved_tensors
        n, c, h, w = q_full.shape
        ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
        grad_q_full = None if grad_q_full is None else grad_q_full.float().contiguous()
        grad_q_low = None if grad_q_low is None else grad_q_low.float().contiguous()
        grad_unary = torch.empty_like(q_full)
        grad_messages = torch.empty(ctx.low_shape, dtype=q_full.dtype)
        status = _native.cpu_library().convcrf_mean_field_step_backward_f32(
            q_full.data_ptr(), ptr(grad_q_full), ptr(grad_q_low), n, c, h, w, ctx.blur,
            grad_unary.data_ptr(), grad_messages.data_ptr(), _native.default_threads())
        _native.check(status, "mean-field step backward")
        return grad_unary, grad_messages, None


def full_resolution_step(unary_term: torch.Tensor, messages_low: torch.Tensor,
                         blur: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Q [N,C,H,W], Q_low [N,C,ceil(H/blur),ceil(W/blur)])`` as in the module docstring.

    Args:
        unary_term: ``[N, C, H, W]`` float32 CPU logits term (e.g. weighted log-softmax unary).
        messages_low: ``[N, C, ceil(H/blur), ceil(W/blur)]`` float32 CPU messages, already
            weighted (compatibility and message weights applied).
        blur: pooling factor >= 1.

    Differentiable w.r.t. both tensors. Raises ``ValueError`` on shapes that disagree and
    :class:`convcrf_deploy._native.NativeError` when the native call fails.
    """
    if unary_term.dim() != 4 or messages_low.dim() != 4:
        raise ValueError("unary_term and messages_low must be [N, C, H, W] and [N, C, h, w]")
    n, c, h, w = unary_term.shape
    expected = (n, c, -(-h // blur), -(-w // blur))
    if tuple(messages_low.shape) != expected:
        raise ValueError(f"messages_low must have shape {list(expected)} for unary_term "
                         f"{list(unary_term.shape)} and blur {blur}, got {list(messages_low.shape)}")
    return _FullResolutionStep.apply(unary_term, messages_low, blur)
