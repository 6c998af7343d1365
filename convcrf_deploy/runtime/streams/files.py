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

from ...files import atomic_write, discard, replace_atomically, temporary_path_for
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


class FrameWriter:
    """Records rendered frames to a video file (``mp4v``) or an image pattern (``%05d``).

    The output is opened on the first frame, at that frame's size; later frames of another
    size (e.g. after switching to the side-by-side view) are resized to it. Nothing the user
    has is replaced until it is complete: a video is recorded into a temporary file beside
    ``target`` and renamed to it by :meth:`close` (a run that ends, is interrupted or loses its
    source leaves a playable file); :meth:`abort` discards it and keeps any previous file.
    Each image of a pattern is written the same way.

    Args:
        target: ``out.mp4`` / ``out.avi`` or a pattern such as ``frames/img_%05d.png``.
        fps: frame rate written into the video file.
    """

    def __init__(self, target: str | os.PathLike, fps: float = 30.0):
        self.target = str(target)
        self.fps = float(fps) if fps and fps > 0 else 30.0
        self.is_pattern = "%" in Path(self.target).name
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
            self._size = size
        elif size != self._size:
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
                    raise OSError(f"cannot open video writer for {self.target} (mp4v codec); "
                                  "use .mp4 or .avi, or an image pattern like out_%05d.png")
            self._writer.write(image)
        self.frames_written += 1

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
