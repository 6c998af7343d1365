"""PyTorch backend: runs a ``SegmentationModel`` (``"demo"``, a checkpoint, or in memory).

Importing this package imports torch; the registry imports it only when the backend is chosen.
"""
from ...._native import prefer_passive_openmp

# Before any module of this package imports torch: OpenMP reads its wait policy when torch
# loads it, and spinning idle threads collapse frame rates on shared CPUs (issue 9).
prefer_passive_openmp()

# The backend always needs torch: a missing torch fails here, when the registry imports the
# backend (backend_class("torch") names the extra to install), not at the first frame.
import torch  # noqa: E402,F401

from .loader import load_segmentation_model  # noqa: E402
from .runner import TorchBackend  # noqa: E402
from .warm_start import WarmStartMeanField  # noqa: E402

__all__ = ["TorchBackend", "WarmStartMeanField", "load_segmentation_model"]
