"""Reference implementations of the ConvCRF ops in plain PyTorch (``F.unfold``).

These follow docs/ops.md literally and are differentiable by autograd. They are the
specification the native kernels are tested against, the fallback when the native library is
absent, and the "F.unfold implementation" that benchmarks compare with (it is how the
original ConvCRF code computes messages). They materialise a ``[N, C, k*k, h, w]`` tensor, so
they are slow and memory-hungry by design.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _unfold_window(x: torch.Tensor, filter_size: int) -> torch.Tensor:
    """``[N, D, h, w] -> [N, D, k*k, h, w]`` where entry ``o = (dy+r)*k + (dx+r)`` holds
    ``x[..., y+dy, x+dx]`` (zero outside the image)."""
    n, d, h, w = x.shape
    r = filter_size // 2
    cols = F.unfold(x, kernel_size=filter_size, padding=r)
    return cols.view(n, d, filter_size * filter_size, h, w)


def window_mask(h: int, w: int, filter_size: int, *, dtype: torch.dtype = torch.float32,
                device: torch.device | str | None = None) -> torch.Tensor:
    """``[1, k*k, h, w]``: 1 where the neighbour at that offset is inside the image and the
    offset is not the centre, else 0."""
    ones = torch.ones(1, 1, h, w, dtype=dtype, device=device)
    mask = _unfold_window(ones, filter_size)[:, 0].clone()
    mask[:, (filter_size * filter_size) // 2] = 0
    return mask


def gaussian_kernel_reference(features: torch.Tensor, filter_size: int) -> torch.Tensor:
    """Reference of :func:`convcrf_deploy.ops.gaussian_kernel`.

    Args:
        features: ``[N, D, h, w]`` features already divided by their bandwidths.
        filter_size: odd window size k.

    Returns:
        ``[N, k*k, h, w]``: ``exp(-0.5 * ||F(y,x) - F(y+dy,x+dx)||^2)``, zero at the centre
        and outside the image.
    """
    n, d, h, w = features.shape
    neighbours = _unfold_window(features, filter_size)
    squared = ((neighbours - features.unsqueeze(2)) ** 2).sum(dim=1)
    mask = window_mask(h, w, filter_size, dtype=features.dtype, device=features.device)
    return torch.exp(-0.5 * squared) * mask


def message_passing_reference(q: torch.Tensor, kernel: torch.Tensor,
                              filter_size: int) -> torch.Tensor:
    """Reference of :func:`convcrf_deploy.ops.message_passing`.

    Args:
        q: ``[N, C, h, w]``.
        kernel: ``[N, k*k, h, w]``.
        filter_size: odd window size k.

    Returns:
        ``[N, C, h, w]``: ``M[n,c,y,x] = sum_o K[n,o,y,x] * q[n,c,y+dy,x+dx]``.
    """
    neighbours = _unfold_window(q, filter_size)
    return (neighbours * kernel.unsqueeze(1)).sum(dim=2)
