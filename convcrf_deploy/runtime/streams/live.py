"""Live sources: cameras and network streams, read on a capture thread that keeps only the
newest frame (stalls time out and reconnect)."""
from __future__ import annotations

import glob
import logging
import threading
import time
from typing import Callable

import cv2

from .base import Frame, FrameSource, SourceError, as_bgr

log = logging.getLogger(__name__)

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")


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
        # A capture read returns within a frame period; one stuck longer (a driver call
        # that hangs) is left to its daemon thread, so that shutdown stays quick.
        self._thread.join(timeout=min(1.0, self.stall_timeout_s))
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
