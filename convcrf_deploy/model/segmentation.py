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
from .unaries import unary_spec_of


class SegmentationModel(nn.Module):
    """Unary network + optional ConvCRF, taking raw RGB images.

    Args:
        unary: ``nn.Module`` mapping a normalised image ``(N, 3, H, W)`` to logits
            ``(N, C, h', w')`` of any size (resized to ``H x W`` bilinearly).
        crf: the :class:`ConvCRF` applied to the unary logits, or ``None``.
        metadata: class names, palette, normalisation and input convention; its class count
            must match ``crf.config.num_classes``.
        unary_spec: ``{"name": ..., "kwargs": {...}}`` naming a registered architecture
            (see :func:`convcrf_deploy.model.register_unary`), used by ``save_model`` to store
            the unary without pickling code. Defaults to the spec recorded by
            ``build_unary`` or a built-in unary; ``None`` for an unregistered module (then
            ``save_model`` pickles it and ``load_model`` needs ``allow_pickle=True``).

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
                 unary_spec: dict[str, Any] | None = None):
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
        self.unary = unary
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

    def forward_unary(self, image: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` RGB 0..255 -> unary logits ``(N, C, H, W)`` at the input size."""
        self._check_image(image)
        logits = self.unary(self.normalize(image))
        if logits.dim() != 4 or logits.shape[:2] != (image.shape[0], self.num_classes):
            raise ValueError(f"the unary returned shape {tuple(logits.shape)}; expected "
                             f"({image.shape[0]}, {self.num_classes}, h, w) logits")
        if logits.shape[-2:] != image.shape[-2:]:
            logits = F.interpolate(logits, size=image.shape[-2:], mode="bilinear",
                                   align_corners=False)
        return logits

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` float RGB 0..255 -> class probabilities ``(N, C, H, W)``."""
        logits = self.forward_unary(image)
        if self.crf is None or not self.crf_enabled:
            return torch.softmax(logits, dim=1)
        return self.crf(logits, image)

    @torch.no_grad()
    def predict(self, rgb) -> torch.Tensor:
        """Labels ``(H, W)`` (int64) for one ``(H, W, 3)`` uint8 RGB array or tensor."""
        image = torch.as_tensor(rgb)
        if image.dim() != 3 or image.shape[-1] != 3:
            raise ValueError(f"predict expects one (H, W, 3) RGB image, got {tuple(image.shape)}")
        image = image.permute(2, 0, 1).unsqueeze(0).float().to(self.mean.device)
        return self(image)[0].max(0).indices  # argmax over channels is far slower on CPU

    def extra_repr(self) -> str:
        return (f"classes={self.metadata.class_names}, crf_enabled={self.crf_enabled}, "
                f"unary_spec={self.unary_spec}")
