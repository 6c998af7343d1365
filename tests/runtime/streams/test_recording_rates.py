"""Recordings at rates and sizes the video codec cannot hold (issue 23 item 1): FrameWriter
rounds the rate (89.863 fps: the MPEG-4 time base holds at most 65535 ticks per second) and
scales the size to ones it can, says so once, and the file plays."""
from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from convcrf_deploy.runtime.streams import FrameWriter
from convcrf_deploy.runtime.streams.files import (DEFAULT_FPS, RATE_RANGE, VIDEO_SIDES,
                                                  recordable_rate, recordable_size)
from fakes import RefusingVideoWriter


def frames(count, height=48, width=64):
    return [np.full((height, width, 3), 40 * i, np.uint8) for i in range(count)]


def played(path):
    """(frames decoded, fps, (width, height)) of a video file."""
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), path
    count = 0
    while capture.read()[0]:
        count += 1
    info = (count, capture.get(cv2.CAP_PROP_FPS),
            (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
             int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))))
    capture.release()
    return info


RATES = [
    (89.863, 89.86),            # the field report: a 90 Hz bag with a 1 ms hiccup
    (100.001, 100.0), (59.94, 59.94), (29.97, 29.97), (23.976, 23.976), (1 / 3, 1 / 3),
    (1000.0, 1000.0), (65536.0, 1000.0), (1e6, 1000.0),   # beyond the 16-bit time base
    (0.001, 0.01), (1e-9, 0.01),                     # a bag spanning decades
    (float("nan"), DEFAULT_FPS), (float("inf"), DEFAULT_FPS), (-5.0, DEFAULT_FPS),
    (0.0, DEFAULT_FPS), (None, DEFAULT_FPS)]


@pytest.mark.parametrize("suffix, fps, written", [
    *((".mp4", *case) for case in RATES),
    *((suffix, *case) for suffix in (".avi", ".mkv", ".mov") for case in RATES
      if case[0] in (89.863, 100.001, 1e6, 1e-9))])
def test_any_rate_gives_a_playable_video_at_the_nearest_rate_it_holds(tmp_path, caplog, suffix,
                                                                      fps, written):
    out = tmp_path / f"out{suffix}"
    with caplog.at_level(logging.WARNING):
        writer = FrameWriter(out, fps)
        for image in frames(3):
            writer.write(image)
        writer.close()
    assert writer.fps == pytest.approx(written, rel=1e-6)
    count, stored, size = played(out)
    assert count == 3 and size == (64, 48)
    assert stored == pytest.approx(written, rel=2e-3)
    notices = [r for r in caplog.records if "cannot hold a rate" in r.getMessage()]
    assert len(notices) == (0 if fps is None or written == fps else 1)


def test_recordable_rate_is_the_rate_itself_when_it_fits_and_close_otherwise():
    rng = np.random.default_rng(0)
    for fps in 10 ** rng.uniform(-1.9, 4, 200):
        rate = recordable_rate(float(fps))
        assert RATE_RANGE[0] <= rate <= RATE_RANGE[1]
        if fps <= RATE_RANGE[1]:
            assert abs(rate - fps) <= 0.5               # at most rounded to 0 decimals


@pytest.mark.parametrize("size, expected", [
    ((1, 1), (2, 2)), ((1, 40), (2, 40)), ((9000, 30), (8190, 26)),
    ((12000, 60), (8190, 40)), ((63, 47), (62, 46)), ((64, 48), (64, 48))])
def test_sizes_outside_what_mpeg4_holds_are_scaled_into_it(tmp_path, caplog, size, expected):
    assert recordable_size(*size) == expected
    width, height = size
    out = tmp_path / "out.mp4"
    with caplog.at_level(logging.WARNING):
        writer = FrameWriter(out, 10)
        for image in frames(2, height, width):
            writer.write(image)
        writer.close()
    count, _, stored = played(out)
    assert count == 2 and stored == expected
    assert all(VIDEO_SIDES[0] <= side <= VIDEO_SIDES[1] for side in stored)
    warned = [r for r in caplog.records if "holds even sizes" in r.getMessage()]
    assert len(warned) == (0 if expected == size else 1)


def test_image_patterns_keep_their_rate_and_size(tmp_path):
    writer = FrameWriter(tmp_path / "f_%03d.png", 89.863)
    writer.write(np.zeros((1, 9000, 3), np.uint8))
    writer.close()
    assert cv2.imread(str(tmp_path / "f_000.png")).shape == (1, 9000, 3)


@pytest.mark.parametrize("name", ["out.mp4", "out.avi", "out.mkv"])
def test_a_writer_that_cannot_open_says_why_and_keeps_the_previous_file(
        tmp_path, monkeypatch, name):
    monkeypatch.setattr(cv2, "VideoWriter", RefusingVideoWriter)
    out = tmp_path / name
    out.write_bytes(b"previous")
    writer = FrameWriter(out, 89.863)
    with pytest.raises(OSError) as caught:
        writer.write(frames(1)[0])
    text = str(caught.value)
    assert str(out) in text and "64x48" in text and "89.86 fps" in text
    assert "image pattern" in text and "use .mp4 or .avi" not in text   # the file is one
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
