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

import abc
import glob
import logging
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import cv2
import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")

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


class DemoSource(FrameSource):
    """The built-in synthetic moving scene (``SyntheticScene``) with ground-truth labels.

    Args:
        height, width: frame size.
        seed: scene seed (objects, background, trajectories).
        num_frames: frames to produce (``None``: endless).
    """

    has_ground_truth = True

    def __init__(self, height: int = 240, width: int = 320, seed: int = 0,
                 num_frames: int | None = None):
        from ..data.scenes import SyntheticScene

        super().__init__(f"demo scene {width}x{height} seed {seed}")
        self.scene = SyntheticScene(height=height, width=width, seed=seed)
        self.class_names = tuple(self.scene.CLASS_NAMES)
        self.num_frames = num_frames
        self._t = 0

    def read(self) -> Frame | None:
        if self.num_frames is not None and self._t >= self.num_frames:
            return None
        rgb, labels = self.scene.render(self._t)
        frame = Frame(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), self._t, time.monotonic(), labels)
        self._t += 1
        return frame


class LiveSource(FrameSource):
    """A real-time source read on a capture thread that keeps only the newest frame.

    Args:
        open_capture: returns an opened capture (anything with ``read() -> (ok, image)`` and
            ``release()``, e.g. ``cv2.VideoCapture``); raises :class:`SourceError` on failure.
            Called once here (so a missing device fails fast) and again to reconnect.
        description: name of the source for messages.
        reconnect_attempts: how often to reopen after the capture fails or stalls (0: never).
        backoff_s: wait before the first reconnect; doubled for each further attempt.
        stall_timeout_s: seconds that one ``open_capture()`` or capture ``read()`` may block
            (a stalled camera or stream) before the capture is abandoned and reopened; when
            every reconnect attempt fails too, ``read()`` returns ``None`` and :attr:`error`
            says why. Opening in the constructor raises :class:`SourceError` after this long.

    ``read()`` blocks until a frame newer than the last one handed out exists and returns it
    (or ``None`` once the source is lost); frames replaced before being read are counted in
    ``dropped_frames``. A capture stuck inside a driver call cannot be interrupted: it is left
    to its (daemon) thread, which releases it if the call ever returns.
    """

    live = True

    def __init__(self, open_capture: Callable[[], object], description: str, *,
                 reconnect_attempts: int = 5, backoff_s: float = 0.5,
                 stall_timeout_s: float = 10.0):
        super().__init__(description)
        if not stall_timeout_s > 0:
            raise ValueError(f"stall_timeout_s must be > 0, got {stall_timeout_s}")
        self._open = open_capture
        self.reconnect_attempts = reconnect_attempts
        self.backoff_s = backoff_s
        self.stall_timeout_s = stall_timeout_s
        self._condition = threading.Condition()
        self._latest: Frame | None = None
        self._produced = 0
        self._finished = False
        self._stop = threading.Event()
        self._generation = 0
        self._blocked_since: float | None = None   # when the capture thread entered a read
        self._stall_attempts = 0                   # reopenings since the last frame
        self._capture = self._open_with_timeout()
        self._thread = self._start_capture_thread()

    def _open_with_timeout(self):
        """``open_capture()`` on a helper thread, given ``stall_timeout_s`` to finish."""
        result: dict = {}
        done = threading.Event()
        abandoned = threading.Event()

        def run():
            try:
                result["capture"] = self._open()
            except BaseException as exc:  # handed to the caller below
                result["error"] = exc
            done.set()
            if abandoned.is_set() and "capture" in result:
                result["capture"].release()       # opened too late: nobody will use it

        threading.Thread(target=run, name=f"open {self.description}", daemon=True).start()
        if not done.wait(self.stall_timeout_s):
            abandoned.set()
            if done.is_set() and "capture" in result:   # finished in between
                result["capture"].release()
            raise SourceError(f"{self.description}: opening did not finish within "
                              f"{self.stall_timeout_s:g} s (the device or server does not "
                              "answer); check it, or raise --stall-timeout")
        if "error" in result:
            raise result["error"]
        return result["capture"]

    def _start_capture_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self._capture_loop,
                                  args=(self._capture, self._generation),
                                  name=f"capture {self.description}", daemon=True)
        thread.start()
        return thread

    def _capture_loop(self, capture, generation: int) -> None:
        def current() -> bool:
            return generation == self._generation and not self._stop.is_set()

        try:
            while current():
                self._blocked_since = time.monotonic()
                ok, image = capture.read()
                if not current():
                    break
                self._blocked_since = None
                if not ok:
                    capture = self._reconnect(capture)
                    if capture is None:
                        break
                    continue
                image = as_bgr(image)
                if image is None:
                    self.corrupt_frames += 1
                    continue
                now = time.monotonic()
                with self._condition:
                    if self._latest is not None:
                        self.dropped_frames += 1
                    self._latest = Frame(image, self._produced, now)
                    self._produced += 1
                    self._stall_attempts = 0
                    self._condition.notify()
        except Exception as exc:  # the consumer must learn why frames stopped, not hang
            if current():
                self.error = f"{self.description}: capture failed: {exc}"
        finally:
            if generation != self._generation:
                capture.release()             # abandoned after a stall: nobody else will
            else:
                with self._condition:
                    self._finished = True
                    self._condition.notify_all()

    def _reconnect(self, capture):
        """Reopen with exponential backoff; the new capture, or None when all attempts
        failed (then :attr:`error` says so)."""
        capture.release()
        for attempt in range(self.reconnect_attempts):
            delay = self.backoff_s * (2 ** attempt)
            log.warning("%s: no frame; reconnecting in %.1f s (attempt %d/%d)", self.description,
                        delay, attempt + 1, self.reconnect_attempts)
            if self._stop.wait(delay):
                return None
            try:
                capture = self._open_with_timeout()
            except SourceError:
                continue
            self._capture = capture
            self.reconnects += 1
            return capture
        if not self._stop.is_set():
            self.error = (f"{self.description}: lost, and {self.reconnect_attempts} reconnect "
                          "attempts failed")
        return None

    def _stalled(self) -> bool:
        since = self._blocked_since
        return since is not None and time.monotonic() - since > self.stall_timeout_s

    def _recover_from_stall(self) -> bool:
        """Abandon the stuck capture (its thread keeps it) and reopen; False when lost."""
        stalled_for = time.monotonic() - (self._blocked_since or time.monotonic())
        log.warning("%s: no frame for %.1f s (stalled); reconnecting", self.description,
                    stalled_for)
        self._generation += 1
        self._blocked_since = None
        # Attempts count until a reopened capture delivers a frame, so a source that opens
        # but never delivers ends after reconnect_attempts too.
        while self._stall_attempts < self.reconnect_attempts:
            attempt = self._stall_attempts
            self._stall_attempts += 1
            if self._stop.wait(self.backoff_s * (2 ** attempt)):
                return False
            try:
                self._capture = self._open_with_timeout()
            except SourceError:
                continue
            self.reconnects += 1
            self._thread = self._start_capture_thread()
            return True
        self.error = (f"{self.description}: stalled (no frame for {self.stall_timeout_s:g} s) "
                      f"and {self.reconnect_attempts} reconnect attempts failed; check the "
                      "camera or stream, or raise --stall-timeout / --reconnect")
        with self._condition:
            self._finished = True
        return False

    def read(self) -> Frame | None:
        while True:
            with self._condition:
                while self._latest is None and not self._finished and not self._stalled():
                    self._condition.wait(timeout=min(0.1, self.stall_timeout_s))
                if self._latest is not None or self._finished:
                    frame, self._latest = self._latest, None
                    return frame
            if not self._recover_from_stall():
                return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=min(5.0, self.stall_timeout_s))
        if not self._thread.is_alive():
            self._capture.release()
        else:                           # stuck in a driver call: its thread releases it
            self._generation += 1


def available_cameras() -> list[str]:
    """Video device nodes present on this machine (``/dev/video*`` on Linux)."""
    return sorted(glob.glob("/dev/video*"), key=lambda p: (len(p), p))


def _no_camera_message(device: str) -> str:
    cameras = available_cameras()
    found = ", ".join(cameras) if cameras else "none"
    return (f"camera {device} not found. Cameras present: {found}. Pass --video with one of "
            "them (e.g. cam0 or /dev/video0), a video file, an rtsp:// URL, an image folder, or "
            "'demo'")


def _open_camera(device: int | str) -> Callable[[], cv2.VideoCapture]:
    def open_capture() -> cv2.VideoCapture:
        capture = cv2.VideoCapture(device)
        if not capture.isOpened():
            capture.release()
            raise SourceError(_no_camera_message(str(device)))
        # Ask the driver for a one-frame buffer (ignored by some backends; the capture thread
        # guarantees freshness anyway).
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        return capture
    return open_capture


def _open_stream(url: str) -> Callable[[], cv2.VideoCapture]:
    def open_capture() -> cv2.VideoCapture:
        capture = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"cannot open stream {url}: check the URL, the network and that "
                              "the server is running")
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        return capture
    return open_capture


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
