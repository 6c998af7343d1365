"""Frame sources: files, folders, globs, the demo scene, cameras and latest-frame live capture."""
from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from convcrf_deploy.runtime.streams import (DemoSource, ImageSequenceSource, LiveSource,
                                            SourceError, VideoFileSource, open_source)


def write_video(path, frames=12, size=(64, 48)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, size)
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), 10 + i * 15, np.uint8))
    writer.release()
    return path


def write_images(folder, count=4):
    folder.mkdir(exist_ok=True)
    for i in range(count):
        cv2.imwrite(str(folder / f"img_{i:03d}.png"), np.full((20, 30, 3), i * 40, np.uint8))
    return folder


def test_video_file_is_read_in_order_to_the_end(tmp_path):
    source = open_source(str(write_video(tmp_path / "clip.mp4", frames=12)))
    assert isinstance(source, VideoFileSource) and not source.live
    frames = list(source)
    source.close()
    assert [f.index for f in frames] == list(range(12))
    assert all(f.image.shape == (48, 64, 3) and f.image.dtype == np.uint8 for f in frames)
    brightness = [int(f.image.mean()) for f in frames]
    assert brightness == sorted(brightness)  # in order (frames get brighter)
    assert source.dropped_frames == 0 and source.corrupt_frames == 0


def test_image_folder_is_sorted_and_unreadable_files_are_skipped(tmp_path):
    folder = write_images(tmp_path / "frames", 4)
    (folder / "img_001b.png").write_bytes(b"not a png")
    source = open_source(str(folder))
    assert isinstance(source, ImageSequenceSource)
    values = [int(f.image[0, 0, 0]) for f in source]
    assert values == [0, 40, 80, 120]
    assert source.corrupt_frames == 1


def test_glob_selects_matching_images(tmp_path):
    folder = write_images(tmp_path / "frames", 4)
    cv2.imwrite(str(folder / "other.jpg"), np.zeros((20, 30, 3), np.uint8))
    source = open_source(str(folder / "img_*.png"))
    assert len(list(source)) == 4
    with pytest.raises(SourceError, match="no files match"):
        open_source(str(folder / "nothing_*.png"))


def test_grayscale_and_alpha_images_become_bgr(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.full((5, 6), 7, np.uint8))
    cv2.imwrite(str(tmp_path / "b.png"), np.full((5, 6, 4), 9, np.uint8))
    shapes = [f.image.shape for f in open_source(str(tmp_path))]
    assert shapes == [(5, 6, 3), (5, 6, 3)]


def test_demo_source_gives_frames_with_ground_truth():
    from convcrf_deploy.data.scenes import SyntheticScene

    source = open_source("demo", demo_size=(60, 80), demo_frames=3, demo_seed=4)
    assert isinstance(source, DemoSource) and source.has_ground_truth
    frames = list(source)
    assert len(frames) == 3
    rgb, labels = SyntheticScene(60, 80, seed=4).render(2)
    np.testing.assert_array_equal(frames[2].image, rgb[:, :, ::-1])
    np.testing.assert_array_equal(frames[2].ground_truth, labels)
    assert source.class_names == tuple(SyntheticScene.CLASS_NAMES)


def test_missing_camera_fails_fast_listing_devices():
    start = time.monotonic()
    with pytest.raises(SourceError, match=r"camera /dev/video97 not found\. Cameras present"):
        open_source("cam97")
    with pytest.raises(SourceError, match="Cameras present"):
        open_source("v4l2:///dev/video97")
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("spec, message", [("missing.mp4", "does not exist"),
                                           ("csi://0", "unsupported source scheme")])
def test_bad_sources_are_clear_errors(tmp_path, spec, message):
    with pytest.raises(SourceError, match=message):
        open_source(str(tmp_path / spec) if "://" not in spec else spec)


def test_empty_folder_and_undecodable_video(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="contains no images"):
        open_source(str(tmp_path / "empty"))
    (tmp_path / "bad.mp4").write_bytes(b"\0" * 100)
    with pytest.raises(SourceError, match="cannot open video file"):
        open_source(str(tmp_path / "bad.mp4"))


