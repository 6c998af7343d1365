"""Segmentation results as a new rosbag2: ``convcrf-run ... --save-bag OUT``.

Per processed frame, under ``PREFIX`` (``<input topic>/convcrf`` for bag input, else
``/convcrf``):

==================================  ============================================================
``PREFIX/labels``                   ``sensor_msgs/msg/Image`` ``mono8``: class index per pixel
``PREFIX/confidence``               ``sensor_msgs/msg/Image`` ``mono8``: the largest class
                                    probability per pixel x 255 (``SegmentationResult.
                                    confidence``); when the result has it
``PREFIX/overlay/compressed``       ``sensor_msgs/msg/CompressedImage`` JPEG colour overlay
                                    (``overlay="jpeg"``, the default), or
``PREFIX/overlay``                  ``sensor_msgs/msg/Image`` ``bgr8`` (``overlay="bgr8"``)
``PREFIX/latency``                  ``diagnostic_msgs/msg/DiagnosticArray``: one status named
                                    ``convcrf`` with ``preprocess_ms``, ``inference_ms``,
                                    ``postprocess_ms``, ``total_ms``, ``crf`` (strings, ROS's
                                    diagnostics convention)
==================================  ============================================================

and once, before the first frame, ``PREFIX/classes``: ``std_msgs/msg/String`` holding JSON
``{"classes": [...], "palette": [[r, g, b], ...]}``, offered as transient-local ("latched"), also
stored in ``metadata.yaml`` ``custom_data`` under ``convcrf.classes``. Every message keeps the
input message's header ``stamp`` and ``frame_id`` and is recorded at the input's bag time, so
the output lines up with the input bag when both are played. :meth:`BagSink.summary` says
what was written (path, topics, message counts); ``convcrf-run`` prints it.

The bag is written into a hidden folder beside ``OUT`` and renamed to ``OUT`` only when the run
ends; an existing ``OUT`` is never opened, and a failed run leaves nothing behind.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...visualize import colorize, overlay, palette_lut
from ._deps import require
from .conversions import (LOG_TIME_NS, ROS2_TIME_SECONDS, Stamp, bgr_image_fields, jpeg_fields,
                          labels_fields)

STORAGES = ("mcap", "sqlite3")
OVERLAY_FORMATS = ("jpeg", "bgr8")
#: rosbag2 metadata version written (the format of ROS 2 Jazzy; rosbags writes 8 or 9).
BAG_VERSION = 8

log = logging.getLogger(__name__)


#: storage-file suffixes, which name the file inside a rosbag2 folder, not the bag.
BAG_FILE_SUFFIXES = (".mcap", ".db3", ".bag")


def check_output_bag(path: str | Path, inputs: Sequence[str | Path] = (),
                     option: str = "--save-bag") -> Path:
    """Validate an output bag path before anything runs; returns it resolved. ``option``
    names the path in messages (the command's option, or an API argument such as ``path``).

    Raises:
        FileExistsError: ``path`` exists (an existing bag is never modified).
        ValueError: ``path`` is, contains or lies inside one of ``inputs``, or ends in a
            storage file's suffix (``.mcap``, ``.db3``, ``.bag``: a bag is a folder).
        FileNotFoundError: its folder does not exist.
    """
    if Path(path).suffix.lower() in BAG_FILE_SUFFIXES:
        # A rosbag2 bag is a folder (metadata.yaml + its storage file): "out.mcap" made a
        # folder out.mcap/ holding out.mcap.mcap (second new-user trial).
        raise ValueError(f"{option} {path}: a ROS 2 bag is a folder; give the folder's name "
                         f"without {Path(path).suffix} (e.g. {Path(path).stem}: it will hold "
                         f"{Path(path).stem}{Path(path).suffix.lower()})")
    out = Path(path).expanduser().resolve()
    for source in inputs:
        source = Path(source).expanduser().resolve()
        if out == source or source in out.parents or out in source.parents:
            where = "is" if out == source else "contains" if out in source.parents else \
                "lies inside"
            raise ValueError(f"{option} {path} {where} the input bag {source}: write the "
                             "results elsewhere")
    if os.path.lexists(out):
        raise FileExistsError(f"{option} {path}: it exists; an existing bag is never "
                              "modified: choose a new name or remove it")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{option} {path}: folder {out.parent} does not exist")
    return out


def wall_stamp(capture_time: float) -> Stamp:
    """The wall-clock time of a ``time.monotonic()`` instant (for frames without a stamp)."""
    return Stamp.from_ns(time.time_ns() - int((time.monotonic() - capture_time) * 1e9))


def frame_header(frame: Any, notices: set[str] | None = None) -> tuple[Stamp, str, int]:
    """``(stamp, frame_id, bag time ns)`` of a frame: a bag frame's own, else the wall clock.

    A frame whose ``stamp`` is not a time (no ``sec``/``nanosec``) gets the wall clock too,
    with one warning per ``notices`` set (a sink's own: each sink says it once)."""
    stamp = None
    if frame.stamp is not None:
        try:
            stamp = Stamp.of(frame.stamp)
        except ValueError as exc:
            notice(notices, "stamp", "frame %d: %s; using the wall clock for such frames",
                   frame.index, exc)
    if stamp is None:
        stamp = wall_stamp(frame.capture_time)
    return (stamp, str(getattr(frame, "frame_id", "")),
            int(getattr(frame, "log_time_ns", 0) or stamp.nanoseconds))


def notice(notices: set[str] | None, key: str, message: str, *args: Any) -> None:
    """Log ``message`` as a warning the first time ``key`` is seen in ``notices`` (a sink's
    set of what it has said; ``None``: always)."""
    if notices is None or key not in notices:
        if notices is not None:
            notices.add(key)
        log.warning(message, *args)


def fit_stamp(stamp: Stamp, seconds: tuple[int, int], notices: set[str] | None,
              where: str) -> Stamp:
    """``stamp`` clamped to a format's ``seconds`` range, saying once per ``notices`` when a
    stamp does not fit (``where`` names the output and its range)."""
    fitted = stamp.clamped(seconds)
    if fitted != stamp:
        notice(notices, f"clamped {where}", "%s: stamp %s is outside what it can store "
               "(seconds %d..%d); such stamps are written as the nearest it can hold (%s)",
               where, stamp, *seconds, fitted)
    return fitted


def classes_json(metadata: Any) -> str:
    """``{"classes": [...], "palette": [[r, g, b], ...]}`` of a model's metadata."""
    return json.dumps({"classes": list(metadata.class_names),
                       "palette": np.asarray(metadata.palette).astype(int).tolist()})


def latency_values(result: Any) -> list[tuple[str, str]]:
    """``(key, value)`` pairs of a result's per-stage milliseconds, their total and ``crf``."""
    values = [(f"{stage}_ms", f"{ms:.3f}") for stage, ms in result.timings.items()]
    # Not the sum of timings: unary and crf are parts of inference (counted twice before).
    values.append(("total_ms", f"{result.total_ms:.3f}"))
    values.append(("crf", "true" if result.crf else "false"))
    return values


class BagSink:
    """Writes labels, overlay and latency of every frame into a new rosbag2 (a
    :class:`~convcrf_deploy.runtime.video.FrameSink`).

    Args:
        path: the bag folder to create (must not exist; see :func:`check_output_bag`).
        metadata: the model's ``ModelMetadata`` (class names, palette).
        topic_prefix: topic namespace (``/camera/image_raw/convcrf``).
        inputs: input paths ``path`` must differ from.
        storage: ``"mcap"`` (default) or ``"sqlite3"``.
        overlay_format: ``"jpeg"`` (CompressedImage) or ``"bgr8"`` (Image).
        alpha: overlay opacity 0..1; jpeg_quality: 0..100.

    Not thread-safe: call ``write`` from one thread (``run_video`` does).

    Raises:
        MissingDependencyError: ``rosbags`` is not installed.
        FileExistsError, ValueError, FileNotFoundError: see :func:`check_output_bag`.
    """

    def __init__(self, path: str | Path, metadata: Any, *, topic_prefix: str = "/convcrf",
                 inputs: Sequence[str | Path] = (), storage: str = "mcap",
                 overlay_format: str = "jpeg", alpha: float = 0.5, jpeg_quality: int = 90):
        if storage not in STORAGES:
            raise ValueError(f"bag storage must be one of {STORAGES}, got {storage!r}")
        if overlay_format not in OVERLAY_FORMATS:
            raise ValueError(f"overlay format must be one of {OVERLAY_FORMATS}, got "
                             f"{overlay_format!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in 0..1, got {alpha}")
        rosbag2 = require("rosbags.rosbag2", "rosbags", "ros")
        typesys = require("rosbags.typesys", "rosbags", "ros")
        interfaces = require("rosbags.interfaces", "rosbags", "ros")
        self.path = check_output_bag(path, inputs)
        self.description = f"bag {self.path}"
        self._notices: set[str] = set()
        self.prefix = "/" + topic_prefix.strip("/")
        self.overlay_format, self.alpha, self.jpeg_quality = overlay_format, alpha, jpeg_quality
        self.metadata = metadata
        self._lut = palette_lut(metadata.palette)
        self._colors: np.ndarray | None = None
        self.frames_written = 0
        self.storage = storage
        #: messages written per topic.
        self.message_counts: dict[str, int] = {}
        self._kept = False
        self._ts = typesys.get_typestore(typesys.Stores.ROS2_HUMBLE)
        # Written into a hidden folder beside the target; renamed into place by close().
        self._staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".partial",
                                              dir=self.path.parent))
        try:
            plugin = getattr(rosbag2.StoragePlugin, storage.upper())
            self._writer = rosbag2.Writer(self._staging / self.path.name, version=BAG_VERSION,
                                          storage_plugin=plugin)
            self._writer.set_custom_data("convcrf.classes", classes_json(metadata))
            self._writer.set_custom_data("convcrf.topic_prefix", self.prefix)
            self._writer.open()
            self._connections = self._add_connections(interfaces)
        except BaseException:
            shutil.rmtree(self._staging, ignore_errors=True)
            raise
        self._closed = False

    def _add_connections(self, interfaces: Any) -> dict[str, Any]:
        latched = interfaces.Qos(
            interfaces.QosHistory.KEEP_LAST, 1, interfaces.QosReliability.RELIABLE,
            interfaces.QosDurability.TRANSIENT_LOCAL, interfaces.QosTime(0, 0),
            interfaces.QosTime(0, 0), interfaces.QosLiveliness.AUTOMATIC,
            interfaces.QosTime(0, 0), False)
        if self.overlay_format == "jpeg":  # image_transport's name for the compressed stream
            overlay_topic = f"{self.prefix}/overlay/compressed"
            overlay_type = "sensor_msgs/msg/CompressedImage"
        else:
            overlay_topic, overlay_type = f"{self.prefix}/overlay", "sensor_msgs/msg/Image"
        add = self._writer.add_connection
        return {
            "classes": add(f"{self.prefix}/classes", "std_msgs/msg/String", typestore=self._ts,
                           offered_qos_profiles=[latched]),
            "labels": add(f"{self.prefix}/labels", "sensor_msgs/msg/Image", typestore=self._ts),
            "confidence": add(f"{self.prefix}/confidence", "sensor_msgs/msg/Image",
                              typestore=self._ts),
            "overlay": add(overlay_topic, overlay_type, typestore=self._ts),
            "latency": add(f"{self.prefix}/latency", "diagnostic_msgs/msg/DiagnosticArray",
                           typestore=self._ts),
        }

    @property
    def topics(self) -> dict[str, str]:
        """``{topic: message type}`` written (the documented layout)."""
        return {c.topic: c.msgtype for c in self._connections.values()}

    def _put(self, key: str, msg: Any, log_time_ns: int) -> None:
        connection = self._connections[key]
        self._writer.write(connection, log_time_ns,
                           self._ts.serialize_cdr(msg, connection.msgtype))
        self.message_counts[connection.topic] = self.message_counts.get(connection.topic, 0) + 1

    def summary(self) -> dict[str, Any] | None:
        """What was written, once closed: ``{"sink": "bag", "path", "storage", "frames",
        "topics": {topic: message count}, "message": one line}``; None before ``close`` or
        when nothing was kept (no frame, or a failed run)."""
        if not self._closed or not self._kept:
            return None
        topics = {topic: count for topic, count in sorted(self.message_counts.items())}
        listing = ", ".join(f"{topic} {count}" for topic, count in topics.items())
        return {"sink": "bag", "path": str(self.path), "storage": self.storage,
                "frames": self.frames_written, "topics": topics,
                "message": f"--save-bag: wrote {self.path} ({self.storage}, {self.frames_written} "
                           f"frames; messages per topic: {listing})"}

    def write(self, frame: Any, result: Any) -> None:
        """Add one frame's labels, overlay and latency (stamped like the input message)."""
        types = self._ts.types
        stamp, frame_id, log_time_ns = frame_header(frame, self._notices)
        stamp = fit_stamp(stamp, ROS2_TIME_SECONDS, self._notices,
                          f"{self.description} (ROS 2 time)")
        if not LOG_TIME_NS[0] <= log_time_ns <= LOG_TIME_NS[1]:
            notice(self._notices, "log time", "%s: bag time %d ns of frame %d cannot be "
                   "stored (%d..%d); such frames are recorded at the nearest time it can hold",
                   self.description, log_time_ns, frame.index, *LOG_TIME_NS)
            log_time_ns = min(max(log_time_ns, LOG_TIME_NS[0]), LOG_TIME_NS[1])
        header = types["std_msgs/msg/Header"](
            stamp=types["builtin_interfaces/msg/Time"](sec=stamp.sec, nanosec=stamp.nanosec),
            frame_id=frame_id)
        if self.frames_written == 0:
            self._put("classes", types["std_msgs/msg/String"](data=classes_json(self.metadata)),
                      log_time_ns)
        self._put("labels", types["sensor_msgs/msg/Image"](header=header,
                                                           **labels_fields(result.labels)),
                  log_time_ns)
        confidence = getattr(result, "confidence", None)
        if confidence is not None:
            self._put("confidence", types["sensor_msgs/msg/Image"](
                header=header, **labels_fields(confidence)), log_time_ns)
        self._colors = colorize(result.labels, self._lut, self._colors)
        blended = overlay(frame.image, self._colors, self.alpha)
        if self.overlay_format == "jpeg":
            msg = types["sensor_msgs/msg/CompressedImage"](
                header=header, **jpeg_fields(blended, self.jpeg_quality))
        else:
            msg = types["sensor_msgs/msg/Image"](header=header, **bgr_image_fields(blended))
        self._put("overlay", msg, log_time_ns)
        key_value = types["diagnostic_msgs/msg/KeyValue"]
        status = types["diagnostic_msgs/msg/DiagnosticStatus"](
            level=0, name="convcrf", message="ok", hardware_id=frame_id,
            values=[key_value(key=k, value=v) for k, v in latency_values(result)])
        self._put("latency", types["diagnostic_msgs/msg/DiagnosticArray"](
            header=header, status=[status]), log_time_ns)
        self.frames_written += 1

    def close(self, completed: bool = True) -> None:
        """Finish the bag and rename it to ``path`` (``completed=False`` or no frame written:
        discard it).

        Raises:
            FileExistsError: ``path`` appeared meanwhile (the new bag is left in the hidden
                folder named in the message, nothing existing is touched).
        """
        if self._closed:
            return
        self._closed = True
        staged = self._staging / self.path.name
        if not completed or self.frames_written == 0:  # no result: no bag
            if completed:
                log.warning("--save-bag %s: no frame was processed, no bag written", self.path)
            try:
                self._writer.abort()
            finally:
                shutil.rmtree(self._staging, ignore_errors=True)
            return
        try:
            self._writer.close()
        except BaseException:
            shutil.rmtree(self._staging, ignore_errors=True)  # never leave half a bag behind
            raise
        if os.path.lexists(self.path):  # the complete bag stays where it is: never overwrite
            raise FileExistsError(f"--save-bag {self.path} appeared while writing: the results "
                                  f"are in {staged}")
        os.rename(staged, self.path)
        self._staging.rmdir()
        self._kept = True
