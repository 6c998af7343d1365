"""Recorded sources and file outputs: video files and image sequences in, video files and
image patterns out (:class:`FrameWriter`)."""
from __future__ import annotations

import logging
import math
import os
import time
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from ...files import atomic_write, discard, replace_atomically, temporary_path_for
from .base import MAX_CONSECUTIVE_CORRUPT, Frame, FrameSource, SourceError, as_bgr

log = logging.getLogger(__name__)

#: video containers a recording is known to work in (the ``mp4v`` codec through FFmpeg).
VIDEO_SUFFIXES = (".mp4", ".avi")


class VideoFileSource(FrameSource):
    """A video file, read in order through OpenCV (FFmpeg)."""

    def __init__(self, path: str | Path):
        super().__init__(str(path))
        self.capture = cv2.VideoCapture(str(path))
        if not self.capture.isOpened():
            raise SourceError(f"cannot open video file {str(path)!r}: OpenCV (FFmpeg) cannot "
                              "decode it; check the file or convert it to H.264 mp4")
        self.fps = self.capture.get(cv2.CAP_PROP_FPS) or None
        self._index = 0

    def read(self) -> Frame | None:
        failures = 0
        while failures < MAX_CONSECUTIVE_CORRUPT:
            ok, image = self.capture.read()
            if not ok:
                total = self.capture.get(cv2.CAP_PROP_FRAME_COUNT)
                position = self.capture.get(cv2.CAP_PROP_POS_FRAMES)
                if total <= 0 or position >= total - 1 or self._index >= total:
                    return None  # end of file
                failures += 1
                self.corrupt_frames += 1
                self._index += 1
                continue
            image = as_bgr(image)
            index = self._index
            self._index += 1
            if image is None:
                failures += 1
                self.corrupt_frames += 1
                continue
            return Frame(image, index, time.monotonic())
        log.warning("%s: %d unreadable frames in a row, stopping", self.description, failures)
        return None

    def close(self) -> None:
        self.capture.release()


class ImageSequenceSource(FrameSource):
    """Image files read in the given order; unreadable files are skipped and counted.
    Images are used as viewers show them: their EXIF orientation is applied."""

    def __init__(self, paths: Sequence[str | Path], description: str | None = None):
        super().__init__(description or f"{len(paths)} images")
        if not paths:
            raise SourceError(f"no images in {self.description}")
        self.paths = [Path(p) for p in paths]
        self._position = 0

    def read(self) -> Frame | None:
        while self._position < len(self.paths):
            index = self._position
            self._position += 1
            # EXIF orientation applied, as every reader of the toolkit does
            # (convcrf_deploy.data.folder); IMREAD_UNCHANGED would ignore it.
            image = as_bgr(cv2.imread(str(self.paths[index]),
                                      cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH))
            if image is None:
                self.corrupt_frames += 1
                log.warning("skipping unreadable image %s", self.paths[index])
                continue
            return Frame(image, index, time.monotonic())
        return None


#: frame rate of a recording whose source has none (or an unusable one).
DEFAULT_FPS = 30.0
#: MPEG-4 Part 2 (``mp4v``, ISO/IEC 14496-2) stores the time base's denominator
#: (``vop_time_increment_resolution``) in 16 bits; OpenCV makes it the numerator of the rate
#: written as a decimal fraction (89.863 fps -> 89863/1000), so 89.863 fps cannot be encoded.
MAX_TIME_BASE = 65535
#: lowest and highest frame rates a recording is made at (0.01: one frame per 100 s; above
#: 1000 fps, FFmpeg's AVI reader reports another rate than the one written).
RATE_RANGE = (0.01, 1000.0)
#: smallest and largest frame side (pixels) of a recording: the MPEG-4 encoder takes 2..8191,
#: and OpenCV's FFmpeg writer drops the last row and column of odd sizes, so sides are even.
VIDEO_SIDES = (2, 8190)


def _opencv_rate_fraction(fps: float) -> Fraction:
    """The fraction OpenCV's FFmpeg writer makes of ``fps``: the shortest decimal within
    0.001 of it (``cap_ffmpeg_impl.hpp``), reduced as FFmpeg does."""
    base, rate = 1, int(fps + 0.5)
    while abs(rate / base - fps) > 0.001:
        base *= 10
        rate = int(fps * base + 0.5)
    return Fraction(rate, base)


def recordable_rate(fps: float | None) -> float:
    """The frame rate closest to ``fps`` that an ``mp4v`` video (``.mp4``, ``.avi``, ...) can
    hold: ``fps`` itself when it can, else ``fps`` rounded to 3, 2, 1 or 0 decimals (89.863 ->
    89.86), clamped to :data:`RATE_RANGE`; :data:`DEFAULT_FPS` for ``None``, 0, negative or
    non-finite rates."""
    if fps is None or not math.isfinite(fps) or fps <= 0:
        return DEFAULT_FPS
    for candidate in (fps, *(round(fps, digits) for digits in (3, 2, 1, 0))):
        if RATE_RANGE[0] <= candidate <= RATE_RANGE[1] and \
                1 <= _opencv_rate_fraction(candidate).numerator <= MAX_TIME_BASE:
            return float(candidate)
    return float(min(max(fps, RATE_RANGE[0]), RATE_RANGE[1]))


