"""Bags with odd times (issue 23 items 1 and 4): a real-time replay never waits longer than a
bounded, reported amount (a first message logged at time 0 used to mean a 54-year sleep), and
the recording rate a bag's times give is one a video can hold."""
from __future__ import annotations

import logging
import time

import cv2
import pytest

pytest.importorskip("rosbags")

from convcrf_deploy.cli.run import main
from convcrf_deploy.runtime.streams.ros import BagSource
from convcrf_deploy.runtime.streams.ros import bag_source as bag_source_module
from convcrf_deploy.runtime.streams.ros.bag_source import MAX_REPLAY_GAP_S
from convcrf_deploy.runtime.streams.ros.testing import LOG0, TOPIC, read_bag, scene_frames, write_bag

MS = 1_000_000
HOUR = 3600 * 10**9


class Clock:
    """Stands in for time.monotonic/time.sleep in the bag source: sleeping advances it."""

    def __init__(self):
        self.now, self.sleeps = 1000.0, []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(bag_source_module.time, "monotonic", fake.monotonic)
    monkeypatch.setattr(bag_source_module.time, "sleep", fake.sleep)
    return fake


def replay(path, rate, **options):
    with BagSource(path, rate=rate, **options) as source:
        frames = [frame.index for frame in source]
    return frames, source


@pytest.mark.parametrize("log_times, jumps", [
    ([0, LOG0, LOG0 + 50 * MS, LOG0 + 100 * MS], 1),       # the field report: a 0 sentinel
    ([LOG0, LOG0 + 50 * MS, LOG0 + 10 * HOUR, LOG0 + 10 * HOUR + 50 * MS], 1),  # paused 10 h
    ([0, 1, LOG0, LOG0 + 10 * HOUR], 2),                    # two sentinels, then a long pause
])
@pytest.mark.parametrize("rate", [1.0, 4.0, 0.5])
def test_a_replay_never_waits_longer_than_the_bound(tmp_path, clock, caplog, frames, log_times,
                                                    jumps, rate):
    write_bag(tmp_path / "b", frames, "mcap", "bgr8", log_times=log_times)
    with caplog.at_level(logging.WARNING):
        got, source = replay(tmp_path / "b", rate)
    assert got == [0, 1, 2, 3] and source.dropped_frames == 0   # nothing skipped at a jump
    assert max(clock.sleeps, default=0) <= MAX_REPLAY_GAP_S
    regular = [(b - a) / 1e9 / rate for a, b in zip(log_times, log_times[1:])
               if 0 <= (b - a) / 1e9 / rate <= MAX_REPLAY_GAP_S]
    assert sum(clock.sleeps) == pytest.approx(sum(regular), abs=1e-6)  # the real pauses kept
    assert source.time_jumps == jumps
    warnings = [r.getMessage() for r in caplog.records if "replayed without that pause" in
                r.getMessage()]
    assert len(warnings) == 1 and "leaps by" in warnings[0]        # said once, with the size
    assert f"{MAX_REPLAY_GAP_S:g} s" in warnings[0]


def test_the_sentinel_bag_replays_in_real_time_without_a_fake_clock(tmp_path, frames):
    write_bag(tmp_path / "b", frames, "mcap", "bgr8",
              log_times=[0, LOG0, LOG0 + 20 * MS, LOG0 + 40 * MS])
    start = time.monotonic()
    got, source = replay(tmp_path / "b", 1.0)
    assert time.monotonic() - start < 2.0
    # The sentinel frame is delivered; a loaded machine may be too slow for the 20 ms frames.
    assert got[0] == 0 and got[-1] == 3 and len(got) + source.dropped_frames == 4


class ReorderedMessages:
    """A reader whose messages come with the given bag times in the given order (rosbags
    sorts by bag time; other readers and merged bags need not)."""

    def __init__(self, source, log_times):
        items = list(source._messages)
        self.items = [(connection, log_time, raw) for (connection, _, raw), log_time
                      in zip(items, log_times)]

    def __iter__(self):
        return iter(self.items)


@pytest.mark.parametrize("log_times, kind", [
    ([LOG0, LOG0 + 50 * MS, LOG0 - HOUR, LOG0 - HOUR + 50 * MS], "steps back"),
    ([-10**15, -10**15 + 50 * MS, LOG0, LOG0 + 50 * MS], "leaps")])
def test_bag_times_that_step_back_or_are_negative_are_bounded_too(tmp_path, clock, caplog,
                                                                 frames, log_times, kind):
    write_bag(tmp_path / "b", frames, "mcap", "bgr8")
    with caplog.at_level(logging.WARNING), BagSource(tmp_path / "b", rate=1.0) as source:
        source._messages = iter(ReorderedMessages(source, log_times))
        got = [frame.index for frame in source]
    assert got == [0, 1, 2, 3] and source.time_jumps == 1
    assert max(clock.sleeps) <= MAX_REPLAY_GAP_S
    assert sum(clock.sleeps) == pytest.approx(0.1, abs=1e-6)      # the two 50 ms steps
    assert any(kind in r.getMessage() for r in caplog.records)


def test_the_bound_is_a_parameter_and_must_not_be_negative(tmp_path, clock, frames):
    write_bag(tmp_path / "b", frames, "mcap", "bgr8", spacing_ns=2 * 10**9)
    _, source = replay(tmp_path / "b", 1.0, max_gap_s=1.0)
    assert source.time_jumps == 3 and clock.sleeps == []
    with pytest.raises(ValueError, match="max_gap_s"):
        BagSource(tmp_path / "b", rate=1.0, max_gap_s=-1)


def test_a_bag_spanning_decades_has_no_recording_rate(tmp_path, frames):
    write_bag(tmp_path / "b", frames, "mcap", "bgr8", log_times=[0, LOG0, LOG0 + 50 * MS,
                                                                LOG0 + 100 * MS])
    with BagSource(tmp_path / "b") as source:
        assert source.fps is None      # not 1e-9 fps: recordings then use the default rate


def write_90hz_bag_with_a_hiccup(path, count=60):
    """A 90 Hz camera whose 30th frame came 1 ms late: measured rate 89.863 fps."""
    period = round(1e9 / 90)
    times = [LOG0 + i * period + (MS if i >= 30 else 0) for i in range(count)]
    write_bag(path, scene_frames(count, 48, 64), "mcap", "bgr8", log_times=times,
              extra_string_topic=False)


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_the_90hz_bag_records_video_and_bag_both(tmp_path, toy_onnx, capsys, caplog, suffix):
    """Field report: a measured 89.863 fps made --save fail and took --save-bag with it."""
    write_90hz_bag_with_a_hiccup(tmp_path / "in")
    with BagSource(tmp_path / "in") as source:
        assert source.fps == pytest.approx(89.863, abs=1e-3)
    out, bag = tmp_path / f"out{suffix}", tmp_path / "results"
    with caplog.at_level(logging.WARNING):
        code = main(["--model", toy_onnx, "--headless", "--video", f"bag:{tmp_path / 'in'}",
                     "--save", str(out), "--save-bag", str(bag)])
    assert code == 0, capsys.readouterr().err
    capture = cv2.VideoCapture(str(out))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(89.86, abs=1e-3)
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 60
    capture.release()
    assert len(read_bag(bag)[TOPIC + "/convcrf/labels"]) == 60
    assert sum("89.86 fps" in r.getMessage() for r in caplog.records) == 1
