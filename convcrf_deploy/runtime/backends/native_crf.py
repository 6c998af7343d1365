"""`NativeCRF`: ConvCRF mean-field inference on the native C library, with NumPy and ctypes only.

The torch-free runtime's CRF executor. It calls the same C functions, in the same order, as
the fused CPU inference path of :class:`convcrf_deploy.model.ConvCRF` (``_forward_fused``):
``convcrf_pairwise_kernel_from_image_f32`` to build the pairwise kernel on the blurred grid
(``convcrf_pairwise_kernel_f32`` on NumPy features with the +T map),
``convcrf_message_passing_f32`` per iteration, and ``convcrf_mean_field_step_f32`` for the
full-resolution part of every iteration (upsample, add, softmax, pool). The only arithmetic
done here in NumPy is what ``ConvCRF`` does in PyTorch around those calls: with +T, the
pooled image and feature maps (positions and colours over their bandwidths, the 1x1 map);
and the +C compatibility matrix. ``ops/reference.py`` and
``docs/ops.md`` are the specification; there is no second implementation of the ops here.

Trained parameters travel inside the exported ONNX file: ``convcrf-export`` writes the CRF's
``state_dict`` as JSON under the metadata key :data:`STATE_KEY` next to ``convcrf.crf_config``,
so one file still carries everything (:meth:`NativeCRF.from_onnx_props`).

Thread safety: a :class:`NativeCRF` holds only read-only parameters; every call allocates its
own buffers, so one instance may be called from several threads at once.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np

from ... import _native
from ...config import CRFConfig
from ...metadata import ONNX_KEYS

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
    constant is irrelevant) and ``image`` float32 ``[N, 3, H, W]`` RGB 0..255; returns the
    probabilities float32 ``[N, C, H, W]`` (paper Sec. 3, the mean-field update of
    ``ConvCRF``'s docstring; ``intermediate_resolution="blurred"`` as in ``ConvCRF``).
    Raises ``ValueError`` on bad shapes or non-finite logits.
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
        self.message_weight = np.ascontiguousarray(p["message_weight"])
        self.unary_scale = np.ascontiguousarray(p["unary_weight"] - self.message_weight)
        self.compatibility = (p["compatibility.weight"].reshape(c, c)
                              if "compatibility.weight" in p else None)
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
        out = np.empty((n, k * k, h, w), np.float32)
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

    def _messages(self, q_low: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        """Unweighted blurred-grid messages after compatibility (``ConvCRF._messages``)."""
        n, c, h, w = q_low.shape
        m = np.empty_like(q_low)
        self._call("convcrf_message_passing_f32", q_low.ctypes.data, kernel.ctypes.data, n, c,
                   h, w, self.config.filter_size, m.ctypes.data, self._threads())
        if self.compatibility is not None:
            m = np.ascontiguousarray(np.matmul(self.compatibility, m.reshape(n, c, h * w))
                                     .reshape(n, c, h, w))
        return m

    def _step(self, unary, messages=None, *, logit_scale=None, out_scale=None, log_unary=None,
              log_unary_low=None, q_low=None, q_full=None, grid) -> None:
        ptr = lambda a: None if a is None else a.ctypes.data  # noqa: E731
        n, c = unary.shape[:2]
        status = self.lib.convcrf_mean_field_step_f32(
            ptr(unary), ptr(messages), None if messages is None else ptr(self.message_weight),
            n, c, *grid, ptr(logit_scale), ptr(out_scale), ptr(log_unary), ptr(log_unary_low),
            ptr(q_low), ptr(q_full), self._threads())
        if status == _native.STATUS_NON_FINITE:
            raise ValueError("logits contain NaN or infinite values; the CRF expects finite "
                             "logits")
        _native.check(status, "mean-field step")

    # -- inference ------------------------------------------------------------------------------
    def __call__(self, logits: np.ndarray, image: np.ndarray) -> np.ndarray:
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
        iterations = cfg.iterations
        if iterations == 0:
            if not np.isfinite(z).all():
                raise ValueError("logits contain NaN or infinite values")
            e = np.exp(z - z.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        b = cfg.blur
        hl, wl = -(-h // b), -(-w // b)
        kernel = self.pairwise_kernel(image)
        blurred = cfg.intermediate_resolution == "blurred" and b > 1 and iterations > 1
        full, low = (h, w, b), (hl, wl, 1)
        q_low = np.empty((n, c, hl, wl), np.float32)
        q_full = np.empty_like(z)
        if blurred:
            # Fast mode: all but the last iteration on the blurred grid.
            unary_low = np.empty((n, c, hl, wl), np.float32)
            self._step(z, out_scale=self.unary_scale, log_unary_low=unary_low, q_low=q_low,
                       grid=full)
            for _ in range(iterations - 1):
                next_low = np.empty_like(q_low)
                self._step(unary_low, self._messages(q_low, kernel), q_low=next_low, grid=low)
                q_low = next_low
            self._step(z, self._messages(q_low, kernel), logit_scale=self.unary_scale,
                       q_full=q_full, grid=full)
            return q_full
        unary_term = np.empty_like(z)
        self._step(z, out_scale=self.unary_scale, log_unary=unary_term, q_low=q_low, grid=full)
        for it in range(iterations):
            last = it == iterations - 1
            next_low = None if last else np.empty_like(q_low)
            self._step(unary_term, self._messages(q_low, kernel), q_low=next_low,
                       q_full=q_full if last else None, grid=full)
            q_low = next_low
        return q_full

