"""`SegmentationModel`: a unary network, an optional ConvCRF on top, and their metadata.

This is the unit that is trained, saved (``save_model``), exported to ONNX and deployed:
everything a user needs to go from an RGB frame to class probabilities.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..metadata import ModelMetadata
from .convcrf import ConvCRF
from .outputs import unary_logits
from .unaries import unary_spec_of


class SegmentationModel(nn.Module):
    """Unary network + optional ConvCRF, taking raw RGB images.

    Args:
        unary: ``nn.Module`` mapping a normalised image ``(N, 3, H, W)`` to logits
            ``(N, C, h', w')`` of any size (resized to ``H x W`` bilinearly), returned as a
            tensor, a tuple/list starting with them, a dict (``"out"``, ``"logits"`` or
            ``output_key``) or an object with ``.logits``
            (:mod:`convcrf_deploy.model.outputs`).
        crf: the :class:`ConvCRF` applied to the unary logits, or ``None``.
        metadata: class names, palette, normalisation and input convention; its class count
            must match ``crf.config.num_classes``.
        unary_spec: ``{"name": ..., "kwargs": {...}}`` naming a registered architecture
            (see :func:`convcrf_deploy.model.register_unary`), used by ``save_model`` to store
            the unary without pickling code. Defaults to the spec recorded by
            ``build_unary`` or a built-in unary; ``None`` for an unregistered module (then
            ``save_model`` pickles it and ``load_model`` needs ``allow_pickle=True``).
        output_key: the key (or attribute) of the unary's output that holds the logits, when
            it is a dict with neither ``"out"`` nor ``"logits"``; stored by ``save_model``.

    Input constraints (``metadata.pad_multiple``, ``metadata.min_size``): an image that does not
    meet them is padded at the bottom and right by repeating its edge pixels, the model runs
    on the padded image and the outputs are cropped back, exactly as the runtime does.

    Attributes:
        crf_enabled: when ``False`` (or ``crf`` is ``None``), :meth:`forward` returns the
            unary's softmax; toggle it to compare unary and CRF on the same model.

    Shapes:
        image ``(N, 3, H, W)`` float RGB in 0..255 -> probabilities ``(N, C, H, W)``.

    Example:
        >>> model = SegmentationModel(FastFCN(5), ConvCRF(CRFConfig(num_classes=5)),
        ...                           ModelMetadata.for_classes("abcde"))
        >>> probs = model(torch.rand(2, 3, 101, 133) * 255)     # (2, 5, 101, 133)
    """

    def __init__(self, unary: nn.Module, crf: ConvCRF | None, metadata: ModelMetadata,
                 unary_spec: dict[str, Any] | None = None, output_key: str | None = None):
        super().__init__()
        if not isinstance(unary, nn.Module):
            raise ValueError(f"SegmentationModel: unary must be an nn.Module, got "
                             f"{type(unary).__name__}")
        if crf is not None and not isinstance(crf, ConvCRF):
            raise ValueError(f"SegmentationModel: crf must be a ConvCRF or None, got "
                             f"{type(crf).__name__}")
        if not isinstance(metadata, ModelMetadata):
            raise ValueError(f"SegmentationModel: metadata must be a ModelMetadata, got "
                             f"{type(metadata).__name__}")
        if crf is not None and crf.config.num_classes != metadata.num_classes:
            raise ValueError(f"SegmentationModel: the CRF has {crf.config.num_classes} classes "
                             f"but metadata lists {metadata.num_classes} "
                             f"({metadata.class_names})")
        if output_key is not None and (not isinstance(output_key, str) or not output_key):
            raise ValueError(f"SegmentationModel: output_key must be a non-empty string or "
                             f"None, got {output_key!r}")
        self.unary = unary
        self.output_key = output_key
        self.crf = crf
        self.metadata = metadata
        self.unary_spec = unary_spec if unary_spec is not None else unary_spec_of(unary)
        self.crf_enabled = crf is not None
        # Not persistent: they are derived from the metadata, which the checkpoint stores.
        self.register_buffer("mean", torch.tensor(metadata.mean).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(metadata.std).view(1, 3, 1, 1),
                             persistent=False)

    @property
    def num_classes(self) -> int:
        return self.metadata.num_classes

    def _check_image(self, image: torch.Tensor) -> None:
        if not isinstance(image, torch.Tensor):
            raise ValueError(f"image must be a torch.Tensor (N, 3, H, W), got "
                             f"{type(image).__name__}")
        if image.dim() != 4 or image.shape[1] != 3:
            hint = (" (HWC? use .permute(0, 3, 1, 2))" if image.dim() == 4 and image.shape[-1] == 3
                    else " (add a batch dimension with .unsqueeze(0))" if image.dim() == 3 else "")
            raise ValueError(f"image must have shape (N, 3, H, W) RGB, got {tuple(image.shape)}"
                             f"{hint}")
        if image.numel() == 0:
            raise ValueError(f"image is empty: shape {tuple(image.shape)}")

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` RGB 0..255 -> ``(image / 255 - mean) / std`` (float32)."""
        return (image.float() / 255.0 - self.mean) / self.std

    def unary_logits(self, image: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` RGB 0..255 -> unary logits ``(N, C, H, W)`` at the input size,
        without padding: ``H`` and ``W`` must meet the input constraints. This is what the
        exported graphs compute; :meth:`forward_unary` pads first.

        Raises:
            convcrf_deploy.model.outputs.UnaryOutputError (a ``ValueError``): the unary's
                output is not logits in a known convention, or has the wrong shape.
        """
        output = self.unary(self.normalize(image))
        return unary_logits(output, image.shape, self.num_classes, self.output_key)

    def _padded(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int] | None]:
        """``image`` padded to meet the input constraints (edge pixels repeated at the bottom
        and right), and the size to crop outputs back to (``None``: nothing was padded)."""
        height, width = image.shape[-2:]
        padded_h, padded_w = self.metadata.padded_size(height, width)
        if (padded_h, padded_w) == (height, width):
            return image, None
        padded = F.pad(image.float(), (0, padded_w - width, 0, padded_h - height),
                       mode="replicate")
        return padded, (height, width)

    def forward_unary(self, image: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` RGB 0..255 -> unary logits ``(N, C, H, W)`` at the input size
        (padded to meet the input constraints and cropped back)."""
        self._check_image(image)
        padded, crop = self._padded(image)
        logits = self.unary_logits(padded)
        return logits if crop is None else logits[..., :crop[0], :crop[1]]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` float RGB 0..255 -> class probabilities ``(N, C, H, W)``."""
        self._check_image(image)
        padded, crop = self._padded(image)
        logits = self.unary_logits(padded)
        if self.crf is None or not self.crf_enabled:
            probabilities = torch.softmax(logits, dim=1)
        else:
            probabilities = self.crf(logits, padded)
        return probabilities if crop is None else probabilities[..., :crop[0], :crop[1]]

    @torch.no_grad()
    def predict(self, rgb) -> torch.Tensor:
        """Labels ``(H, W)`` (int64) for one ``(H, W, 3)`` uint8 RGB array or tensor."""
        image = torch.as_tensor(rgb)
        if image.dim() != 3 or image.shape[-1] != 3:
            raise ValueError(f"predict expects one (H, W, 3) RGB image, got {tuple(image.shape)}")
        image = image.permute(2, 0, 1).unsqueeze(0).float().to(self.mean.device)
        return self(image)[0].max(0).indices  # argmax over channels is far slower on CPU

    def extra_repr(self) -> str:
        key = f", output_key={self.output_key!r}" if self.output_key is not None else ""
        return (f"classes={self.metadata.class_names}, crf_enabled={self.crf_enabled}, "
                f"unary_spec={self.unary_spec}{key}")
