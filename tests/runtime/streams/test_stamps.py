"""Time stamps a sink cannot store as they are (issue 23 item 5): negative (simulated time),
huge, nanoseconds past a second, missing. Every sink (bag, Foxglove, its stats) writes the
nearest time it can hold and says so once; nothing ends the run or takes another output down."""
from __future__ import annotations

import logging
import types

import numpy as np
import pytest

pytest.importorskip("rosbags")

from convcrf_deploy.cli.run import main
from convcrf_deploy.runtime import Segmenter, run_video
from convcrf_deploy.runtime.streams import DemoSource, FrameSource
from convcrf_deploy.runtime.streams.ros import BagSink, BagSource, Stamp
from convcrf_deploy.runtime.streams.ros.conversions import (FOXGLOVE_TIME_SECONDS,
                                                            ROS2_TIME_SECONDS)
from convcrf_deploy.runtime.streams.ros.testing import TOPIC, read_bag, scene_frames, write_bag

INT32_MAX = 2**31 - 1


def ros2_time(sec, nanosec):
    return types.SimpleNamespace(sec=sec, nanosec=nanosec)


# -- Stamp ------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    (ros2_time(5, 7), Stamp(5, 7)), (types.SimpleNamespace(secs=5, nsecs=7), Stamp(5, 7)),
    (ros2_time(1, 1_500_000_000), Stamp(2, 500_000_000)),        # nanosec past a second
    (ros2_time(-5, 0), Stamp(-5, 0)), (ros2_time(0, -1), Stamp(-1, 999_999_999)),
    (ros2_time(2**40, 3), Stamp(2**40, 3)), (Stamp(3, 4), Stamp(3, 4))])
def test_stamps_are_read_and_normalised(raw, expected):
    assert Stamp.of(raw) == expected and 0 <= Stamp.of(raw).nanosec < 10**9


@pytest.mark.parametrize("raw", [None, 3.5, "12:00", types.SimpleNamespace(sec=1)])
def test_things_that_are_not_times_are_refused_as_such(raw):
    with pytest.raises(ValueError, match="not a ROS time"):
        Stamp.of(raw)


def test_clamping_to_a_formats_range():
    assert Stamp(-5, 3).clamped(FOXGLOVE_TIME_SECONDS) == Stamp(0, 0)
    assert Stamp(2**40, 3).clamped(ROS2_TIME_SECONDS) == Stamp(INT32_MAX, 999_999_999)
    assert Stamp(-5, 3).clamped(ROS2_TIME_SECONDS) == Stamp(-5, 3)


# -- sinks ------------------------------------------------------------------------------------

#: (stamp given to the frame, stamp a ROS 2 bag stores, stamp Foxglove shows); None: wall clock
ODD_STAMPS = [
    (ros2_time(-5, 250), Stamp(-5, 250), Stamp(0, 0)),                  # simulated time
    (ros2_time(2**40, 1), Stamp(INT32_MAX, 999_999_999), Stamp(2**32 - 1, 999_999_999)),
    (ros2_time(7, 1_500_000_000), Stamp(8, 500_000_000), Stamp(8, 500_000_000)),
    (None, None, None),                                                 # no header stamp
    (3.5, None, None),                                                  # not a time at all
    (ros2_time(2**31 + 10, 0), Stamp(INT32_MAX, 999_999_999), Stamp(2**31 + 10, 0)),
]


class StampedDemo(FrameSource):
    """Demo frames with the given stamps (and, with ``log_times``, bag times, as a bag's)."""

    def __init__(self, stamps, log_times=None):
        super().__init__("stamped demo")
        self.demo, self.stamps = DemoSource(48, 64, num_frames=len(stamps)), list(stamps)
        self.log_times = log_times

    def read(self):
        frame = self.demo.read()
        if frame is not None:
            frame.stamp = self.stamps[frame.index]
            if self.log_times is not None:
                frame.log_time_ns = self.log_times[frame.index]
        return frame


def test_the_bag_sink_stores_the_nearest_time_it_can_and_says_so_once(tmp_path, toy_onnx,
                                                                       caplog):
    stamps = [given for given, _, _ in ODD_STAMPS] * 2          # each kind twice
    segmenter = Segmenter(toy_onnx)
    sink = BagSink(tmp_path / "out", segmenter.metadata)
    with caplog.at_level(logging.WARNING):
        report = run_video(StampedDemo(stamps, [10**9 + i for i in range(len(stamps))]),
                           segmenter, sinks=[sink])
    assert report.frames == len(stamps) and not report.output_errors
    written = read_bag(tmp_path / "out")["/convcrf/labels"]
    assert [log_time for _, log_time, _ in written] == [10**9 + i for i in range(len(stamps))]
    for (_, _, msg), (_, stored, _) in zip(written, ODD_STAMPS * 2):
        if stored is not None:
            assert Stamp.of(msg.header.stamp) == stored
    messages = [r.getMessage() for r in caplog.records]
    assert sum("outside what it can store" in m for m in messages) == 1
    assert sum("using the wall clock" in m for m in messages) == 1


