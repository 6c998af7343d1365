"""Frames padded to a model's input constraints, and outputs cropped back (numpy only).

A unary network may run only at some sizes (``ModelMetadata.pad_multiple`` and ``min_size``,
recorded by ``convcrf-export``). Every runtime path feeds it such a size the same way:

* the image is padded at the **bottom and right** (so pixel coordinates do not move) to
  :meth:`ModelMetadata.padded_size`, by **repeating its edge pixels** (OpenCV's
  ``BORDER_REPLICATE``, numpy's ``"edge"``, PyTorch's ``"replicate"``). Edge rather than
  reflect: it is defined for any size, including images smaller than the padding (a 10 px
  image padded to 32), and the CRF sees the padding as the same colour as the border, so
  border labels simply extend into it instead of mirroring structures that are not there;
* the whole model (unary and CRF) runs on the padded image;
* every output is cropped back to the image's size.

:class:`~convcrf_deploy.runtime.Segmenter` writes the padding straight into its input buffer;
:meth:`Backend.infer` and :meth:`Backend.infer_unary` pad images that callers pass directly
(the Segmenter's already meet the constraints, so they are not copied again);
``SegmentationModel.forward`` does the same in PyTorch.
"""
from __future__ import annotations

import numpy as np

from ..metadata import ModelMetadata


def replicate_edges(batch: np.ndarray, height: int, width: int) -> None:
    """In place: fill ``batch[..., height:, :]`` and ``batch[..., :, width:]`` (``[N, C,
    H', W']``) by repeating row ``height - 1`` and column ``width - 1``."""
    if batch.shape[-2] > height:
        batch[..., height:, :width] = batch[..., height - 1:height, :width]
    if batch.shape[-1] > width:
        batch[..., :, width:] = batch[..., :, width - 1:width]


def pad_image(image: np.ndarray, metadata: ModelMetadata
              ) -> tuple[np.ndarray, tuple[int, int] | None]:
    """``image`` float32 ``[N, 3, H, W]`` padded to meet ``metadata``'s input constraints, and
    the ``(H, W)`` to crop outputs back to; ``(image, None)`` (no copy) when it meets them."""
    height, width = image.shape[-2:]
    padded_h, padded_w = metadata.padded_size(height, width)
    if (padded_h, padded_w) == (height, width):
        return image, None
    padded = np.empty((*image.shape[:-2], padded_h, padded_w), image.dtype)
    padded[..., :height, :width] = image
    replicate_edges(padded, height, width)
    return padded, (height, width)


def crop_outputs(outputs: dict[str, np.ndarray], size: tuple[int, int] | None
                 ) -> dict[str, np.ndarray]:
    """Every array of ``outputs`` (``[..., H', W']``) cropped to ``size = (H, W)`` from the
    top left (contiguous copies); ``outputs`` itself when ``size`` is ``None``."""
    if size is None:
        return outputs
    height, width = size
    return {name: np.ascontiguousarray(value[..., :height, :width])
            for name, value in outputs.items()}
