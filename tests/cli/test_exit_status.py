"""Each failure kind of issue 23 ends convcrf-run with the status the documented table gives
(README "Exit status", cli/harness.py's ExitCode), one line on stderr, never a traceback, and
the outputs that did not fail are written."""
from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from convcrf_deploy.cli.harness import ExitCode
from convcrf_deploy.cli.run import main
from convcrf_deploy.runtime.backends import InputLimits
from convcrf_deploy.runtime.backends.onnxrt import OnnxRuntimeBackend
from convcrf_deploy.runtime.testing import write_toy_onnx
from fakes import RefusingVideoWriter

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return str(write_toy_onnx(tmp_path_factory.mktemp("model") / "toy.onnx",
                              input_size=(48, 64), resize="stretch"))


def run(*args):
    return main(["--headless", *map(str, args)])


def error_lines(err):
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("convcrf-run: error: ")]


def frames_in(path):
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    return count


def bag_labels(path):
    from convcrf_deploy.runtime.streams.ros.testing import read_bag
    return len(read_bag(path)["/convcrf/labels"])


# -- status 1: an output failed; the run and the other outputs complete -------------------------

def test_a_recording_that_fails_is_status_1_and_the_bag_and_stats_are_written(
        tmp_path, toy, capsys, monkeypatch):
    pytest.importorskip("rosbags")
    monkeypatch.setattr(cv2, "VideoWriter", RefusingVideoWriter)
    out, bag, stats = tmp_path / "out.mp4", tmp_path / "bag", tmp_path / "stats.json"
    code = run("--model", toy, "--max-frames", 3, "--size", "64x48", "--save", out,
               "--save-bag", bag, "--stats-json", stats)
    errors = error_lines(capsys.readouterr().err)
    assert code == ExitCode.FAILED == 1
    assert len(errors) == 1 and f"recording {out}" in errors[0] and "dropped" in errors[0]
    assert not out.exists() and bag_labels(bag) == 3
    assert json.loads(stats.read_text())["output_errors"][0].startswith(f"recording {out}")


def test_a_bag_that_fails_mid_run_is_status_1_and_the_recording_is_written(
        tmp_path, toy, capsys, monkeypatch):
    pytest.importorskip("rosbags")
    from convcrf_deploy.runtime.streams.ros import BagSink
    write = BagSink.write

    def full_disk(self, frame, result):
        if frame.index == 1:
            raise OSError(28, "No space left on device")
        write(self, frame, result)
    monkeypatch.setattr(BagSink, "write", full_disk)
    out, bag = tmp_path / "out.mp4", tmp_path / "bag"
    code = run("--model", toy, "--max-frames", 4, "--size", "64x48", "--save", out,
               "--save-bag", bag)
    errors = error_lines(capsys.readouterr().err)
    assert code == 1 and len(errors) == 1 and "No space left on device" in errors[0]
    assert frames_in(out) == 4 and not bag.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".bag")] == []


def test_a_viewer_that_fails_is_status_1_and_the_bag_is_written(tmp_path, toy, capsys,
                                                              monkeypatch):
    pytest.importorskip("rosbags")
    pytest.importorskip("foxglove")
    from convcrf_deploy.runtime.streams.foxglove import FoxgloveSink

    def overflow(self, frame, result):
        raise OverflowError("number too small to fit in target type")
    monkeypatch.setattr(FoxgloveSink, "write", overflow)
    bag = tmp_path / "bag"
    code = run("--model", toy, "--max-frames", 3, "--size", "64x48", "--foxglove",
               "127.0.0.1:0", "--save-bag", bag)
    errors = error_lines(capsys.readouterr().err)
    assert code == 1 and len(errors) == 1 and errors[0].count("Foxglove ws://") == 1
    assert bag_labels(bag) == 3


def test_a_frame_size_the_model_cannot_take_mid_run_is_status_1(tmp_path, toy, capsys,
                                                                 monkeypatch):
    monkeypatch.setattr(OnnxRuntimeBackend, "input_limits", property(
        lambda self: InputLimits((8, 8), (32, 32), origin="a test's profile")))
    code = run("--model", toy, "--resize", "none", "--max-frames", 2, "--size", "64x48")
    errors = error_lines(capsys.readouterr().err)
    assert code == 1 and len(errors) == 1
    assert "frame 64x48" in errors[0] and "8x8 to 32x32" in errors[0]


