"""Live view in Foxglove: ``convcrf-run ... --foxglove [HOST:]PORT``.

A sink (:class:`~convcrf_deploy.runtime.video.FrameSink`) that serves, over the Foxglove
WebSocket protocol (``foxglove-sdk``; open ``ws://HOST:PORT`` in Foxglove desktop or web):

==========================  ===================================================================
``PREFIX/overlay``          ``foxglove.CompressedImage`` (JPEG colour overlay)
``PREFIX/labels``           ``foxglove.RawImage`` ``mono8`` class indices; the channel metadata
                            ``classes`` holds ``{"classes": [...], "palette": [...]}`` JSON
``PREFIX/stats``            JSON: ``stamp_ns``, ``frame``, ``<stage>_ms``, ``total_ms``,
                            ``age_ms`` (read to result), ``fps`` (over the last second), ``crf``
==========================  ===================================================================

Images keep the input's header stamp and ``frame_id``. Encoding is skipped for channels nobody
subscribed to. The server binds 127.0.0.1 unless told otherwise. Needs the ``[foxglove]``
extra. Not thread-safe: ``write`` from one thread.
"""
from __future__ import annotations

import collections
import time
from typing import Any

import cv2
import numpy as np

from .ros._deps import require
from .ros.bag_sink import classes_json, frame_header
from ..visualize import colorize, overlay, palette_lut

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8765

STATS_SCHEMA = {
    "type": "object", "title": "convcrf.FrameStats",
    "properties": {"stamp_ns": {"type": "integer"}, "frame": {"type": "integer"},
                   "total_ms": {"type": "number"}, "age_ms": {"type": "number"},
                   "fps": {"type": "number"}, "crf": {"type": "boolean"}},
    "additionalProperties": {"type": "number"},
}


def parse_address(text: str) -> tuple[str, int]:
    """``"PORT"`` or ``"HOST:PORT"`` -> ``(host, port)`` (host 127.0.0.1 by default; port 0:
    any free port).

    Raises:
        ValueError: not that form, or the port outside 0..65535.
    """
    host, _, port = str(text).rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise ValueError(f"--foxglove expects [HOST:]PORT (e.g. 8765 or 0.0.0.0:8765), got "
                         f"{text!r}")
    return host.strip("[]") or DEFAULT_HOST, number


class FoxgloveSink:
    """Serve each frame's overlay, labels and latency to Foxglove clients.

    Args:
        metadata: the model's ``ModelMetadata`` (palette; class names go into channel metadata).
        host, port: where to listen (port 0: a free one; :attr:`port` tells which).
        topic_prefix: topic namespace, e.g. ``/camera/image_raw/convcrf``.
        alpha: overlay opacity; jpeg_quality: 0..100.

    Raises:
        MissingDependencyError: ``foxglove-sdk`` is not installed.
        OSError: the address cannot be bound (e.g. the port is in use).
    """

    def __init__(self, metadata: Any, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
                 topic_prefix: str = "/convcrf", alpha: float = 0.5, jpeg_quality: int = 80):
        foxglove = require("foxglove", "foxglove-sdk", "foxglove")
        channels = require("foxglove.channels", "foxglove-sdk", "foxglove")
        self._messages = require("foxglove.messages", "foxglove-sdk", "foxglove")
        prefix = "/" + topic_prefix.strip("/")
        self._context = foxglove.Context()  # our own: channels of other code stay apart
        try:
            self.server = foxglove.start_server(name="convcrf-run", host=host, port=port,
                                                context=self._context)
        except RuntimeError as exc:  # the SDK reports bind failures as RuntimeError
            raise OSError(f"--foxglove {host}:{port}: cannot listen ({exc}); choose another "
                          "port") from None
        self.host, self.port = host, self.server.port
        self.overlay = channels.CompressedImageChannel(f"{prefix}/overlay", context=self._context)
        self.labels = channels.RawImageChannel(f"{prefix}/labels", context=self._context,
                                               metadata={"classes": classes_json(metadata)})
        self.stats = foxglove.Channel(f"{prefix}/stats", schema=STATS_SCHEMA,
                                      context=self._context)
        self.alpha, self.jpeg_quality = alpha, jpeg_quality
        self._lut = palette_lut(metadata.palette)
        self._colors: np.ndarray | None = None
        self._recent: collections.deque[float] = collections.deque(maxlen=10_000)
        self._closed = False

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def write(self, frame: Any, result: Any) -> None:
        now = time.monotonic()
        self._recent.append(now)
        while self._recent and now - self._recent[0] > 1.0:
            self._recent.popleft()
        stamp, frame_id, _ = frame_header(frame)
        timestamp = self._messages.Timestamp(stamp.sec, stamp.nanosec)
        if self.overlay.has_sinks():
            self._colors = colorize(result.labels, self._lut, self._colors)
            ok, jpeg = cv2.imencode(".jpg", overlay(frame.image, self._colors, self.alpha),
                                    [cv2.IMWRITE_JPEG_QUALITY, int(self.jpeg_quality)])
            if ok:
                self.overlay.log(self._messages.CompressedImage(
                    timestamp=timestamp, frame_id=frame_id, data=jpeg.tobytes(), format="jpeg"))
        if self.labels.has_sinks() and result.labels.dtype == np.uint8:
            height, width = result.labels.shape
            self.labels.log(self._messages.RawImage(
                timestamp=timestamp, frame_id=frame_id, width=width, height=height,
                encoding="mono8", step=width, data=np.ascontiguousarray(result.labels).tobytes()))
        if self.stats.has_sinks():
            stats = {"stamp_ns": stamp.nanoseconds, "frame": int(frame.index),
                     **{f"{k}_ms": round(v, 3) for k, v in result.timings.items()},
                     "total_ms": round(sum(result.timings.values()), 3),
                     "age_ms": round((now - frame.capture_time) * 1e3, 3),
                     "fps": float(len(self._recent)), "crf": bool(result.crf)}
            self.stats.log(stats)

    def close(self, completed: bool = True) -> None:
        """Stop the server (clients are disconnected)."""
        if not self._closed:
            self._closed = True
            self.server.stop()
