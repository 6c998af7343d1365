"""Write frames from any source as a ROS 2 image bag: a bag to try ``--video bag:PATH`` on,
from a video file, an image folder, a camera or the demo scene (docs/robotics.md, "A bag to
start from")::

    from convcrf_deploy.runtime.streams.ros import write_image_bag
    write_image_bag("drive", "demo", max_frames=100)          # or "clip.mp4", "frames/", ...

Each frame becomes one ``sensor_msgs/msg/Image`` (``bgr8``) or ``CompressedImage`` (``jpeg``)
on ``topic``, stamped and recorded at ``start + i / fps`` (``fps``: the source's, else 30), or
at the frame's own stamp when it has one (a bag source). The bag is written into a hidden
folder beside ``path`` and renamed to it when complete, like ``--save-bag``.
"""
from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ._deps import require
from .bag_sink import BAG_VERSION, STORAGES, check_output_bag
from .conversions import COMPRESSED_IMAGE_TYPE, IMAGE_TYPE, Stamp, bgr_image_fields, jpeg_fields

#: the topic camera drivers publish raw images on (and README's commands read).
DEFAULT_TOPIC = "/camera/image_raw"
ENCODINGS = ("bgr8", "jpeg")
#: frame rates ``fps`` may be: a slow survey camera to a fast event camera's frames.
MIN_FPS, MAX_FPS = 0.01, 10000.0


def write_image_bag(path: str | Path, source: Any = "demo", *, topic: str = DEFAULT_TOPIC,
                    frame_id: str = "camera", encoding: str = "bgr8", storage: str = "mcap",
                    max_frames: int | None = 300, fps: float | None = None,
                    demo_size: tuple[int, int] = (240, 320)) -> dict[str, Any]:
    """Write the frames of ``source`` into a new rosbag2 folder ``path``.

    Args:
        path: the bag folder to create (must not exist).
        source: a source string for :func:`~convcrf_deploy.runtime.streams.open_source`
            (``"demo"``, a video file, an image folder or glob, a camera, ``bag:...``) or an
            open :class:`~convcrf_deploy.runtime.streams.FrameSource` (closed afterwards).
        topic, frame_id: where the images go and their header ``frame_id``.
        encoding: ``"bgr8"`` (``sensor_msgs/msg/Image``) or ``"jpeg"`` (``CompressedImage``,
            on ``topic + "/compressed"`` as image_transport names it).
        storage: ``"mcap"`` or ``"sqlite3"``.
        max_frames: stop after this many frames (``None``: until the source ends; the demo
            scene never ends).
        fps: frame rate of the stamps, 0.01..10000 (default: the source's, else 30).
        demo_size: ``(height, width)`` of the demo scene.

    Returns:
        ``{"path", "topic", "msgtype", "frames", "duration_s"}``.

    Raises:
        MissingDependencyError: ``rosbags`` is not installed.
        ValueError: bad ``encoding``/``storage``/``max_frames``, or ``max_frames=None`` with an
            endless source.
        FileExistsError, FileNotFoundError: see :func:`check_output_bag`.
        SourceError: the source cannot be opened.
    """
    from .. import open_source

    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    if storage not in STORAGES:
        raise ValueError(f"bag storage must be one of {STORAGES}, got {storage!r}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if fps is not None and not (isinstance(fps, (int, float)) and math.isfinite(fps)
                                and MIN_FPS <= fps <= MAX_FPS):
        # 0 was taken as "the default", a negative rate ran time backwards, inf gave every
        # frame one stamp (second new-user trial).
        raise ValueError(f"fps must be a number in {MIN_FPS}..{MAX_FPS:g} frames per second, "
                         f"got {fps!r}")
    if isinstance(source, str) and source.strip() == "demo" and max_frames is None:
        raise ValueError("the demo scene never ends: give max_frames")
    rosbag2 = require("rosbags.rosbag2", "rosbags", "ros")
    typesys = require("rosbags.typesys", "rosbags", "ros")
    if isinstance(source, str):
        inputs = [source.strip()[len("bag:"):]] if source.strip().startswith("bag:") else []
        target = check_output_bag(path, inputs, option="path")
        source = open_source(source, demo_size=demo_size)
    else:
        try:
            target = check_output_bag(path, option="path")
        except BaseException:
            source.close()
            raise
    store = typesys.get_typestore(typesys.Stores.ROS2_HUMBLE)
    types = store.types
    msgtype = IMAGE_TYPE if encoding == "bgr8" else COMPRESSED_IMAGE_TYPE
    out_topic = topic if encoding == "bgr8" else f"{topic.rstrip('/')}/compressed"
    rate = float(fps if fps is not None else getattr(source, "fps", None) or 30.0)
    start_ns = time.time_ns()
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial",
                                    dir=target.parent))
    frames, last_ns = 0, start_ns
    try:
        writer = rosbag2.Writer(staging / target.name, version=BAG_VERSION,
                                storage_plugin=getattr(rosbag2.StoragePlugin, storage.upper()))
        with writer:
            connection = writer.add_connection(out_topic, msgtype, typestore=store)
            while max_frames is None or frames < max_frames:
                frame = source.read()
                if frame is None:
                    break
                stamp = (Stamp.of(frame.stamp) if frame.stamp is not None
                         else Stamp.from_ns(start_ns + round(frames * 1e9 / rate)))
                header = types["std_msgs/msg/Header"](
                    stamp=types["builtin_interfaces/msg/Time"](sec=stamp.sec,
                                                               nanosec=stamp.nanosec),
                    frame_id=str(getattr(frame, "frame_id", "") or frame_id))
                fields = (bgr_image_fields(frame.image) if encoding == "bgr8"
                          else jpeg_fields(frame.image))
                last_ns = int(getattr(frame, "log_time_ns", 0) or stamp.nanoseconds)
                writer.write(connection, last_ns, store.serialize_cdr(
                    types[msgtype](header=header, **fields), msgtype))
                frames += 1
        if frames == 0:
            raise ValueError(f"{source.description} gave no frame: no bag written")
        (staging / target.name).rename(target)
        staging.rmdir()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        source.close()
    return {"path": str(target), "topic": out_topic, "msgtype": msgtype, "frames": frames,
            "duration_s": frames / rate}
