"""The deployment runtime: backends, frame segmentation and video (numpy, OpenCV, ONNX Runtime).

Nothing here imports torch at import time; the torch backend imports it when created.

* :class:`Segmenter` - BGR frame in, :class:`SegmentationResult` (labels at the frame size,
  per-stage timings, timestamp passthrough) out, on any backend;
* :func:`create_backend` - picks ``torch``, ``onnxruntime`` or ``tensorrt`` from the model file;
* :mod:`.sources` / :mod:`.video` - cameras, streams, files, folders and the demo scene, and
  the loop behind ``convcrf-run``;
* :mod:`.visualize` - palette, overlay and HUD drawing.
"""
from .backends import Backend, BackendUnavailableError, create_backend
from .segmenter import SegmentationResult, Segmenter
from .visualize import Renderer, colorize, overlay, palette_lut

__all__ = ["Backend", "BackendUnavailableError", "Renderer", "SegmentationResult", "Segmenter",
           "colorize", "create_backend", "overlay", "palette_lut"]
