"""The ConvCRF paper's synthetic task (Section 5.1): a noisy unary made from the ground truth.

The CRF must recover the true labels from a unary that has blurred boundaries and blocks of
wrong labels. The noise follows the reference implementation (``augment_label``):

1. one-hot encode the label map ``[H, W]`` -> ``[H, W, C]``;
2. resize it bilinearly to ``(H // s, W // s)`` and back to ``(H, W)`` (``s = downsample``,
   8 in the paper): the object boundaries become blurred ramps ``blurred_onehot``;
3. draw a low-resolution ``(H // s, W // s)`` map of uniformly random class labels, one-hot
   encode it and up-sample it bilinearly: ``noise``;
4. draw a low-resolution keep-mask that is 1 with probability ``keep_probability`` (0.8),
   else 0, and up-sample it bilinearly: ``mask`` in ``[0, 1]``;
5. ``unary = mask * blurred_onehot + (1 - mask) * noise``, a probability map (each pixel
   sums to 1).

Bilinear resizing uses half-pixel centres without anti-aliasing (OpenCV ``INTER_LINEAR``),
like ``skimage.transform.resize(order=1)`` of the reference code at the time; at the image
border OpenCV replicates the edge where the reference padded with zeros (which only dimmed
the outermost half block of every channel).

Random draws come from a :class:`numpy.random.Generator` (labels first, then the mask), so a
seed reproduces the unary exactly. Ground-truth pixels with the void label 255 are treated
as background (class 0) for the unary; metrics ignore them.
"""
from __future__ import annotations

import cv2
import numpy as np

from ..metrics import IGNORE_INDEX

#: Smallest probability kept before taking the log (log(0) = -inf is not a valid logit).
DEFAULT_EPSILON = 1e-5


def _resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of ``[h, w]`` or ``[h, w, C]`` float32 to ``[height, width(, C)]``."""
    # OpenCV resizes at most 512 channels at once; chunk to stay general.
    if array.ndim == 3 and array.shape[2] > 512:
        return np.concatenate([_resize(array[:, :, i:i + 512], height, width)
                               for i in range(0, array.shape[2], 512)], axis=2)
    out = cv2.resize(array, (width, height), interpolation=cv2.INTER_LINEAR)
    if array.ndim == 3 and out.ndim == 2:  # OpenCV drops a single channel axis
        out = out[:, :, None]
    return out


def synthetic_unary(labels: np.ndarray, num_classes: int, *, downsample: int = 8,
                    keep_probability: float = 0.8,
                    rng: np.random.Generator | int | None = None) -> np.ndarray:
    """The paper's noisy unary for a label map (procedure in the module docstring).

    Args:
        labels: ``[H, W]`` integer class indices in ``0..num_classes-1``, or 255 (void).
        num_classes: C.
        downsample: factor of the low-resolution grid (the paper's 8).
        keep_probability: probability that a low-resolution cell keeps the true label.
        rng: a ``numpy.random.Generator`` or a seed (``None``: fresh entropy).

    Returns:
        ``[C, H, W]`` float32 probabilities (each pixel sums to 1).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a [H, W] map of class indices, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers (class indices), got dtype {labels.dtype}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if downsample < 1:
        raise ValueError(f"downsample must be >= 1, got {downsample}")
    if not 0.0 <= keep_probability <= 1.0:
        raise ValueError(f"keep_probability must be in [0, 1], got {keep_probability}")
    labels = np.where(labels == IGNORE_INDEX, 0, labels).astype(np.int64)
    outside = labels[(labels < 0) | (labels >= num_classes)]
    if outside.size:
        raise ValueError(f"labels contain class {int(outside[0])}, outside 0..{num_classes - 1} "
                         "(255 is void); check num_classes")
    rng = np.random.default_rng(rng)  # returns a Generator unchanged
    height, width = labels.shape
    low_h, low_w = max(1, height // downsample), max(1, width // downsample)
    eye = np.eye(num_classes, dtype=np.float32)

    onehot = eye[labels]                                               # [H, W, C]
    blurred = _resize(_resize(onehot, low_h, low_w), height, width)
    noise = _resize(eye[rng.integers(0, num_classes, size=(low_h, low_w))], height, width)
    keep = (rng.random((low_h, low_w)) < keep_probability).astype(np.float32)
    mask = _resize(keep, height, width)[:, :, None]
    unary = mask * blurred + (1.0 - mask) * noise
    return np.ascontiguousarray(unary.transpose(2, 0, 1), dtype=np.float32)


def synthetic_logits(labels: np.ndarray, num_classes: int, *, downsample: int = 8,
                     keep_probability: float = 0.8, rng: np.random.Generator | int | None = None,
                     epsilon: float = DEFAULT_EPSILON) -> np.ndarray:
    """``[C, H, W]`` float32 logits ``log(max(unary, epsilon))`` of :func:`synthetic_unary`
    (finite, as :class:`convcrf_deploy.ConvCRF` requires)."""
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    unary = synthetic_unary(labels, num_classes, downsample=downsample,
                            keep_probability=keep_probability, rng=rng)
    return np.log(np.maximum(unary, np.float32(epsilon)))


def synthetic_logits_batch(labels, num_classes: int, *, seed: int = 0, **kwargs):
    """Torch convenience: ``[N, H, W]`` label tensor -> ``[N, C, H, W]`` float32 logits tensor.

    Image ``i`` uses the generator ``default_rng([seed, i])``, so each image of a batch gets
    independent noise and the batch is reproducible.
    """
    import torch

    labels_np = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if labels_np.ndim != 3:
        raise ValueError(f"labels must be [N, H, W], got shape {labels_np.shape}")
    logits = [synthetic_logits(labels_np[i], num_classes, rng=np.random.default_rng([seed, i]),
                               **kwargs) for i in range(labels_np.shape[0])]
    return torch.from_numpy(np.stack(logits))


def noise_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of noise draw ``seed`` for image ``index`` of a dataset. Evaluation and
    training both use it, so a Table-1 run and a training run see the same noisy unaries."""
    return np.random.default_rng([seed, index])
