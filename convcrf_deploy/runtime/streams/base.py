"""What every frame source and sink shares: :class:`Frame`, the :class:`FrameSource` base
class, the :class:`FrameSink` protocol, :class:`SourceError` and :func:`as_bgr`."""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Protocol

import cv2
import numpy as np

if TYPE_CHECKING:
    from ..segmenter import SegmentationResult

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

#: consecutive unreadable frames after which a video file is considered finished.
MAX_CONSECUTIVE_CORRUPT = 25


class SourceError(RuntimeError):
    """A source cannot be opened or is lost; the message says what exists and what to try."""


@dataclass
class Frame:
    """One frame from a source.

    Attributes:
        image: BGR uint8 ``[H, W, 3]``.
        index: position in the source (live sources count frames dropped before this one).
        capture_time: ``time.monotonic()`` when the frame was read from the device or file;
            ``now - capture_time`` is the frame's age.
        ground_truth: ``[H, W]`` uint8 labels when the source knows them (``demo``).
        stamp: the source's own time of the frame when it has one (bags: the message header
            stamp, a ``ros.Stamp``); ``run_video`` passes it to ``Segmenter(timestamp=)``.
    """

    image: np.ndarray
    index: int
    capture_time: float
    ground_truth: np.ndarray | None = None
    stamp: Any = None


def as_bgr(image: np.ndarray | None) -> np.ndarray | None:
    """A decoded image as BGR uint8 ``[H, W, 3]``, or ``None`` when it is unusable."""
    if image is None or not isinstance(image, np.ndarray) or image.size == 0:
        return None
    if image.dtype != np.uint8:
        if image.dtype == np.uint16:
            image = (image >> 8).astype(np.uint8)
        else:
            return None
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    return None


class FrameSource(abc.ABC):
    """A sequence of frames; ``read()`` returns the next :class:`Frame` or ``None`` at the end.

    Attributes:
        live: frames are produced in real time (and may be dropped).
        description: human-readable name of the source.
        dropped_frames: frames produced but never handed out (live sources only).
        corrupt_frames: frames that could not be decoded and were skipped.
        has_ground_truth: frames carry ``ground_truth``.
    """

    live = False
    has_ground_truth = False

    def __init__(self, description: str):
        self.description = description
        self.dropped_frames = 0
        self.corrupt_frames = 0
        self.reconnects = 0
        #: why the source ended early (e.g. a stream that could not be reconnected), or None.
        self.error: str | None = None

    @abc.abstractmethod
    def read(self) -> Frame | None: ...

    def close(self) -> None:
        pass

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.read()) is not None:
            yield frame

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FrameSink(Protocol):
    """Where results go besides the window and ``--save`` (e.g. ``ros.BagSink``,
    ``foxglove.FoxgloveSink``): ``write`` gets every processed frame and its result; ``close``
    is called once when the run ends, with ``completed=False`` when it failed (an exception
    other than Ctrl-C), so that a sink can discard a partial output; it must return within
    about a second unless it is completing an output (a slow client must not hold the run).
    A sink may also have ``summary() -> dict | None``, called after ``close``: what it wrote or
    served, with a ``"message"`` line for the terminal (``run_video`` puts it into the run's
    statistics under ``"sinks"``)."""

    def write(self, frame: Frame, result: "SegmentationResult") -> None: ...

    def close(self, completed: bool = True) -> None: ...
