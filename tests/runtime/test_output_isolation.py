"""Outputs fail alone (issue 23 item 1): a recording or sink that raises is dropped, the run
and the other outputs complete, and the report lists the failure."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from convcrf_deploy.runtime import Segmenter, open_source, run_video
from convcrf_deploy.runtime.testing import write_toy_onnx
from fakes import RefusingVideoWriter


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    path = write_toy_onnx(tmp_path_factory.mktemp("model") / "toy.onnx", input_size=(48, 64),
                          resize="stretch")
    return Segmenter(str(path))


class RecordingSink:
    """Keeps the frame indices it got and how it was closed; fails where told to."""

    def __init__(self, name, fail_write_at=None, fail_close=False):
        self.description, self.fail_write_at, self.fail_close = name, fail_write_at, fail_close
        self.frames, self.closed = [], []

    def write(self, frame, result):
        if frame.index == self.fail_write_at:
            raise OSError(28, "No space left on device")
        self.frames.append(frame.index)

    def close(self, completed=True):
        self.closed.append(completed)
        if self.fail_close:
            raise OSError("the bag could not be finalised")


def demo(count=5):
    return open_source("demo", demo_size=(48, 64), demo_frames=count)


def frame_count(path):
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


def test_a_sink_that_fails_mid_run_is_dropped_and_the_rest_completes(tmp_path, segmenter):
    failing, healthy = RecordingSink("bag out", fail_write_at=2), RecordingSink("foxglove")
    report = run_video(demo(), segmenter, save=str(tmp_path / "out.mp4"),
                       sinks=[failing, healthy])
    assert report.frames == 5 and healthy.frames == [0, 1, 2, 3, 4]
    assert failing.frames == [0, 1] and failing.closed == [False]   # closed once, discarded
    assert healthy.closed == [True]
    assert frame_count(tmp_path / "out.mp4") == 5 and report.frames_written == 5
    assert len(report.output_errors) == 1
    assert report.output_errors[0].startswith("bag out: ") and "No space left" in \
        report.output_errors[0]
    assert report.to_dict()["output_errors"] == report.output_errors
    assert "output failed: bag out" in report.summary_table()


def test_a_sink_that_fails_to_close_is_reported_and_the_others_still_close(tmp_path, segmenter):
    first, second = RecordingSink("first", fail_close=True), RecordingSink("second")
    report = run_video(demo(3), segmenter, sinks=[first, second])
    assert first.closed == [True] and second.closed == [True] and second.frames == [0, 1, 2]
    assert report.output_errors == ["first: the bag could not be finalised"]


def test_a_recording_that_cannot_be_written_leaves_the_sinks_and_the_previous_file(
        tmp_path, segmenter, monkeypatch):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"previous recording")
    monkeypatch.setattr(cv2, "VideoWriter", RefusingVideoWriter)
    sink = RecordingSink("bag")
    report = run_video(demo(4), segmenter, save=str(out), sinks=[sink])
    assert report.frames == 4 and sink.frames == [0, 1, 2, 3] and sink.closed == [True]
    assert out.read_bytes() == b"previous recording"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]
    assert report.frames_written == 0 and len(report.output_errors) == 1
    assert report.output_errors[0].startswith(f"recording {out}: cannot record")


def test_a_sink_that_failed_on_its_own_thread_is_reported_when_it_closes(segmenter):
    sink = RecordingSink("viewer")
    sink.error = "OverflowError: number too small to fit in target type"   # set by its thread
    report = run_video(demo(2), segmenter, sinks=[sink])
    assert report.frames == 2 and sink.frames == [0, 1] and sink.closed == [True]
    assert report.output_errors == ["viewer: OverflowError: number too small to fit in target "
                                    "type"]


def test_the_run_itself_failing_still_fails(tmp_path, segmenter):
    sink = RecordingSink("bag")

    def explode(frame, result):
        if frame.index == 1:
            raise RuntimeError("the consumer crashed")
    with pytest.raises(RuntimeError, match="consumer crashed"):
        run_video(demo(), segmenter, sinks=[sink], on_frame=explode)
    assert sink.closed == [False]


def test_frames_keep_flowing_to_later_sinks_after_an_earlier_one_failed(segmenter):
    sinks = [RecordingSink("a", fail_write_at=0), RecordingSink("b", fail_write_at=3),
             RecordingSink("c")]
    report = run_video(demo(), segmenter, sinks=sinks)
    assert [s.frames for s in sinks] == [[], [0, 1, 2], [0, 1, 2, 3, 4]]
    assert [e.split(":")[0] for e in report.output_errors] == ["a", "b"]
    assert np.all([s.closed == ([False] if s.fail_write_at is not None else [True])
                   for s in sinks])