def test_an_inference_library_error_mid_run_is_status_1_in_one_line(tmp_path, toy, capsys,
                                                                    monkeypatch):
    from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

    def fail(self, image):
        raise RuntimeException("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status "
                               "code returned while running Conv node. Name:'Conv_0' Status "
                               "Message: /onnxruntime_src/onnxruntime/core/framework/bfc_arena"
                               ".cc:376 void* onnxruntime::BFCArena::AllocateRawInternal(size_t, "
                               "bool, onnxruntime::Stream*) Failed to allocate memory")
    monkeypatch.setattr(OnnxRuntimeBackend, "_infer", fail)
    out = tmp_path / "out.mp4"
    code = run("--model", toy, "--max-frames", 2, "--size", "64x48", "--save", out)
    errors = error_lines(capsys.readouterr().err)
    assert code == 1 and len(errors) == 1 and "Failed to allocate memory" in errors[0]
    assert "onnxruntime::" not in errors[0] and not out.exists()


def test_statistics_that_cannot_be_written_are_status_1_and_the_recording_is_kept(
        tmp_path, toy, capsys, monkeypatch):
    import convcrf_deploy.cli.run as run_module

    def read_only(path, text):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(run_module, "write_text_atomic", read_only)
    out, stats = tmp_path / "out.mp4", tmp_path / "stats.json"
    code = run("--model", toy, "--max-frames", 2, "--size", "64x48", "--save", out,
               "--stats-json", stats)
    errors = error_lines(capsys.readouterr().err)
    assert code == 1 and len(errors) == 1 and f"--stats-json {stats}" in errors[0]
    assert "Permission denied" in errors[0] and frames_in(out) == 2


# -- status 2: refused before anything runs ------------------------------------------------------

def test_a_fixed_size_model_with_resize_none_is_status_2_before_the_run(tmp_path, capsys):
    """Field report: a --static export fed 640x480 frames with --resize none ended in ONNX
    Runtime's traceback, status 1 ("stream lost" in the help), and no recording."""
    static = write_toy_onnx(tmp_path / "static.onnx", input_size=(240, 320), resize="stretch",
                            fixed_size=(240, 320))
    out = tmp_path / "out.mp4"
    code = run("--model", static, "--resize", "none", "--size", "640x480", "--max-frames", 2,
               "--save", out)
    errors = error_lines(capsys.readouterr().err)
    assert code == ExitCode.USAGE == 2 and len(errors) == 1
    assert "320x240 frames only" in errors[0] and "--resize letterbox or stretch" in errors[0]
    assert not out.exists()
    # Without --resize none the same model and frames run, fitted to the model's size.
    assert run("--model", static, "--size", "640x480", "--max-frames", 2, "--save", out) == 0
    assert frames_in(out) == 2


def test_a_model_this_onnxruntime_cannot_read_is_status_2(tmp_path, toy, capsys):
    model = onnx.load(toy)
    model.ir_version = 15
    onnx.save(model, str(tmp_path / "ir15.onnx"))
    code = run("--model", tmp_path / "ir15.onnx", "--max-frames", 1, "--size", "64x48")
    errors = error_lines(capsys.readouterr().err)
    assert code == 2 and len(errors) == 1 and "max supported IR version: 14" in errors[0]


# -- status 0: odd input that is handled, with a warning ----------------------------------------

def test_a_bag_starting_at_time_zero_replayed_in_real_time_is_status_0(tmp_path, toy, capsys,
                                                                       caplog):
    pytest.importorskip("rosbags")
    from convcrf_deploy.runtime.streams.ros.testing import LOG0, scene_frames, write_bag
    write_bag(tmp_path / "in", scene_frames(3), "mcap", "bgr8",
              log_times=[0, LOG0, LOG0 + 20_000_000])
    code = run("--model", toy, "--video", f"bag:{tmp_path / 'in'}", "--rate", "1.0")
    assert code == 0 and not error_lines(capsys.readouterr().err)
    assert sum("replayed without that pause" in r.getMessage() for r in caplog.records) == 1


def test_negative_stamps_with_foxglove_and_a_bag_are_status_0(tmp_path, toy, capsys):
    pytest.importorskip("rosbags")
    pytest.importorskip("foxglove")
    from convcrf_deploy.runtime.streams.ros.testing import scene_frames, write_bag
    write_bag(tmp_path / "in", scene_frames(2), "mcap", "bgr8", stamps=[(-3, 0), (-2, 0)])
    code = run("--model", toy, "--video", f"bag:{tmp_path / 'in'}", "--foxglove",
               "127.0.0.1:0", "--save-bag", tmp_path / "out")
    assert code == 0 and not error_lines(capsys.readouterr().err)


# -- the documented table --------------------------------------------------------------------------

def test_the_readme_table_documents_these_statuses():
    rows = dict(re.findall(r"^\| `(\d+)` \| (.*) \|$", README.read_text(), re.M))
    assert set(rows) >= {"0", "1", "2", "3", "4"}
    assert "output" in rows["1"] and "--save-bag" in rows["1"] and "still complete" in rows["1"]
    assert "fixed-size model with `--resize none`" in rows["2"]
    assert "cannot read" in rows["2"]
    assert "1" in rows["4"] and "output failed" in rows["4"]
    assert np.all([int(code) in {c.value for c in ExitCode} for code in rows])
