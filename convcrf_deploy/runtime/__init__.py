"""The deployment runtime: backends, frame segmentation and video (numpy, OpenCV, ONNX Runtime).

Nothing here imports torch at import time; the torch backend imports it when created.

* :class:`Segmenter` - BGR frame in, :class:`SegmentationResult` (labels at the frame size,
  per-stage timings, timestamp passthrough) out, on any backend;
* :func:`create_backend` - picks ``torch``, ``onnxruntime`` or ``tensorrt`` from the model file;
* :mod:`.streams` / :mod:`.video` - frame sources and sinks (cameras, streams, files, folders, the
  demo scene, ROS bags, Foxglove) and
  the loop behind ``convcrf-run``;
* :mod:`.visualize` - palette, overlay and HUD drawing.

Example (embedding, e.g. in a ROS node)::

    from convcrf_deploy.runtime import Segmenter
    segmenter = Segmenter("model.onnx", providers=("cpu",))
    result = segmenter(bgr_frame, timestamp=msg.header.stamp)
    publish(result.labels, stamp=result.timestamp)      # labels: [H, W] uint8
"""
from .backends import Backend, BackendUnavailableError, create_backend
from .segmenter import SegmentationResult, Segmenter
from .streams import Frame, FrameSink, FrameSource, SourceError, open_source
from .video import RunReport, run_video
from .visualize import Renderer, colorize, overlay, palette_lut

__all__ = ["Backend", "BackendUnavailableError", "Frame", "FrameSink", "FrameSource", "Renderer", "RunReport",
           "SegmentationResult", "Segmenter", "SourceError", "colorize", "create_backend",
           "open_source", "overlay", "palette_lut", "run_video"]
