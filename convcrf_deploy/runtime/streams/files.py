"""Recorded sources and file outputs: video files and image sequences in, video files and
image patterns out (:class:`FrameWriter`)."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from ...files import AtomicOutput, atomic_write, is_integer_pattern
from .base import MAX_CONSECUTIVE_CORRUPT, Frame, FrameSource, SourceError, as_bgr

log = logging.getLogger(__name__)


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


#: Containers a recording (``--save out.mp4``) can be written to in full (MPEG-4 Part 2,
#: OpenCV's FFmpeg writer); others are refused before the run.
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v")
#: Colour image formats an image pattern (``--save frames/f_%05d.png``) can be written as
#: (those this OpenCV can write, see :func:`pattern_suffixes`).
PATTERN_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pnm")


def pattern_suffixes() -> tuple[str, ...]:
    """The :data:`PATTERN_SUFFIXES` this OpenCV build can write."""
    return tuple(s for s in PATTERN_SUFFIXES if cv2.haveImageWriter(f"x{s}"))


def is_image_pattern(target: str | os.PathLike) -> bool:
    """Whether a recording target is an image pattern (``%`` in its file name)."""
    return "%" in Path(target).name


def recording_suffixes(target: str | os.PathLike) -> tuple[str, ...]:
    """The suffixes a recording to ``target`` may have: :func:`pattern_suffixes` for an image
    pattern, else :data:`VIDEO_SUFFIXES`."""
    return pattern_suffixes() if is_image_pattern(target) else VIDEO_SUFFIXES


def check_recording_target(target: str | os.PathLike) -> None:
    """Refuse a recording target that cannot be written in full, before anything runs.

    Raises:
        ValueError: a single image file (one image cannot hold a video: the message proposes
            a pattern), a suffix OpenCV cannot record to (listing :func:`recording_suffixes`),
            or a pattern without exactly one integer field. The message starts with the
            target.
    """
    path = Path(target)
    suffix = path.suffix.lower()
    if is_image_pattern(path):
        if not is_integer_pattern(path.name):
            raise ValueError(f"{target}: an image pattern must contain one integer field "
                             "such as %05d (and no other % field)")
        allowed = pattern_suffixes()
        if suffix not in allowed:
            raise ValueError(f"{target}: images cannot be recorded as {suffix or 'no format'};"
                             f" supported: {', '.join(allowed)}")
        return
    if suffix in VIDEO_SUFFIXES:
        return
    if suffix and (suffix in PATTERN_SUFFIXES or cv2.haveImageWriter(f"x{suffix}")):
        image_suffix = path.suffix if suffix in pattern_suffixes() else ".png"
        pattern = path.with_name(f"{path.stem}_%05d{image_suffix}")
        raise ValueError(f"{target}: one image cannot hold a video; use a pattern such as "
                         f"{pattern} or a video file ({', '.join(VIDEO_SUFFIXES)})")
    raise ValueError(f"{target}: a video cannot be recorded as "
                     f"{suffix or 'a file without a suffix'}; supported: "
                     f"{', '.join(VIDEO_SUFFIXES)}, or an image pattern such as frames_%05d.png")


class FrameWriter:
    """Records rendered frames to a video file (``mp4v``) or an image pattern (``%05d``).

    A video has one frame size, that of the first frame: a later frame of another size (a
    folder of images of several sizes, a switch to the side-by-side view) is fitted inside it
    keeping its aspect ratio (black borders), with one warning saying so. Images of a pattern
    are each written at their own size. Nothing the user has is replaced until it is complete:
    a video is recorded into a temporary file and delivered to ``target`` by :meth:`close`
    (:class:`~convcrf_deploy.files.AtomicOutput`: renamed, or streamed into a FIFO or device;
    a run that ends, is interrupted or loses its source leaves a playable file); :meth:`abort`
    discards it and keeps any previous file. Each image of a pattern is written the same way.

    Args:
        target: a video file (:data:`VIDEO_SUFFIXES`) or an image pattern such as
            ``frames/img_%05d.png`` (:func:`pattern_suffixes`).
        fps: frame rate written into the video file.

    Raises:
        ValueError: a target that cannot be written in full (:func:`check_recording_target`).
        FileNotFoundError: its folder does not exist.
    """

    def __init__(self, target: str | os.PathLike, fps: float = 30.0):
        self.target = str(target)
        self.fps = float(fps) if fps and fps > 0 else 30.0
        self.is_pattern = is_image_pattern(self.target)
        check_recording_target(self.target)
        parent = Path(self.target).parent
        if not parent.exists():
            raise FileNotFoundError(f"cannot save to {self.target}: folder {parent} does not exist")
        self._writer: cv2.VideoWriter | None = None
        self._output: AtomicOutput | None = None
        self._size: tuple[int, int] | None = None
        self._warned_size = False
        self.frames_written = 0
        #: frames fitted into the video's frame size (another size than the first frame's).
        self.frames_fitted = 0

    def write(self, image: np.ndarray) -> None:
        """Append one BGR uint8 ``[H, W, 3]`` image."""
        if self.is_pattern:
            path = self.target % self.frames_written
            with atomic_write(path) as temporary:
                if not cv2.imwrite(str(temporary), image):
                    raise OSError(f"cannot write image {path}")
            self.frames_written += 1
            return
        size = (image.shape[1], image.shape[0])
        if self._size is None:
            self._size = size
        elif size != self._size:
            if not self._warned_size:
                self._warned_size = True
                log.warning("recording %s: frame %d is %dx%d, the video is %dx%d (its first "
                            "frame's size): frames of another size are fitted inside it, "
                            "keeping their aspect ratio (black borders); record to an image "
                            "pattern to keep every frame's size", self.target,
                            self.frames_written, size[0], size[1], *self._size)
            image = letterbox(image, self._size)
            self.frames_fitted += 1
        if self._writer is None:
            self._output = AtomicOutput(self.target)
            # FFmpeg explicitly: with no preference OpenCV may fall back to its image-sequence
            # writer, which reads the digits of the temporary name as a frame number.
            self._writer = cv2.VideoWriter(str(self._output.temporary), cv2.CAP_FFMPEG,
                                           cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self._size)
            if not self._writer.isOpened():
                self.abort()
                raise OSError(f"cannot open a video writer for {self.target} (OpenCV with "
                              "FFmpeg, mp4v codec); record to an image pattern like "
                              "out_%05d.png instead")
        self._writer.write(image)
        self.frames_written += 1

    def close(self) -> None:
        """Finish the file (writes the container index, so the recording is playable) and
        deliver it to ``target``."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            output, self._output = self._output, None
            output.commit()

    def abort(self) -> None:
        """Discard the recording; a previous file at ``target`` stays as it was."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._output is not None:
            self._output.discard()
            self._output = None


def letterbox(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` fitted inside ``size`` = ``(width, height)`` keeping its aspect ratio,
    centred on black."""
    width, height = size
    scale = min(width / image.shape[1], height / image.shape[0])
    w = max(1, min(width, round(image.shape[1] * scale)))
    h = max(1, min(height, round(image.shape[0] * scale)))
    canvas = np.zeros((height, width, 3), np.uint8)
    top, left = (height - h) // 2, (width - w) // 2
    canvas[top:top + h, left:left + w] = cv2.resize(
        image, (w, h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return canvas
