"""The native CRF: mean-field on the native C library with NumPy and ctypes only (no torch).

* :class:`NativeExecutor` is the :class:`~convcrf_deploy.crf.schedule.MeanFieldExecutor` on
  NumPy float32 arrays: ``convcrf_message_passing_f32`` for the messages and
  ``convcrf_mean_field_step_f32`` for the full-resolution part of every iteration (upsample,
  add, softmax, pool) or a step on the blurred grid. ``ConvCRF``'s CPU inference path runs it
  on zero-copy views of its tensors; the runtime runs it through :class:`NativeCRF`.
* :class:`NativeCRF` is the runtime's CRF (``probabilities = crf(logits, image)``): the
  trained parameters as arrays, the pairwise kernel built by
  ``convcrf_pairwise_kernel_from_image_f32`` (``convcrf_pairwise_kernel_f32`` on NumPy
  features with the +T map), and the schedule of :mod:`.schedule`, warm start included.

The only arithmetic done here in NumPy is what ``ConvCRF`` does in PyTorch around those calls:
with +T, the pooled image and feature maps (positions and colours over their bandwidths, the
1x1 map); the +C compatibility matrix; the pooling of a warm start's previous result.
``ops/reference.py`` and ``docs/ops.md`` are the specification; there is no second
implementation of the ops here.

Trained parameters travel inside the exported ONNX file: ``convcrf-export`` writes the CRF's
``state_dict`` as JSON under the metadata key :data:`STATE_KEY` next to ``convcrf.crf_config``,
so one file still carries everything (:meth:`NativeCRF.from_onnx_props`).

Thread safety: a :class:`NativeCRF` holds only read-only parameters; every call has its own
executor and buffers (a per-thread scratch buffer for the full-resolution unary term), so one
instance may be called from several threads at once. An executor serves one call.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from .. import _native
from ..config import CRFConfig
from ..metadata import ONNX_KEYS
from .schedule import check_arguments, mean_field

#: ONNX metadata key holding the CRF's ``state_dict`` (written by ``convcrf-export``).
STATE_KEY = ONNX_KEYS["crf_state"]

#: ``state_dict`` entries every ConvCRF has (+C and +T add ``compatibility.weight`` and
#: ``feature_transform.weight`` / ``.bias``).
_REQUIRED = ("log_appearance_position_bandwidth", "log_appearance_color_bandwidth",
             "log_smoothness_bandwidth", "appearance_weight", "smoothness_weight",
             "message_weight", "unary_weight")


class NativeCRFUnavailable(RuntimeError):
    """The native CRF cannot run this model (library missing, parameters not in the file);
    the message says why, for ``describe()`` and logs."""


def library_available() -> bool:
    """Whether the native CPU library loads (``False`` rather than an error when absent)."""
    try:
        return _native.cpu_library() is not None
    except _native.NativeError:
        return False


def _pool(x: np.ndarray, blur: int) -> np.ndarray:
    """``[N, C, H, W] -> [N, C, ceil(H/b), ceil(W/b)]`` window means, the last window of each
    axis covering only the pixels that remain (``ConvCRF``'s ``pool``)."""
    if blur == 1:
        return x
    n, c, h, w = x.shape
    hl, wl = -(-h // blur), -(-w // blur)
    padded = np.zeros((n, c, hl * blur, wl * blur), np.float32)
    padded[:, :, :h, :w] = x
    sums = padded.reshape(n, c, hl, blur, wl, blur).sum(axis=(3, 5), dtype=np.float32)
    rows = np.minimum(blur, h - np.arange(hl) * blur).astype(np.float32)
    cols = np.minimum(blur, w - np.arange(wl) * blur).astype(np.float32)
    return sums / (rows[:, None] * cols[None, :])


def _axis_centres(size: int, blur: int) -> np.ndarray:
    """``[ceil(size/blur)]``: the mean full-resolution coordinate of each pooled window."""
    starts = np.arange(0, size, blur, dtype=np.float32)
    ends = np.minimum(starts + blur, np.float32(size))
    return (starts + ends - 1) / 2


def argmax_classes(x: np.ndarray) -> np.ndarray:
    """``[N, C, H, W] -> [N, H, W]`` int64 index of the largest class (the first on ties).

    One vectorised pass per class: ``np.argmax`` over the class axis of NCHW strides through
    memory and is several times slower."""
    best = x[:, 0].copy()
    index = np.zeros(best.shape, np.int64)
    for c in range(1, x.shape[1]):
        larger = x[:, c] > best
        np.copyto(best, x[:, c], where=larger)
        index[larger] = c
    return index


def _empty(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised float32 array. (Aligning it to 64 bytes, as PyTorch's allocator does,
    measured no faster here: the native passes use unaligned loads.)"""
    return np.empty(shape, np.float32)


# Per-thread scratch for the full-resolution unary term, reused while the shape stays the
# same: a fresh 10-100 MB buffer per frame costs milliseconds of page faults.
_scratch = threading.local()


def _scratch_like(shape: tuple[int, ...]) -> np.ndarray:
    buffer = getattr(_scratch, "unary_term", None)
    if buffer is None or buffer.shape != shape:
        buffer = _empty(shape)
        _scratch.unary_term = buffer
    return buffer


@dataclass(frozen=True)
class MeanFieldWeights:
    """The CRF's per-class weights as float32 arrays, as the native steps take them.

    Attributes:
        message_weight: ``[C]`` weight of the messages (the reference code's ``w_c``).
        unary_scale: ``[C]`` weight of ``log_softmax(z)``: ``unary_weight - message_weight``.
        compatibility: ``[C, C]`` learned compatibility (+C, the 1x1 map's matrix) or None
            (Potts).
    """

    message_weight: np.ndarray
    unary_scale: np.ndarray
    compatibility: np.ndarray | None = None


def _non_finite_logits() -> ValueError:
    return ValueError("logits contain NaN or infinite values; the CRF expects finite logits")


class NativeExecutor:
    """The :class:`~convcrf_deploy.crf.schedule.MeanFieldExecutor` on NumPy float32 arrays and
    the native CPU library, for one call.

    Args:
        config: the CRF's configuration (``blur``, ``filter_size``).
        weights: the per-class weights (:class:`MeanFieldWeights`).
        logits: C-contiguous float32 ``[N, C, H, W]`` unary logits, finite (a NaN or infinite
            value raises ``non_finite()`` from the first native pass).
        pairwise_kernel: returns the C-contiguous float32 kernel ``[N, k*k, h, w]`` on the
            blurred grid (called once, by the schedule).
        threads: native worker threads (>= 1).
        non_finite: the exception to raise for non-finite logits (each caller words it for
            its own argument names).

    Arrays it returns are its own (freshly allocated). Not thread-safe: one executor per call.
    """

    def __init__(self, config: CRFConfig, weights: MeanFieldWeights, logits: np.ndarray,
                 pairwise_kernel: Callable[[], np.ndarray], threads: int,
                 non_finite: Callable[[], Exception] = _non_finite_logits):
        self.lib = _native.cpu_library()
        self.config = config
        self.weights = weights
        self.z = logits
        self._pairwise_kernel = pairwise_kernel
        self.threads = int(threads)
        self.non_finite = non_finite
        self.has_compatibility = weights.compatibility is not None
        n, c, h, w = logits.shape
        b = config.blur
        self.low_shape = (n, c, -(-h // b), -(-w // b))
        self.unary_term: np.ndarray | None = None
        self.unary_low: np.ndarray | None = None

    def _step(self, unary, messages=None, *, logit_scale=None, out_scale=None, log_unary=None,
              log_unary_low=None, q_low=None, q_full=None, blurred_grid: bool = False) -> None:
        # Messages arrive unweighted: the native pass applies message_weight. On the blurred
        # grid itself the step runs with blur 1 (no resampling, no pooling).
        ptr = lambda a: None if a is None else a.ctypes.data  # noqa: E731
        n, c = unary.shape[:2]
        grid = (*self.low_shape[2:], 1) if blurred_grid else (*self.z.shape[2:], self.config.blur)
        status = self.lib.convcrf_mean_field_step_f32(
            ptr(unary), ptr(messages),
            None if messages is None else ptr(self.weights.message_weight), n, c, *grid,
            ptr(logit_scale), ptr(out_scale), ptr(log_unary), ptr(log_unary_low), ptr(q_low),
            ptr(q_full), self.threads)
        if status == _native.STATUS_NON_FINITE:
            raise self.non_finite()
        _native.check(status, "mean-field step")

    # -- the MeanFieldExecutor protocol -----------------------------------------------------------
    def softmax(self) -> np.ndarray:
        if not np.isfinite(self.z).all():
            raise self.non_finite()
        e = np.exp(self.z - self.z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def pairwise_kernel(self) -> np.ndarray:
        return self._pairwise_kernel()

    def start(self, blurred: bool) -> np.ndarray:
        # One native pass: softmax(z) pooled, and the weighted log-softmax unary term, which
        # the exact mode keeps at full resolution and the fast mode only on the blurred grid
        # (its last iteration recomputes the term from z on the fly: memory traffic is what
        # costs here, not arithmetic).
        q_low = _empty(self.low_shape)
        if blurred:
            self.unary_low = _empty(self.low_shape)
        else:
            self.unary_term = _scratch_like(self.z.shape)
        self._step(self.z, out_scale=self.weights.unary_scale, log_unary=self.unary_term,
                   log_unary_low=self.unary_low, q_low=q_low)
        return q_low

    def pool(self, q: np.ndarray) -> np.ndarray:
        return _pool(np.ascontiguousarray(q, np.float32), self.config.blur)

    def message_passing(self, q_low: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        q_low = np.ascontiguousarray(q_low, np.float32)
        n, c, h, w = q_low.shape
        m = _empty(q_low.shape)
        _native.check(self.lib.convcrf_message_passing_f32(
            q_low.ctypes.data, kernel.ctypes.data, n, c, h, w, self.config.filter_size,
            m.ctypes.data, self.threads), "convcrf_message_passing_f32")
        return m

    def compatibility(self, messages: np.ndarray) -> np.ndarray:
        n, c, h, w = messages.shape
        return np.ascontiguousarray(np.matmul(self.weights.compatibility,
                                              messages.reshape(n, c, h * w)).reshape(n, c, h, w))

    def blurred_update(self, messages: np.ndarray) -> np.ndarray:
        q_low = _empty(self.low_shape)
        self._step(self.unary_low, messages, q_low=q_low, blurred_grid=True)
        return q_low

    def full_resolution_update(self, messages: np.ndarray, last: bool) -> np.ndarray:
        q_low = None if last else _empty(self.low_shape)
        q_full = _empty(self.z.shape) if last else None
        if self.unary_term is None:  # fast mode: the unary term from z on the fly
            self._step(self.z, messages, logit_scale=self.weights.unary_scale, q_low=q_low,
                       q_full=q_full)
        else:
            self._step(self.unary_term, messages, q_low=q_low, q_full=q_full)
        return q_full if last else q_low


class NativeCRF:
    """ConvCRF inference (``probabilities = crf(logits, image)``) on the native CPU library.

    Args:
        config: the CRF's :class:`~convcrf_deploy.CRFConfig`.
        state: the ConvCRF's ``state_dict`` as arrays (or nested lists): the log bandwidths,
            kernel weights, ``message_weight`` ``[C]``, ``unary_weight``, and with +C
            ``compatibility.weight`` ``[C, C, 1, 1]``, with +T ``feature_transform.weight``
            ``[2, 5, 1, 1]`` and ``feature_transform.bias`` ``[2]``.
        threads: native worker threads per call (``None``: :func:`_native.default_threads`).

    Raises:
        NativeCRFUnavailable: the native library is not built, or ``state`` lacks a parameter
            the configuration needs.

    Call with ``logits`` float32 ``[N, C, H, W]`` (unary logits; any per-pixel additive
    constant is irrelevant) and ``image`` float32 ``[N, 3, H, W]`` RGB 0..255, optionally a
    warm start (``initial_q=``, ``initial_q_weight=``, ``iterations=``, as
    ``ConvCRF.forward``); returns the probabilities float32 ``[N, C, H, W]`` (paper Sec. 3,
    the schedule of :mod:`convcrf_deploy.crf.schedule`, the one ``ConvCRF`` runs). Raises
    ``ValueError`` on bad shapes or non-finite logits (:meth:`__call__`).
    """

    def __init__(self, config: CRFConfig, state: Mapping[str, Any], threads: int | None = None):
        if not library_available():
            raise NativeCRFUnavailable("the native CPU library libconvcrf_cpu is not built "
                                       "(reinstall with `pip install .` from the checkout)")
        self.lib = _native.cpu_library()
        self.config = config
        self.threads = threads
        needed = list(_REQUIRED)
        if config.compatibility == "learned":
            needed.append("compatibility.weight")
        if config.learned_features:
            needed += ["feature_transform.weight", "feature_transform.bias"]
        missing = [name for name in needed if name not in state]
        if missing:
            raise NativeCRFUnavailable(f"the CRF parameters lack {missing}")
        p = {name: np.asarray(state[name], np.float32) for name in needed}
        c = config.num_classes
        if p["message_weight"].shape != (c,):
            raise NativeCRFUnavailable(f"message_weight has shape {p['message_weight'].shape}, "
                                       f"expected ({c},)")
        # Bandwidths are stored as logs, as in ConvCRF; exp in float32 like torch's.
        self.theta_alpha = np.exp(p["log_appearance_position_bandwidth"])
        self.theta_beta = np.exp(p["log_appearance_color_bandwidth"])
        self.theta_gamma = np.exp(p["log_smoothness_bandwidth"])
        self.appearance_weight = p["appearance_weight"]
        self.smoothness_weight = p["smoothness_weight"]
        message_weight = np.ascontiguousarray(p["message_weight"])
        self.weights = MeanFieldWeights(
            message_weight=message_weight,
            unary_scale=np.ascontiguousarray(p["unary_weight"] - message_weight),
            compatibility=(np.ascontiguousarray(p["compatibility.weight"].reshape(c, c))
                           if "compatibility.weight" in p else None))
        self.feature_weight = (p["feature_transform.weight"].reshape(2, 5)
                               if "feature_transform.weight" in p else None)
        self.feature_bias = p.get("feature_transform.bias")

    @classmethod
    def from_onnx_props(cls, props: Mapping[str, str], threads: int | None = None) -> "NativeCRF":
        """From an exported file's metadata_props (``convcrf.crf_config`` and
        :data:`STATE_KEY`); raises :class:`NativeCRFUnavailable` when either is missing (files
        exported before the parameters were stored, graphs without CRF) and ``ValueError``
        when they are there but unreadable (a damaged file)."""
        if ONNX_KEYS["crf_config"] not in props:
            raise NativeCRFUnavailable("the graph has no CRF (no convcrf.crf_config metadata)")
        if STATE_KEY not in props:
            raise NativeCRFUnavailable(f"the file does not carry the CRF's parameters ({STATE_KEY}"
                                       "); re-export it with this version of convcrf-export")
        try:
            config = CRFConfig.from_json(props[ONNX_KEYS["crf_config"]])
            state = json.loads(props[STATE_KEY])
            if not isinstance(state, dict):
                raise ValueError(f"expected a JSON object, got {type(state).__name__}")
            return cls(config, state, threads)
        except (ValueError, TypeError) as exc:
            # Present but unreadable: the file is damaged, which must not pass as a fallback.
            raise ValueError(f"the CRF metadata ({STATE_KEY}) is damaged: {exc}; re-export "
                             "the model") from exc

    # -- the pieces ConvCRF computes in PyTorch ------------------------------------------------
    def _call(self, name: str, *args) -> None:
        _native.check(getattr(self.lib, name)(*args), name)

    def _threads(self) -> int:
        return int(self.threads) if self.threads else _native.default_threads()

    def pairwise_kernel(self, image: np.ndarray) -> np.ndarray:
        """``[N, k*k, h, w]`` on the blurred grid (``ConvCRF.pairwise_kernel``), built by the
        same native calls as ConvCRF's inference path: the whole kernel from the image in one
        call without a feature transform, the weighted kernel pair from NumPy features with
        the +T map."""
        cfg = self.config
        b, k = cfg.blur, cfg.filter_size
        image = np.ascontiguousarray(image, np.float32)
        n, _, height, width = image.shape
        h, w = -(-height // b), -(-width // b)
        out = _empty((n, k * k, h, w))
        if self.feature_weight is None:
            self._call("convcrf_pairwise_kernel_from_image_f32", image.ctypes.data, n, height,
                       width, b, k, float(self.theta_alpha), float(self.theta_beta),
                       float(self.theta_gamma), float(self.appearance_weight),
                       float(self.smoothness_weight), out.ctypes.data, self._threads())
            return out
        rgb = _pool(image, b)
        ys = np.broadcast_to(_axis_centres(height, b).reshape(1, 1, h, 1), (n, 1, h, w))
        xs = np.broadcast_to(_axis_centres(width, b).reshape(1, 1, 1, w), (n, 1, h, w))
        position = np.concatenate([xs, ys], axis=1)
        colour = rgb / self.theta_beta
        inputs = np.concatenate([position / self.theta_gamma, colour], axis=1)  # [N, 5, h, w]
        smoothness = (np.einsum("od,ndhw->nohw", self.feature_weight, inputs)
                      + self.feature_bias.reshape(1, 2, 1, 1))
        features = np.ascontiguousarray(np.concatenate(
            [position / self.theta_alpha, colour, smoothness], axis=1), np.float32)
        self._call("convcrf_pairwise_kernel_f32", features.ctypes.data, n, features.shape[1],
                   h, w, k, 5, float(self.appearance_weight), float(self.smoothness_weight),
                   out.ctypes.data, self._threads())
        return out

    # -- inference ------------------------------------------------------------------------------
    def __call__(self, logits: np.ndarray, image: np.ndarray, *,
                 initial_q: np.ndarray | None = None, initial_q_weight: float = 1.0,
                 iterations: int | None = None) -> np.ndarray:
        """Mean-field inference (:func:`~convcrf_deploy.crf.schedule.mean_field`).

        Args:
            logits: float32 ``[N, C, H, W]`` unary logits.
            image: float32 ``[N, 3, H, W]`` RGB 0..255.
            initial_q: optional float32 ``[N, C, H, W]`` probabilities to start from (warm
                start, e.g. the previous video frame's result): the start is
                ``initial_q_weight * initial_q + (1 - initial_q_weight) * softmax(logits)``.
            initial_q_weight: weight of ``initial_q``, 0..1.
            iterations: mean-field iterations of this call (default ``config.iterations``).

        Returns:
            float32 ``[N, C, H, W]`` probabilities.

        Raises:
            ValueError: bad shapes; non-finite logits or ``initial_q``; ``iterations`` or
                ``initial_q_weight`` out of range.
        """
        cfg = self.config
        z = np.ascontiguousarray(logits, np.float32)
        image = np.ascontiguousarray(image, np.float32)
        if z.ndim != 4 or z.shape[1] != cfg.num_classes or 0 in z.shape:
            raise ValueError(f"logits must be float32 [N, {cfg.num_classes}, H, W] with N, H, "
                             f"W >= 1, got shape {z.shape}")
        n, c, h, w = z.shape
        if image.shape != (n, 3, h, w):
            raise ValueError(f"image must be float32 [N, 3, H, W] = {[n, 3, h, w]} for logits "
                             f"{list(z.shape)}, got {list(image.shape)}")
        check_arguments(cfg.iterations if iterations is None else iterations, z.shape,
                        None if initial_q is None else np.shape(initial_q), initial_q_weight)
        if initial_q is not None:
            initial_q = np.ascontiguousarray(initial_q, np.float32)
            if not np.isfinite(initial_q).all():
                raise ValueError("initial_q contains NaN or infinite values; pass the finite "
                                 "probabilities of a previous result (or no initial_q)")
        executor = NativeExecutor(cfg, self.weights, z, lambda: self.pairwise_kernel(image),
                                  self._threads())
        return mean_field(executor, cfg, iterations=iterations, initial_q=initial_q,
                          initial_q_weight=initial_q_weight)