def test_a_bag_time_before_1970_is_recorded_at_the_earliest_it_can_hold(tmp_path, toy_onnx,
                                                                        caplog):
    segmenter = Segmenter(toy_onnx)
    sink = BagSink(tmp_path / "out", segmenter.metadata)
    with caplog.at_level(logging.WARNING):   # no bag time: the (negative) stamp would be used
        run_video(StampedDemo([ros2_time(-5, 0)] * 2), segmenter, sinks=[sink])
    written = read_bag(tmp_path / "out")["/convcrf/labels"]
    assert [(log_time, Stamp.of(msg.header.stamp)) for _, log_time, msg in written] == \
        [(0, Stamp(-5, 0))] * 2
    assert sum("cannot be stored" in r.getMessage() for r in caplog.records) == 1


class Channel:
    """Stands in for a Foxglove channel with a subscriber: keeps what is logged."""

    def __init__(self):
        self.logged = []

    def has_sinks(self):
        return True

    def log(self, message):
        self.logged.append(message)


def test_foxglove_shows_the_nearest_time_it_can_and_keeps_the_true_one_in_stats(toy_onnx,
                                                                               caplog):
    pytest.importorskip("foxglove")
    from convcrf_deploy.runtime.streams.foxglove import FoxgloveSink
    segmenter = Segmenter(toy_onnx)
    sink = FoxgloveSink(segmenter.metadata, "127.0.0.1", 0)
    sink.overlay, sink.labels, sink.stats = Channel(), Channel(), Channel()
    sink.confidence = Channel()
    sent_times = []
    real = sink._messages

    def timestamp(sec, nsec):   # the SDK's own type, which refuses what it cannot hold
        sent_times.append((sec, nsec))
        return real.Timestamp(sec, nsec)
    sink._messages = types.SimpleNamespace(Timestamp=timestamp, RawImage=real.RawImage,
                                           CompressedImage=real.CompressedImage)
    stamps = [given for given, _, _ in ODD_STAMPS]
    try:   # what the sink's publishing thread does with each frame
        with caplog.at_level(logging.WARNING):
            for frame in StampedDemo(stamps):
                sink._publish(frame, segmenter(frame.image), {"frame": frame.index})
    finally:
        sink.close()
    assert sink.error is None
    assert len(sink.overlay.logged) == len(sent_times) == len(stamps)
    for sent, stats, (given, _, shown) in zip(sent_times, sink.stats.logged, ODD_STAMPS):
        assert all(0 <= v < 2**32 for v in sent)
        if shown is not None:
            assert sent == tuple(shown)
            assert stats["stamp_ns"] == Stamp.of(given).nanoseconds     # the true stamp
    assert len(sink.labels.logged) == len(stamps)
    assert sum("outside what it can store" in r.getMessage() for r in caplog.records) == 1


def test_a_message_without_a_header_stamp_gets_its_bag_time(tmp_path, caplog):
    write_bag(tmp_path / "b", scene_frames(1), "mcap", "bgr8")
    with BagSource(tmp_path / "b") as source, caplog.at_level(logging.WARNING):
        for _ in range(2):
            assert source._stamp(types.SimpleNamespace(), 0, 1234) == Stamp(0, 1234)
        assert source._stamp(types.SimpleNamespace(header=types.SimpleNamespace(stamp=None)),
                             1, 5 * 10**9) == Stamp(5, 0)
    assert sum("has no header stamp" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("stamps", [
    [(-100 + i, 0) for i in range(4)],                                  # the field report
    [(i, 1_000_000_000 + i) for i in range(4)],                         # nanosec not normalised
])
def test_simulated_time_with_foxglove_keeps_the_bag(tmp_path, toy_onnx, capsys, stamps):
    """Field report: negative header.stamp.sec with --foxglove ended in OverflowError and the
    --save-bag output was lost."""
    pytest.importorskip("foxglove")
    write_bag(tmp_path / "in", scene_frames(4), "mcap", "bgr8", stamps=stamps)
    out = tmp_path / "out"
    code = main(["--model", toy_onnx, "--headless", "--video", f"bag:{tmp_path / 'in'}",
                 "--foxglove", "127.0.0.1:0", "--save-bag", str(out)])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err, err
    written = read_bag(out)[TOPIC + "/convcrf/labels"]
    expected = [Stamp.of(ros2_time(*s)) for s in stamps]
    assert [Stamp.of(m.header.stamp) for _, _, m in written] == expected
    assert np.all([0 <= Stamp.of(m.header.stamp).nanosec < 10**9 for _, _, m in written])
