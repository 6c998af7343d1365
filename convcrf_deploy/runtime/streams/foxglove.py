"""Live view in Foxglove: ``convcrf-run ... --foxglove [HOST:]PORT``.

A sink (:class:`~convcrf_deploy.runtime.streams.FrameSink`) that serves, over the Foxglove
WebSocket protocol (``foxglove-sdk``; open ``ws://HOST:PORT`` in Foxglove desktop or web):

==========================  ===================================================================
``PREFIX/overlay``          ``foxglove.CompressedImage`` (JPEG colour overlay)
``PREFIX/labels``           ``foxglove.RawImage`` ``mono8`` class indices; the channel metadata
                            ``classes`` holds ``{"classes": [...], "palette": [...]}`` JSON
``PREFIX/confidence``       ``foxglove.RawImage`` ``mono8``: the largest class probability per
                            pixel x 255 (``SegmentationResult.confidence``), when the result
                            has it
``PREFIX/stats``            JSON: ``stamp_ns``, ``frame``, ``<stage>_ms``, ``total_ms``,
                            ``age_ms`` (read to result), ``fps`` (over the last second), ``crf``
==========================  ===================================================================

Images keep the input's header stamp and ``frame_id``; a stamp Foxglove cannot show (its
seconds are unsigned 32-bit: negative simulated time, or past 2106) is shown as the nearest it
can, with one warning, and ``stamp_ns`` in the stats keeps the true one. Encoding is skipped
for channels nobody subscribed to. The server binds 127.0.0.1 unless told otherwise. Needs the
``[foxglove]`` extra.

Slow consumers never hold the run. ``write`` only queues the frame (at most ``queue_frames``
waiting: when the publishing thread falls behind, the oldest waiting frame is dropped and
counted in :attr:`FoxgloveSink.dropped_frames`). Each client gets a bounded outbox of
``queue_frames`` frames' messages in the server (foxglove-sdk's ``message_backlog_size``): a
client that reads slower than the stream loses its oldest messages there, so it sees recent
frames rather than a growing delay (the SDK does not count those drops). ``close`` returns
within about ``stop_timeout_s``: a client that stopped reading would hold the SDK's server
shutdown for half a minute or more (measured: 28-45 s), so the server is left to finish
closing in the background after that, with a warning.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

import cv2
import numpy as np

from ...errors import describe_error
from .ros._deps import require
from .ros.bag_sink import classes_json, fit_stamp, frame_header
from .ros.conversions import FOXGLOVE_TIME_SECONDS
from ..visualize import colorize, overlay, palette_lut

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8765
#: channels a frame is published on (overlay, labels, confidence, stats).
CHANNELS_PER_FRAME = 4

log = logging.getLogger(__name__)

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
    """Serve each frame's overlay, labels, confidence and latency to Foxglove clients.

    Args:
        metadata: the model's ``ModelMetadata`` (palette; class names go into channel metadata).
        host, port: where to listen (port 0: a free one; :attr:`port` tells which).
        topic_prefix: topic namespace, e.g. ``/camera/image_raw/convcrf``.
        alpha: overlay opacity; jpeg_quality: 0..100.
        queue_frames: frames waiting to be published, and frames' messages queued per client
            in the server, before the oldest are dropped (>= 1).
        stop_timeout_s: how long :meth:`close` waits for the server to stop.

    ``write`` and ``close`` are called from one thread (the run's); publishing happens on the
    sink's own thread.

    Raises:
        MissingDependencyError: ``foxglove-sdk`` is not installed.
        OSError: the address cannot be bound (e.g. the port is in use).
        ValueError: ``queue_frames`` < 1.
    """

    def __init__(self, metadata: Any, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
                 topic_prefix: str = "/convcrf", alpha: float = 0.5, jpeg_quality: int = 80,
                 queue_frames: int = 4, stop_timeout_s: float = 1.0):
        if queue_frames < 1:
            raise ValueError(f"queue_frames must be >= 1, got {queue_frames}")
        foxglove = require("foxglove", "foxglove-sdk", "foxglove")
        channels = require("foxglove.channels", "foxglove-sdk", "foxglove")
        self._messages = require("foxglove.messages", "foxglove-sdk", "foxglove")
        prefix = "/" + topic_prefix.strip("/")
        self._context = foxglove.Context()  # our own: channels of other code stay apart
        try:
            self.server = foxglove.start_server(
                name="convcrf-run", host=host, port=port, context=self._context,
                message_backlog_size=queue_frames * CHANNELS_PER_FRAME)
        except RuntimeError as exc:  # the SDK reports bind failures as RuntimeError
            raise OSError(describe_error(exc, f"--foxglove {host}:{port}: cannot listen",
                                         "choose another port")) from None
        self.host, self.port = host, self.server.port
        self.description = f"Foxglove {self.url}"
        self._notices: set[str] = set()
        self.overlay = channels.CompressedImageChannel(f"{prefix}/overlay", context=self._context)
        self.labels = channels.RawImageChannel(f"{prefix}/labels", context=self._context,
                                               metadata={"classes": classes_json(metadata)})
        self.confidence = channels.RawImageChannel(f"{prefix}/confidence",
                                                   context=self._context)
        self.stats = foxglove.Channel(f"{prefix}/stats", schema=STATS_SCHEMA,
                                      context=self._context)
        self.alpha, self.jpeg_quality = alpha, jpeg_quality
        self.queue_frames, self.stop_timeout_s = queue_frames, stop_timeout_s
        self._lut = palette_lut(metadata.palette)
        self._colors: np.ndarray | None = None
        self._recent: collections.deque[float] = collections.deque(maxlen=10_000)
        #: frames handed to the server; frames dropped because publishing fell behind.
        self.frames_published = 0
        self.dropped_frames = 0
        #: whether the server had stopped when :meth:`close` returned.
        self.stopped = False
        self.error: str | None = None
        self._pending: collections.deque = collections.deque()
        self._condition = threading.Condition()
        self._closing = False
        self._closed = False
        self._publisher = threading.Thread(target=self._publish_loop, daemon=True,
                                           name="foxglove publisher")
        self._publisher.start()

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def _subscribed(self) -> bool:
        return any(channel.has_sinks() for channel in
                   (self.overlay, self.labels, self.confidence, self.stats))

    def write(self, frame: Any, result: Any) -> None:
        """Queue one frame for publishing (returns at once; see the module docstring)."""
        now = time.monotonic()
        self._recent.append(now)
        while self._recent and now - self._recent[0] > 1.0:
            self._recent.popleft()
        if self._closing or not self._subscribed():
            return
        stats = {"frame": int(frame.index),
                 **{f"{k}_ms": round(v, 3) for k, v in result.timings.items()},
                 "total_ms": round(result.total_ms, 3),   # unary, crf: parts of inference
                 "age_ms": round((now - frame.capture_time) * 1e3, 3),
                 "fps": float(len(self._recent)), "crf": bool(result.crf)}
        with self._condition:
            if len(self._pending) >= self.queue_frames:
                self._pending.popleft()
                self.dropped_frames += 1
            self._pending.append((frame, result, stats))
            self._condition.notify()

    def _publish_loop(self) -> None:
        while True:
            with self._condition:
                while not self._pending and not self._closing:
                    self._condition.wait()
                if self._closing:
                    return
                frame, result, stats = self._pending.popleft()
            try:
                self._publish(frame, result, stats)
                self.frames_published += 1
            except Exception as exc:  # the run goes on; said once, reported in summary()
                if self.error is None:
                    self.error = describe_error(exc, type(exc).__name__)
                    log.warning("Foxglove: cannot publish a frame (%s); the run goes on",
                                self.error)

    def _publish(self, frame: Any, result: Any, stats: dict[str, Any]) -> None:
        stamp, frame_id, _ = frame_header(frame, self._notices)
        # Foxglove times are unsigned 32-bit seconds: simulated (negative) or far-future stamps
        # are shown clamped; the stats' stamp_ns keeps the true one.
        shown = fit_stamp(stamp, FOXGLOVE_TIME_SECONDS, self._notices,
                          f"{self.description} (Foxglove time)")
        timestamp = self._messages.Timestamp(shown.sec, shown.nanosec)
        if self.overlay.has_sinks():
            self._colors = colorize(result.labels, self._lut, self._colors)
            ok, jpeg = cv2.imencode(".jpg", overlay(frame.image, self._colors, self.alpha),
                                    [cv2.IMWRITE_JPEG_QUALITY, int(self.jpeg_quality)])
            if ok:
                self.overlay.log(self._messages.CompressedImage(
                    timestamp=timestamp, frame_id=frame_id, data=jpeg.tobytes(), format="jpeg"))
        for channel, image in ((self.labels, result.labels),
                               (self.confidence, getattr(result, "confidence", None))):
            if image is not None and image.dtype == np.uint8 and channel.has_sinks():
                height, width = image.shape
                channel.log(self._messages.RawImage(
                    timestamp=timestamp, frame_id=frame_id, width=width, height=height,
                    encoding="mono8", step=width, data=np.ascontiguousarray(image).tobytes()))
        if self.stats.has_sinks():
            self.stats.log({"stamp_ns": stamp.nanoseconds, **stats})

    def close(self, completed: bool = True) -> None:
        """Stop publishing (frames still waiting are dropped and counted) and stop the
        server, waiting at most about ``stop_timeout_s`` + 0.5 s (see the module docstring)."""
        if self._closed:
            return
        self._closed = True
        with self._condition:
            self._closing = True
            self.dropped_frames += len(self._pending)
            self._pending.clear()
            self._condition.notify_all()
        self._publisher.join(timeout=0.5)        # at most the frame being encoded
        stopper = threading.Thread(target=self.server.stop, daemon=True,
                                   name="foxglove server stop")
        stopper.start()
        stopper.join(timeout=self.stop_timeout_s)
        self.stopped = not stopper.is_alive()
        if not self.stopped:
            log.warning("Foxglove: a client is not reading; the server at %s finishes closing "
                        "in the background", self.url)

    def summary(self) -> dict[str, Any]:
        """What was served: ``{"sink": "foxglove", "url", "frames_published",
        "dropped_frames", "queue_frames", "server_stopped", "error", "message"}``."""
        message = (f"--foxglove {self.url}: published {self.frames_published} frames, dropped "
                   f"{self.dropped_frames} (publishing fell behind); clients slower than the "
                   f"stream keep at most {self.queue_frames} frames queued (older ones are "
                   "dropped)")
        if not self.stopped and self._closed:
            message += "; a client was not reading: the server closed in the background"
        if self.error:
            message += f"; publishing failed: {self.error}"
        return {"sink": "foxglove", "url": self.url, "frames_published": self.frames_published,
                "dropped_frames": self.dropped_frames, "queue_frames": self.queue_frames,
                "server_stopped": self.stopped, "error": self.error, "message": message}
