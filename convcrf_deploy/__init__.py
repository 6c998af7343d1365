"""convcrf-deploy: Convolutional CRFs from PyTorch to real-time deployment.

The package is laid out by stage:

* ``convcrf_deploy.config``   CRFConfig (no torch needed)
* ``convcrf_deploy.ops``      the two ConvCRF ops, native kernels with autograd (torch)
* ``convcrf_deploy.crf``      the mean-field schedule, the native CRF, warm start (no torch)
* ``convcrf_deploy.model``    ConvCRF and segmentation models, checkpoints (torch)
* ``convcrf_deploy.data``     the paper's synthetic task, datasets, metrics
* ``convcrf_deploy.export``   ONNX export and verification (torch, onnx)
* ``convcrf_deploy.runtime``  backends and video segmentation (numpy, OpenCV, ONNX Runtime)

``convcrf_deploy.ort_ops_library()`` is the path of the ONNX Runtime custom-op library of the
ConvCRF ops, for ``SessionOptions.register_custom_ops_library`` (docs/onnxruntime.md).

Importing the package imports no torch: ``ConvCRF`` and the other torch-based names are
loaded on first use, so the runtime works on machines with ONNX Runtime only.
"""
from __future__ import annotations

import importlib

from ._native import ort_ops_library
from .config import CRFConfig

__version__ = "0.1.0"

# Public name -> module that defines it (imported lazily: these need torch).
_LAZY = {
    "ConvCRF": "convcrf_deploy.model",
    "SegmentationModel": "convcrf_deploy.model",
    "save_model": "convcrf_deploy.model",
    "load_model": "convcrf_deploy.model",
}

__all__ = ["CRFConfig", "__version__", "ort_ops_library", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'convcrf_deploy' has no attribute {name!r}")
