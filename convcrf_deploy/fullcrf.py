"""FullCRF: Krähenbühl & Koltun's fully connected CRF (permutohedral lattice), the paper's baseline.

The ConvCRF paper (Teichmann & Cipolla 2018, Table 1) compares ConvCRF with FullCRF run with
the *same* hand-set kernels. :func:`fullcrf_inference` is that comparison's FullCRF: numpy in,
probabilities out, parameters taken from a :class:`~convcrf_deploy.CRFConfig`. It runs on the
CPU through ``pydensecrf`` (the module is provided by the maintained fork ``pydensecrf2``:
the ``[fullcrf]`` extra, see :mod:`convcrf_deploy.install`); no torch needed.

Used by ``convcrf-eval synthetic`` (:mod:`convcrf_deploy.evaluation`); call it directly to put
a FullCRF reference beside ConvCRF on your own frames.
"""
from __future__ import annotations

import numpy as np

from .config import CRFConfig
from .install import MissingDependencyError, install_hint

#: What to install when ``pydensecrf`` is missing (the original ``pydensecrf`` release does
#: not build on Python >= 3.11; the fork ``pydensecrf2`` provides the same module).
INSTALL_HINT = install_hint("fullcrf") + " (installs pydensecrf2, module pydensecrf)"


class FullCRFUnavailable(MissingDependencyError):
    """``pydensecrf`` is not installed; the message says what to install."""


def fullcrf_available() -> bool:
    """True when ``pydensecrf`` can be imported."""
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=0, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=0, keepdims=True))


def fullcrf_inference(unary_logits: np.ndarray, image: np.ndarray,
                      config: CRFConfig | None = None) -> np.ndarray:
    """Mean-field inference of the fully connected CRF on one image (CPU, ``pydensecrf``).

    The parameters are mapped from ``config`` as the paper's FullCRF comparison does: the
    smoothness kernel ``addPairwiseGaussian(sxy=smoothness_bandwidth, compat=smoothness_weight)``
    (theta_gamma=3, w=3 by default), the appearance kernel ``addPairwiseBilateral(
    sxy=appearance_position_bandwidth, srgb=appearance_color_bandwidth,
    compat=appearance_weight)`` (theta_alpha=80 px, theta_beta=13 RGB units, w=10), Potts
    compatibility, ``config.iterations`` mean-field steps, and the unary energy
    ``-log_softmax(unary_logits)`` computed from the logits directly (no probability
    round trip). ConvCRF-only settings (``filter_size``, ``blur``, ``message_weight``,
    ``unary_weight``, learned compatibility) have no FullCRF counterpart and are ignored.

    Args:
        unary_logits: ``[C, H, W]`` float logits of the unary (any float dtype; C >= 2).
        image: ``[H, W, 3]`` uint8 RGB image (0..255), the same size as the logits.
        config: the CRF parameters; default ``CRFConfig(num_classes=C)``.

    Returns:
        ``[C, H, W]`` float32 probabilities (sum to 1 over C at every pixel).

    Raises:
        FullCRFUnavailable: ``pydensecrf`` is not installed (message names the package).
        ValueError: shapes, dtypes or class count do not fit.
    """
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as error:
        raise FullCRFUnavailable(f"FullCRF needs pydensecrf: {INSTALL_HINT}") from error
    logits = np.asarray(unary_logits)
    if logits.ndim != 3 or logits.shape[0] < 2 or not np.issubdtype(logits.dtype, np.floating):
        raise ValueError(f"unary_logits must be float [C, H, W] with C >= 2, got "
                         f"{logits.dtype} {list(logits.shape)}")
    c, h, w = logits.shape
    image = np.asarray(image)
    if image.shape != (h, w, 3) or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB [H, W, 3] = [{h}, {w}, 3] like the logits, "
                         f"got {image.dtype} {list(image.shape)}")
    config = config if config is not None else CRFConfig(num_classes=c)
    if config.num_classes != c:
        raise ValueError(f"config has {config.num_classes} classes, the logits {c}")
    crf = dcrf.DenseCRF2D(w, h, c)
    energy = -_log_softmax(logits.astype(np.float32, copy=False)).reshape(c, h * w)
    crf.setUnaryEnergy(np.ascontiguousarray(energy, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=config.smoothness_bandwidth, compat=config.smoothness_weight)
    crf.addPairwiseBilateral(sxy=config.appearance_position_bandwidth,
                             srgb=config.appearance_color_bandwidth,
                             # pydensecrf's typed memoryviews need a writable buffer (images
                             # read through Pillow are read-only views).
                             rgbim=np.require(image, np.uint8, ["C", "W"]),
                             compat=config.appearance_weight)
    q = np.asarray(crf.inference(config.iterations), dtype=np.float32)
    return q.reshape(c, h, w)
