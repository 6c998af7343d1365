"""PyTorch backend: runs a ``SegmentationModel`` (``"demo"``, a checkpoint, or in memory).

Importing this package imports torch; the registry imports it only when the backend is chosen.
"""
from .loader import load_segmentation_model
from .runner import TorchBackend
from .warm_start import WarmStartMeanField

__all__ = ["TorchBackend", "WarmStartMeanField", "load_segmentation_model"]