def recordable_size(width: int, height: int) -> tuple[int, int]:
    """``(width, height)`` scaled (keeping the aspect ratio as far as possible) into what a
    recording holds: even sides in :data:`VIDEO_SIDES`; unchanged when it fits."""
    low, high = VIDEO_SIDES
    scale = min(1.0, high / max(width, height))
    width, height = (max(low, min(high, round(side * scale)) // 2 * 2)
                     for side in (width, height))
    return width, height


class FrameWriter:
    """Records rendered frames to a video file (``mp4v``) or an image pattern (``%05d``).

    The output is opened on the first frame, at that frame's size; later frames of another
    size (e.g. after switching to the side-by-side view) are resized to it. A rate or size the
    MPEG-4 codec cannot hold is replaced by the nearest one it can (:func:`recordable_rate`,
    :func:`recordable_size`), with one warning. Nothing the user
    has is replaced until it is complete: a video is recorded into a temporary file beside
    ``target`` and renamed to it by :meth:`close` (a run that ends, is interrupted or loses its
    source leaves a playable file); :meth:`abort` discards it and keeps any previous file.
    Each image of a pattern is written the same way.

    Args:
        target: ``out.mp4`` / ``out.avi`` or a pattern such as ``frames/img_%05d.png``.
        fps: frame rate written into the video file (``None``: :data:`DEFAULT_FPS`).

    Attributes:
        fps: the rate actually written (see :func:`recordable_rate`).

    Raises (from :meth:`write`):
        OSError: the video cannot be opened or an image written (the message says why).
    """

    def __init__(self, target: str | os.PathLike, fps: float | None = DEFAULT_FPS):
        self.target = str(target)
        self.is_pattern = "%" in Path(self.target).name
        self.fps = recordable_rate(fps)
        if not self.is_pattern and fps is not None and self.fps != fps:
            log.warning("recording %s at %g fps: the video cannot hold a rate of %g fps (MPEG-4 "
                        "counts time in at most %d ticks per second; recordings are made at "
                        "%g..%g fps)", self.target, self.fps, fps, MAX_TIME_BASE, *RATE_RANGE)
        parent = Path(self.target).parent
        if not parent.exists():
            raise FileNotFoundError(f"cannot save to {self.target}: folder {parent} does not exist")
        if self.is_pattern:
            try:
                self.target % 0
            except (TypeError, ValueError) as exc:
                raise ValueError(f"image pattern {self.target!r} must contain one integer "
                                 "field such as %05d") from exc
        self._writer: cv2.VideoWriter | None = None
        self._temporary: Path | None = None
        self._size: tuple[int, int] | None = None
        self.frames_written = 0

    def write(self, image: np.ndarray) -> None:
        """Append one BGR uint8 ``[H, W, 3]`` image."""
        size = (image.shape[1], image.shape[0])
        if self._size is None:
            self._size = size if self.is_pattern else recordable_size(*size)
            if self._size != size:
                log.warning("recording %s at %dx%d instead of %dx%d: the video holds even "
                            "sizes of %d..%d pixels per side", self.target, *self._size, *size,
                            *VIDEO_SIDES)
        if size != self._size:
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        if self.is_pattern:
            path = self.target % self.frames_written
            with atomic_write(path) as temporary:
                if not cv2.imwrite(str(temporary), image):
                    raise OSError(f"cannot write image {path}")
        else:
            if self._writer is None:
                self._temporary = temporary_path_for(self.target)
                self._writer = cv2.VideoWriter(str(self._temporary),
                                               cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                               self._size)
                if not self._writer.isOpened():
                    self.abort()
                    raise OSError(self._cannot_open_message())
            self._writer.write(image)
        self.frames_written += 1

    def _cannot_open_message(self) -> str:
        width, height = self._size
        suffix = Path(self.target).suffix.lower()
        fix = ("record an image pattern instead (out_%05d.png), or check that this OpenCV "
               "writes video (convcrf-check-env)")
        if suffix not in VIDEO_SUFFIXES:
            fix = (f"OpenCV's FFmpeg has no writer for {suffix or 'files without a suffix'}: "
                   f"use {' or '.join(VIDEO_SUFFIXES)}, or an image pattern (out_%05d.png)")
        return (f"cannot record {self.target}: OpenCV (FFmpeg) refused an mp4v video of "
                f"{width}x{height} at {self.fps:g} fps; {fix}")

    def close(self) -> None:
        """Finish the file (writes the container index, so the recording is playable) and
        move it to ``target``."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            temporary, self._temporary = self._temporary, None
            replace_atomically(temporary, self.target)

    def abort(self) -> None:
        """Discard the recording; a previous file at ``target`` stays as it was."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._temporary is not None:
            discard(self._temporary)
            self._temporary = None