class FakeCamera:
    """A capture producing numbered frames as fast as possible; ``fail_after`` frames then
    ``read`` fails; ``corrupt_every`` yields an undecodable frame now and then."""

    def __init__(self, fail_after=None, corrupt_every=None, interval=0.0005):
        self.produced = 0
        self.fail_after = fail_after
        self.corrupt_every = corrupt_every
        self.interval = interval
        self.released = False

    def read(self):
        time.sleep(self.interval)
        if self.fail_after is not None and self.produced >= self.fail_after:
            return False, None
        self.produced += 1
        if self.corrupt_every and self.produced % self.corrupt_every == 0:
            return True, np.zeros((0,), np.uint8)
        image = np.zeros((4, 4, 3), np.uint8)
        image[0, 0, 0] = self.produced % 256
        return True, image

    def release(self):
        self.released = True


def test_live_source_drops_stale_frames_and_hands_over_the_newest():
    camera = FakeCamera()
    source = LiveSource(lambda: camera, "fake camera")
    try:
        previous = -1
        for _ in range(10):
            time.sleep(0.02)  # a slow consumer
            produced_before = camera.produced
            frame = source.read()
            # Newest: at most one frame older than the camera's count when we asked (that one
            # may be between the camera and the hand-over slot); a queue would lag by dozens.
            assert frame.index >= produced_before - 2
            assert frame.index > previous
            previous = frame.index
    finally:
        source.close()
    assert source.live and camera.released
    assert source.dropped_frames > 0
    # Every frame older than the last one handed out was either handed out (10) or dropped.
    assert source.dropped_frames >= previous + 1 - 10


def test_live_source_reconnects_then_gives_up_cleanly():
    opened = []

    def open_capture():
        if len(opened) >= 2:
            raise SourceError("gone")
        opened.append(FakeCamera(fail_after=3))
        return opened[-1]

    source = LiveSource(open_capture, "fake stream", reconnect_attempts=3, backoff_s=0.01)
    frames = []
    deadline = time.monotonic() + 10
    while (frame := source.read()) is not None and time.monotonic() < deadline:
        frames.append(frame)
    source.close()
    assert source.reconnects == 1
    assert "3 reconnect attempts failed" in source.error
    assert 1 <= len(frames) <= 6


def test_live_source_counts_corrupt_frames_and_close_stops_the_thread():
    source = LiveSource(lambda: FakeCamera(corrupt_every=3), "fake camera")
    time.sleep(0.05)
    assert source.read() is not None
    source.close()
    assert source.corrupt_frames > 0
    assert not any(t.name == "capture fake camera" and t.is_alive() for t in threading.enumerate())


class BlockingCamera(FakeCamera):
    """A capture whose ``read`` stops returning after ``frames`` frames (a stalled camera or
    stream): it blocks until the test ends."""

    def __init__(self, frames, unblock):
        super().__init__()
        self.frames = frames
        self.unblock = unblock

    def read(self):
        if self.produced >= self.frames:
            self.unblock.wait(30)
            return False, None
        return super().read()


def test_stalled_capture_is_reopened_then_the_source_ends_with_an_error():
    # Field report: a capture whose read() stopped returning blocked convcrf-run forever.
    unblock = threading.Event()
    opened = []

    def open_capture():
        opened.append(BlockingCamera(0 if opened else 3, unblock))
        return opened[-1]

    source = LiveSource(open_capture, "stalling stream", reconnect_attempts=1, backoff_s=0.01,
                        stall_timeout_s=0.3)
    started = time.monotonic()
    frames = []
    try:
        while (frame := source.read()) is not None and len(frames) < 20:
            frames.append(frame)
        elapsed = time.monotonic() - started
    finally:
        source.close()
        unblock.set()
    assert 1 <= len(frames) <= 3                 # the first capture's frames, then the end
    assert source.reconnects == 1 and len(opened) == 2    # reopened once, then gave up
    assert "stalled" in source.error and "1 reconnect attempts failed" in source.error
    assert elapsed < 5


def test_opening_that_never_returns_fails_fast():
    unblock = threading.Event()

    def open_capture():
        unblock.wait(30)
        return FakeCamera()

    started = time.monotonic()
    try:
        with pytest.raises(SourceError, match="did not finish within 0.2 s"):
            LiveSource(open_capture, "silent camera", stall_timeout_s=0.2)
    finally:
        unblock.set()
    assert time.monotonic() - started < 3
