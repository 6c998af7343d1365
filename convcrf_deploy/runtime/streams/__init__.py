"""Frame sources for the video runtime: cameras, network streams, video files, image folders
or globs, and the built-in synthetic ``demo`` scene.

Live sources (cameras, streams) are read on a capture thread that keeps only the newest frame:
a slow consumer always gets the latest image instead of a stale one from the driver's buffer,
and the frames it never saw are counted as dropped. Recorded sources (files, folders, ``demo``)
are read in order and nothing is dropped. Unreadable frames are skipped and counted.

Source strings (after jetson-inference's URIs)::

    demo                                  built-in moving scene with ground truth
    0 | cam0 | /dev/video0 | v4l2:///dev/video0     camera
    rtsp://... | http(s)://... | rtmp://... | udp://...  network stream (reconnects)
    clip.mp4                              video file
    frames/ | "frames/*.png"              image folder (sorted) or glob
    bag:PATH                              ROS bag (rosbag2 folder, .mcap, .db3, ROS 1 .bag)
"""
from __future__ import annotations

import glob
import re
import sys
from pathlib import Path

from .base import (IMAGE_SUFFIXES, MAX_CONSECUTIVE_CORRUPT, Frame, FrameSink, FrameSource,
                   SourceError, as_bgr)
from .demo import DemoSource
from .files import FrameWriter, ImageSequenceSource, VideoFileSource
from .live import (STREAM_SCHEMES, LiveSource, _no_camera_message, _open_camera, _open_stream,
                   available_cameras)


def open_source(spec: str, *, demo_size: tuple[int, int] = (240, 320), demo_seed: int = 0,
                demo_frames: int | None = None, reconnect_attempts: int = 5,
                backoff_s: float = 0.5, stall_timeout_s: float = 10.0,
                topic: str | None = None, rate: float | None = None) -> FrameSource:
    """Open the source named by ``spec`` (see the module docstring).

    Args:
        spec: source string.
        demo_size: ``(height, width)`` of the ``demo`` scene.
        demo_seed, demo_frames: seed and length (``None``: endless) of the ``demo`` scene.
        reconnect_attempts, backoff_s, stall_timeout_s: reconnection policy of live sources
            (see :class:`LiveSource`).
        topic, rate: ``bag:`` sources: image topic and replay rate (see ``ros.BagSource``).

    Raises:
        SourceError: the source does not exist or cannot be opened (cameras: the message
            lists the devices that exist).
    """
    spec = str(spec).strip()
    if spec == "demo":
        return DemoSource(*demo_size, seed=demo_seed, num_frames=demo_frames)
    if spec.startswith("bag:"):
        from .ros.bag_source import BagSource  # needs the [ros] extra: imported on use
        return BagSource(spec[len("bag:"):], topic=topic, rate=rate)
    live = {"reconnect_attempts": reconnect_attempts, "backoff_s": backoff_s,
            "stall_timeout_s": stall_timeout_s}
    camera = re.fullmatch(r"(?:cam)?(\d+)", spec)
    if camera or spec.startswith(("v4l2://", "/dev/video")):
        if camera:
            index = int(camera.group(1))
            node: int | str = index
            device_path = f"/dev/video{index}"
        else:
            device_path = spec[len("v4l2://"):] if spec.startswith("v4l2://") else spec
            node = device_path
        if sys.platform.startswith("linux") and not Path(device_path).exists():
            raise SourceError(_no_camera_message(device_path))
        return LiveSource(_open_camera(node), f"camera {device_path}", **live)
    scheme = spec.split("://", 1)[0].lower() if "://" in spec else ""
    if scheme in STREAM_SCHEMES:
        return LiveSource(_open_stream(spec), spec, **live)
    if scheme:
        raise SourceError(f"unsupported source scheme {scheme}:// in {spec!r}; use one of "
                          f"{', '.join(s + '://' for s in STREAM_SCHEMES)}, v4l2://, a camera "
                          "index, a file, a folder or 'demo'")
    path = Path(spec).expanduser()
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise SourceError(f"folder {spec!r} contains no images "
                              f"({', '.join(IMAGE_SUFFIXES)})")
        return ImageSequenceSource(images, f"folder {spec}")
    if any(ch in spec for ch in "*?["):
        matches = sorted(p for p in glob.glob(str(path)) if Path(p).is_file())
        if not matches:
            raise SourceError(f"no files match {spec!r}")
        return ImageSequenceSource(matches, f"glob {spec}")
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return ImageSequenceSource([path], f"image {spec}")
        return VideoFileSource(path)
    raise SourceError(f"video source {spec!r} does not exist: expected 'demo', a camera (cam0, "
                      "/dev/video0), a stream URL (rtsp://...), a video file, an image folder "
                      "or a glob")


__all__ = ["IMAGE_SUFFIXES", "MAX_CONSECUTIVE_CORRUPT", "STREAM_SCHEMES", "DemoSource", "Frame",
           "FrameSink", "FrameSource", "FrameWriter", "ImageSequenceSource", "LiveSource",
           "SourceError", "VideoFileSource", "as_bgr", "available_cameras", "open_source"]
