"""The mean-field schedule of ConvCRF, written once for every executor (numpy only, no torch).

Paper Sec. 3 (docs restated in ``../shared/docs/convcrf.md``), with the reference code's
per-class weighting and the blur of Sec. 4::

    S = unary_weight - message_weight                         # [C], per class
    K = pairwise kernel of the image                          # once per image, blurred grid
    Q_low = pool(softmax(z))                                  # warm start: see below
    repeat iterations:
        M = compatibility(message_passing(Q_low, K))          # blurred grid; Potts: identity
        Q = softmax(S * log_softmax(z) + upsample(message_weight * M))
        Q_low = pool(Q)

``pool`` is average pooling by ``blur`` whose last window covers the remainder; ``upsample``
is bilinear by ``blur`` (half-pixel centres), cropped to ``H x W``.

Warm start (video): the start is ``w * Q_prev + (1 - w) * softmax(z)``; pooling is linear, so
``Q_low = w * pool(Q_prev) + (1 - w) * pool(softmax(z))``, and ``iterations`` may be fewer
than the configured count.

Fast mode (``intermediate_resolution="blurred"`` with ``blur > 1`` and more than one
iteration): all but the last iteration stay on the blurred grid,
``Q_low = softmax(pool(S * log_softmax(z)) + message_weight * M)``; the last iteration is the
full-resolution update above. One iteration is the same in both modes.

An *executor* does the arithmetic of one call (one batch of logits and images) on some array
library: :class:`convcrf_deploy.model.executors.TorchExecutor` (PyTorch ops and the custom
ops, differentiable; what export traces) and :class:`convcrf_deploy.crf.native.NativeExecutor`
(NumPy arrays and the native C library; ConvCRF's CPU inference path and the runtime's CRF).
The order of the steps, the warm start and the mode live here only.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence

from ..config import CRFConfig

__all__ = ["MeanFieldExecutor", "mean_field", "blurred_intermediate", "check_arguments"]


class MeanFieldExecutor(Protocol):
    """The arithmetic of one mean-field call, on the arrays of one library.

    An executor is created per call, for one batch: ``logits`` ``[N, C, H, W]`` and an image
    ``[N, 3, H, W]`` RGB 0..255, with the CRF's parameters. Arrays (``Array`` below) are the
    executor's own type (``torch.Tensor``, ``numpy.ndarray``), float32; "blurred grid" is
    ``[N, C, ceil(H/blur), ceil(W/blur)]``. An executor may keep what :meth:`start` computes
    (the unary terms) for the updates of the same call.
    """

    #: whether the CRF has a learned compatibility (+C); Potts needs no transform.
    has_compatibility: bool

    def softmax(self) -> Any:
        """``softmax(z)`` over classes, ``[N, C, H, W]`` (the result of zero iterations)."""

    def pairwise_kernel(self) -> Any:
        """The pairwise kernel ``[N, k*k, h, w]`` on the blurred grid (built once per call)."""

    def start(self, blurred: bool) -> Any:
        """Prepare the unary term ``S * log_softmax(z)`` (full resolution; pooled too when
        ``blurred`` iterations follow) and return ``pool(softmax(z))`` on the blurred grid."""

    def pool(self, q: Any) -> Any:
        """``[N, C, H, W]`` probabilities -> their blurred-grid means (for a warm start)."""

    def message_passing(self, q_low: Any, kernel: Any) -> Any:
        """Messages ``[N, C, h, w]`` of ``q_low`` under ``kernel`` (docs/ops.md)."""

    def compatibility(self, messages: Any) -> Any:
        """The learned compatibility (a 1x1 map over classes) applied to ``messages``."""

    def blurred_update(self, messages: Any) -> Any:
        """``softmax(pool(S * log_softmax(z)) + message_weight * messages)`` on the blurred
        grid (an intermediate iteration of the fast mode)."""

    def full_resolution_update(self, messages: Any, last: bool) -> Any:
        """``Q = softmax(S * log_softmax(z) + upsample(message_weight * messages))``; returns
        ``Q`` ``[N, C, H, W]`` when ``last``, else ``pool(Q)`` (the next iteration's input)."""


def blurred_intermediate(config: CRFConfig, iterations: int) -> bool:
    """Whether ``iterations`` run in the fast mode (all but the last on the blurred grid)."""
    return config.intermediate_resolution == "blurred" and config.blur > 1 and iterations > 1


def check_arguments(iterations: Any, logits_shape: Sequence[int],
                    initial_q_shape: Sequence[int] | None, initial_q_weight: float) -> None:
    """Validate a call's schedule arguments (every CRF entry point states them alike).

    Raises:
        ValueError: ``iterations`` not an int >= 0; ``initial_q`` of another shape than the
            logits; ``initial_q_weight`` outside 0..1.
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be an int >= 0, got {iterations!r}")
    if initial_q_shape is None:
        return
    if tuple(initial_q_shape) != tuple(logits_shape):
        raise ValueError(f"initial_q must have the shape of unary_logits "
                         f"{tuple(logits_shape)}, got {tuple(initial_q_shape)}")
    if not 0.0 <= initial_q_weight <= 1.0:
        raise ValueError(f"initial_q_weight must be in 0..1, got {initial_q_weight}")


def mean_field(executor: MeanFieldExecutor, config: CRFConfig, *, iterations: int | None = None,
               initial_q: Any = None, initial_q_weight: float = 1.0) -> Any:
    """Run mean-field inference (the module docstring's schedule) with ``executor``.

    Args:
        executor: the call's :class:`MeanFieldExecutor`.
        config: the CRF's configuration (``blur``, ``intermediate_resolution``, ``iterations``).
        iterations: iterations of this call (``None``: ``config.iterations``); the caller has
            validated it (:func:`check_arguments`).
        initial_q: ``[N, C, H, W]`` probabilities to start from (the executor's array type),
            e.g. the previous video frame's result; ``None``: ``softmax(z)``.
        initial_q_weight: weight ``w`` of ``initial_q`` in the start, 0..1.

    Returns:
        the probabilities ``[N, C, H, W]`` as the executor's array.
    """
    iterations = config.iterations if iterations is None else iterations
    if iterations == 0:
        return executor.softmax()
    kernel = executor.pairwise_kernel()
    fast = blurred_intermediate(config, iterations)
    # q: Q on the blurred grid, until the last update returns it at full resolution.
    q = executor.start(blurred=fast)
    if initial_q is not None:
        q = initial_q_weight * executor.pool(initial_q) + (1.0 - initial_q_weight) * q

    def messages(q_low):
        m = executor.message_passing(q_low, kernel)
        return executor.compatibility(m) if executor.has_compatibility else m

    for _ in range(iterations - 1 if fast else 0):
        q = executor.blurred_update(messages(q))
    full_resolution = 1 if fast else iterations
    for index in range(full_resolution):
        q = executor.full_resolution_update(messages(q), last=index == full_resolution - 1)
    return q
