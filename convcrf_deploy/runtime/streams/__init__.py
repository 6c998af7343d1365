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
    frames/ | "frames/*.png"              image folder or glob, in natural order (2 before 10)
    "frames/img_%04d.png"                 numbered images (OpenCV's sequence pattern), by number
    bag:PATH                              ROS bag (rosbag2 folder, .mcap, .db3, ROS 1 .bag)

Folders, globs and patterns skip label maps (what ``convcrf_deploy.data.folder`` reads as
labels: ``*_5labels.png`` and VOC's ``SegmentationClass/`` files), and the source's
description says how many. Images may differ in size: each is segmented at its own size.
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
        images = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        if not images:
            raise SourceError(f"folder {spec!r} contains no images "
                              f"({', '.join(IMAGE_SUFFIXES)})")
        return _image_sequence(images, f"folder {spec}")
    if "%" in path.name and not path.exists():
        return _image_sequence(_numbered_images(path), f"sequence {spec}")
    if any(ch in spec for ch in "*?["):
        matches = [Path(p) for p in glob.glob(str(path)) if Path(p).is_file()]
        if not matches:
            raise SourceError(f"no files match {spec!r}")
        return _image_sequence(matches, f"glob {spec}")
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return ImageSequenceSource([path], f"image {spec}")
        return VideoFileSource(path)
    raise SourceError(f"video source {spec!r} does not exist: expected 'demo', a camera (cam0, "
                      "/dev/video0), a stream URL (rtsp://...), a video file, an image folder "
                      "or a glob")


def natural_key(path: str | Path) -> list:
    """Sort key ordering names as people count: ``2.png`` before ``10.png`` (runs of digits
    compare as numbers, the rest case-insensitively; the full path breaks ties)."""
    parts = re.split(r"(\d+)", str(path))
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in parts] \
        + [(2, 0, str(path))]


def _numbered_images(pattern: Path) -> list[Path]:
    """The files an OpenCV sequence pattern (``img_%04d.png``: one ``%d`` field, printf
    style) names, in the folder that exists, ordered by their number."""
    from ...files import is_integer_pattern

    if not is_integer_pattern(pattern.name):
        raise SourceError(f"image sequence {str(pattern)!r} must contain one integer field "
                          "such as %04d (and no other % field)")
    folder = pattern.parent if str(pattern.parent) else Path(".")
    if not folder.is_dir():
        raise SourceError(f"image sequence {str(pattern)!r}: folder {folder} does not exist")
    field = re.search(r"%0?\d*d", pattern.name)
    prefix = pattern.name[:field.start()].replace("%%", "%")
    suffix = pattern.name[field.end():].replace("%%", "%")
    numbered = {}
    for candidate in folder.iterdir():
        name = candidate.name
        digits = name[len(prefix):len(name) - len(suffix)] if suffix else name[len(prefix):]
        if (name.startswith(prefix) and name.endswith(suffix) and digits.isdigit()
                and pattern.name % int(digits) == name and candidate.is_file()):
            numbered[int(digits)] = candidate
    if not numbered:
        raise SourceError(f"no files match the image sequence {str(pattern)!r} (e.g. "
                          f"{pattern.name % 0} or {pattern.name % 1} in {folder})")
    return [numbered[number] for number in sorted(numbered)]


def _image_sequence(paths: list, description: str) -> ImageSequenceSource:
    """An :class:`ImageSequenceSource` of ``paths`` without label maps, in natural order
    (patterns: in the order given); the description says what was skipped."""
    from ...data.folder import is_label_map

    ordered = paths if description.startswith("sequence ") else sorted(paths, key=natural_key)
    images = [p for p in ordered if not is_label_map(p)]
    skipped = len(ordered) - len(images)
    if not images:
        raise SourceError(f"{description} holds only label maps ({skipped} files such as "
                          f"{Path(ordered[0]).name}, which convcrf-eval reads as labels); "
                          "pass the images")
    if skipped:
        description += f" ({skipped} label maps skipped)"
    return ImageSequenceSource(images, description)


__all__ = ["IMAGE_SUFFIXES", "MAX_CONSECUTIVE_CORRUPT", "STREAM_SCHEMES", "DemoSource", "Frame",
           "FrameSink", "FrameSource", "FrameWriter", "ImageSequenceSource", "LiveSource",
           "SourceError", "VideoFileSource", "as_bgr", "available_cameras", "natural_key",
           "open_source"]
