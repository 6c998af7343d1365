"""convcrf-run: headless runs, recording, statistics, failure behaviour (called as main([...]))."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from convcrf_deploy.cli.run import main
from convcrf_deploy.runtime import Segmenter
from convcrf_deploy.runtime.streams import Frame, FrameSource, open_source
from convcrf_deploy.runtime.testing import write_toy_onnx
from convcrf_deploy.runtime.video import run_video


@pytest.fixture
def toy_onnx(tmp_path):
    return str(write_toy_onnx(tmp_path / "toy.onnx", input_size=(60, 80), resize="stretch"))


def count_video_frames(path):
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened()
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


def test_headless_demo_run_records_exactly_n_frames_and_writes_stats(tmp_path, toy_onnx, capsys):
    out, stats = tmp_path / "out.mp4", tmp_path / "s.json"
    code = main(["--video", "demo", "--model", toy_onnx, "--backend", "onnxruntime",
                 "--headless", "--max-frames", "12", "--size", "96x72", "--save", str(out),
                 "--stats-json", str(stats)])
    assert code == 0
    assert count_video_frames(out) == 12
    data = json.loads(stats.read_text())
    assert data["frames"] == 12 and data["frames_written"] == 12
    assert data["backend"] == "onnxruntime" and data["crf"] is True
    assert data["dropped_frames"] == 0 and data["fps"] > 0
    for stage in ("read", "preprocess", "inference", "postprocess", "render"):
        s = data["stages_ms"][stage]
        assert s["count"] == 12 and 0 <= s["p50"] <= s["p95"] <= s["max"]
    assert data["frame_age_ms"]["count"] == 12
    for name in ("unary", "crf"):
        assert 0 < data["accuracy"][name]["pixel_accuracy"] <= 1
        assert 0 < data["accuracy"][name]["miou"] <= 1
    printed = capsys.readouterr().out
    assert "12 frames" in printed and "inference" in printed and "crf vs truth" in printed


def test_no_display_switches_to_headless_with_a_notice(tmp_path, toy_onnx, capsys):
    assert main(["--video", "demo", "--model", toy_onnx, "--max-frames", "2",
                 "--size", "64x48"]) == 0
    assert "no display" in capsys.readouterr().err


def test_image_pattern_recording_and_no_crf(tmp_path, toy_onnx):
    stats = tmp_path / "s.json"
    assert main(["--video", "demo", "--model", toy_onnx, "--headless", "--max-frames", "3",
                 "--size", "64x48", "--save", str(tmp_path / "f_%03d.png"), "--no-crf",
                 "--view", "side-by-side", "--stats-json", str(stats)]) == 0
    written = sorted(p.name for p in tmp_path.glob("f_*.png"))
    assert written == ["f_000.png", "f_001.png", "f_002.png"]
    assert cv2.imread(str(tmp_path / "f_000.png")).shape == (48, 128, 3)  # side by side
    data = json.loads(stats.read_text())
    assert data["crf"] is False and "crf" not in data["accuracy"]


def test_video_file_and_folder_sources_run_to_their_end(tmp_path, toy_onnx):
    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 25, (64, 48))
    for i in range(7):
        writer.write(np.full((48, 64, 3), i * 30, np.uint8))
    writer.release()
    stats = tmp_path / "s.json"
    assert main(["--video", str(clip), "--model", toy_onnx, "--headless", "--max-frames", "100",
                 "--stats-json", str(stats)]) == 0
    data = json.loads(stats.read_text())
    assert data["frames"] == 7 and "accuracy" not in data


@pytest.mark.parametrize("args, message", [
    (["--video", "cam97"], "Cameras present"),
    (["--video", "/no/such/clip.mp4"], "does not exist"),
    (["--model", "/no/such/model.onnx"], "does not exist"),
    # the toy file carries no CRF parameters: its CRF runs in the graph, with fixed iterations
    (["--warm-start", "--backend", "onnxruntime"], "warm start needs the native CRF executor, "
                                                   "which cannot run here"),
    (["--warm-start", "--backend", "onnxruntime", "--crf-executor", "graph"],
     "warm start needs the native CRF executor (the graph's CRF runs the exported number"),
    (["--warm-start", "--backend", "tensorrt"], "--warm-start is not available on the tensorrt backend"),
    (["--crf-executor", "graph", "--backend", "tensorrt"], "--crf-executor is not available on "
                                                           "the tensorrt backend"),
    (["--crf-executor", "native", "--backend", "onnxruntime"], "the native CRF cannot run"),
    (["--max-frames", "0"], "--max-frames must be >= 1"),
])
def test_failures_exit_2_with_a_message_and_no_traceback(args, message, toy_onnx, capsys):
    if "--backend" in args:
        args = args + ["--model", toy_onnx]
    assert main(args + ["--headless"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


class InterruptedSource(FrameSource):
    """Yields ``count`` demo frames, then raises KeyboardInterrupt (a user pressing Ctrl-C)."""

    def __init__(self, count):
        super().__init__("interrupted")
        self.demo = open_source("demo", demo_size=(48, 64))
        self.count = count

    def read(self):
        if self.count == 0:
            raise KeyboardInterrupt
        self.count -= 1
        frame = self.demo.read()
        return Frame(frame.image, frame.index, frame.capture_time)


def test_ctrl_c_finalises_the_recording(tmp_path, toy_onnx):
    out = tmp_path / "out.mp4"
    report = run_video(InterruptedSource(5), Segmenter(toy_onnx), save=str(out))
    assert report.interrupted and report.frames == 5
    assert count_video_frames(out) == 5


def test_window_keys_quit_pause_toggle_crf_and_cycle_views(toy_onnx):
    from convcrf_deploy.runtime.video import _handle_key
    from convcrf_deploy.runtime.visualize import Renderer

    segmenter, renderer = Segmenter(toy_onnx), Renderer([[0, 0, 0]] * 5, "overlay")
    assert _handle_key(ord("q"), segmenter, renderer, False) is None
    assert _handle_key(27, segmenter, renderer, True) is None  # Esc
    assert _handle_key(ord(" "), segmenter, renderer, False) is True
    assert _handle_key(ord(" "), segmenter, renderer, True) is False
    assert _handle_key(ord("c"), segmenter, renderer, False) is False and not segmenter.crf
    _handle_key(ord("c"), segmenter, renderer, False)
    assert segmenter.crf
    _handle_key(ord("v"), segmenter, renderer, False)
    assert renderer.view == "mask"
    assert _handle_key(255, segmenter, renderer, False) is False  # no key pressed


def test_display_loop_shows_frames_and_obeys_keys(monkeypatch, toy_onnx):
    """The window path with OpenCV's GUI calls replaced: c toggles the CRF, v the view, q quits."""
    import convcrf_deploy.runtime.video as video

    shown, keys = [], iter([ord("c"), ord("v"), ord("q")])
    monkeypatch.setattr(video.cv2, "imshow", lambda name, image: shown.append(image.shape))
    monkeypatch.setattr(video.cv2, "waitKey", lambda delay: next(keys))
    monkeypatch.setattr(video.cv2, "destroyAllWindows", lambda: None)
    segmenter = Segmenter(toy_onnx)
    report = run_video(open_source("demo", demo_size=(48, 64)), segmenter, display=True,
                       view="overlay")
    assert report.frames == 3 and len(shown) == 3
    assert not segmenter.crf  # toggled by c
    assert shown[0] == (48, 64, 3)


def test_torch_checkpoint_with_warm_start_runs_and_scores(tmp_path):
    torch = pytest.importorskip("torch")
    from convcrf_deploy import CRFConfig
    from convcrf_deploy.data.scenes import SyntheticScene
    from convcrf_deploy.metadata import ModelMetadata
    from convcrf_deploy.model import ConvCRF, FastFCN, SegmentationModel, save_model

    torch.manual_seed(0)
    classes = list(SyntheticScene.CLASS_NAMES)
    model = SegmentationModel(FastFCN(len(classes)), ConvCRF(CRFConfig(len(classes), filter_size=5)),
                              ModelMetadata(classes, input_size=(48, 64)))
    checkpoint = tmp_path / "model.pt"
    save_model(model, checkpoint)
    stats = tmp_path / "s.json"
    assert main(["--video", "demo", "--model", str(checkpoint), "--headless", "--max-frames", "3",
                 "--size", "64x48", "--warm-start", "--warm-start-iterations", "1",
                 "--stats-json", str(stats)]) == 0
    data = json.loads(stats.read_text())
    assert data["backend"] == "torch" and data["warm_start"] is True and data["frames"] == 3
    assert set(data["accuracy"]) == {"unary", "crf"}
    assert main(["--model", str(checkpoint), "--warm-start", "--warm-start-iterations", "0",
                 "--headless"]) == 2


# ---- issue 11: user data, signals, stalls and messages ----------------------------------------

def test_an_output_that_is_an_input_is_refused(tmp_path, toy_onnx, capsys):
    # Field report: --video x.mp4 --save x.mp4 turned a 90-frame input into 5 frames, exit 0.
    clip = tmp_path / "x.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for i in range(6):
        writer.write(np.full((48, 64, 3), 20 * i, np.uint8))
    writer.release()
    before = clip.read_bytes()
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "img_00000.png"), np.zeros((48, 64, 3), np.uint8))
    bag = tmp_path / "drive" / "drive.mcap"
    bag.parent.mkdir()
    bag.write_bytes(b"\x89MCAP0\r\n")
    for args in (["--video", str(clip), "--save", str(clip)],
                 ["--video", str(tmp_path / "." / "x.mp4"), "--stats-json", str(clip)],
                 ["--video", "demo", "--save", toy_onnx],
                 ["--video", str(frames), "--save", str(frames / "img_%05d.png")],
                 # new-user trial: the input's own numbered pattern (was exit 0, frames lost)
                 ["--video", str(frames / "img_%05d.png"), "--save",
                  str(frames / "img_%05d.png")],
                 # new-user trial: a bag source (a file, a folder's file): exit 0, bag lost
                 ["--video", f"bag:{bag}", "--stats-json", str(bag)],
                 ["--video", f"bag:{bag.parent}", "--stats-json", str(bag)]):
        assert main(args + ["--model", toy_onnx, "--headless", "--max-frames", "2"]) == 2
        err = capsys.readouterr().err
        assert "would overwrite the input" in err and "Traceback" not in err
    assert clip.read_bytes() == before and bag.read_bytes() == b"\x89MCAP0\r\n"


@pytest.mark.parametrize("args, message", [
    (["--threads", "0"], "expected an integer >= 1"),
    (["--size", "1x1"], "must be in 32..16384"),
    (["--reconnect", "-1"], "expected an integer >= 0"),
    (["--stall-timeout", "0"], "expected a number in"),
])
def test_bad_numbers_are_usage_errors(args, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--video", "demo", "--headless", "--max-frames", "1"] + args)   # bounded run
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["--backend", "tensorrt"], "convcrf-build demo.onnx -o demo.engine"),
    (["--backend", "onnxruntime"], "convcrf-export demo -o demo.onnx"),
    (["--model", "{pt}", "--backend", "onnxruntime"], "PyTorch checkpoint"),
])
def test_model_that_the_backend_cannot_run_says_what_to_pass(tmp_path, args, message, capsys):
    # Field report: --backend tensorrt with the default model said "model file 'demo' does
    # not exist"; a .pt with --backend onnxruntime gave a traceback.
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"PK\x03\x04 not really")
    args = [a.replace("{pt}", str(checkpoint)) for a in args]
    assert main(["--video", "demo", "--headless", "--max-frames", "1"] + args) == 2
    err = capsys.readouterr().err
    assert message in err and "does not exist" not in err and len(err.strip().splitlines()) == 1


def test_summary_names_the_setup_and_explains_its_figures(toy_onnx, capsys):
    assert main(["--video", "demo", "--model", toy_onnx, "--headless", "--max-frames", "3",
                 "--size", "80x60", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert f"model {toy_onnx}, backend onnxruntime, threads 1, crf True" in out
    assert "frame_age: from capture to result" in out
    assert "mIoU VOC" in out and "PASCAL VOC's metric" in out


class StalledCapture:
    """Stands for cv2.VideoCapture of a stream that opens, then never delivers a frame."""

    unblock = None

    def __init__(self, *args):
        pass

    def isOpened(self):
        return True

    def set(self, *args):
        return True

    def read(self):
        StalledCapture.unblock.wait(20)
        return False, None

    def release(self):
        pass


def test_stalled_stream_ends_the_run_with_an_error(monkeypatch, toy_onnx, capsys):
    import threading
    import time
    from convcrf_deploy.runtime.streams import live as sources
    StalledCapture.unblock = threading.Event()
    monkeypatch.setattr(sources.cv2, "VideoCapture", StalledCapture)
    started = time.monotonic()
    try:
        code = main(["--video", "rtsp://127.0.0.1:9/stalled", "--model", toy_onnx, "--headless",
                     "--stall-timeout", "0.3", "--reconnect", "1"])
    finally:
        StalledCapture.unblock.set()
    err = capsys.readouterr().err
    assert code == 4 and "stalled" in err and "Traceback" not in err
    assert time.monotonic() - started < 10


class FailingSource(FrameSource):
    """Two demo frames, then an unexpected error."""

    def __init__(self):
        super().__init__("failing")
        self.demo = open_source("demo", demo_size=(48, 64))
        self.left = 2

    def read(self):
        if not self.left:
            raise RuntimeError("driver crashed")
        self.left -= 1
        return self.demo.read()


def test_a_failed_run_keeps_the_previous_recording(tmp_path, toy_onnx):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"previous recording")
    with pytest.raises(RuntimeError, match="driver crashed"):
        run_video(FailingSource(), Segmenter(toy_onnx), save=str(out))
    assert out.read_bytes() == b"previous recording"
    assert [p.name for p in tmp_path.iterdir() if p.name != "toy.onnx"] == ["out.mp4"]


def test_a_run_that_fails_midway_still_writes_its_statistics(tmp_path, toy_onnx, capsys,
                                                             monkeypatch):
    """New-user trial: a model that failed on the 4th frame ended with status 1 and no
    --stats-json at all; the statistics of the frames before it, and the error, are kept."""
    import convcrf_deploy.runtime.streams as streams
    monkeypatch.setattr(streams, "open_source", lambda *args, **kwargs: FailingSource())
    stats = tmp_path / "stats.json"
    assert main(["--video", "demo", "--model", toy_onnx, "--headless",
                 "--stats-json", str(stats), "--save", str(tmp_path / "out.mp4")]) == 1
    err = capsys.readouterr().err
    assert "the run failed" in err and "driver crashed" in err
    data = json.loads(stats.read_text())
    assert data["frames"] == 2 and "driver crashed" in data["error"]
    assert not (tmp_path / "out.mp4").exists()          # the recording is discarded, as before


_RECORD_UNTIL_SIGNAL = r"""
import sys
sys.path.insert(0, sys.argv[1])
from convcrf_deploy.cli.run import main
sys.exit(main(["--video", "demo", "--model", sys.argv[2], "--headless", "--size", "64x48",
               "--save", sys.argv[3], "--fps", "10"]))
"""


@pytest.mark.parametrize("signame, status", [("SIGTERM", 143), ("SIGHUP", 129)])
def test_termination_signals_finalise_the_recording(tmp_path, toy_onnx, signame, status):
    # Field report: SIGTERM while recording left an mp4 that does not play.
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path
    out = tmp_path / "out.mp4"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    process = subprocess.Popen([sys.executable, "-c", _RECORD_UNTIL_SIGNAL,
                                str(Path(__file__).resolve().parents[2]), toy_onnx, str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 60
        # Recording has started once the temporary file beside out.mp4 has grown.
        while time.monotonic() < deadline and not any(
                p.name.startswith(".out.mp4.") and p.stat().st_size > 2000
                for p in tmp_path.iterdir()):
            time.sleep(0.1)
        process.send_signal(getattr(signal, signame))
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == status, stderr.decode()
    assert count_video_frames(out) >= 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.mp4.")]


# ---- issue 21: an interrupt during shutdown ----------------------------------------------------

class CtrlCTwice(InterruptedSource):
    """Ctrl-C after ``count`` frames, and Ctrl-C (or SIGTERM) again while the run shuts down
    (closing the source comes after the recording, before the sinks and the statistics)."""

    def __init__(self, count, second="SIGINT"):
        super().__init__(count)
        self.second = second

    def close(self):
        import os
        import signal
        import time
        os.kill(os.getpid(), getattr(signal, self.second))
        time.sleep(0.05)                        # the handler runs here, inside close()


@pytest.mark.parametrize("second", ["SIGINT", "SIGTERM"])
def test_a_second_interrupt_during_shutdown_keeps_the_recording_and_the_statistics(
        tmp_path, toy_onnx, monkeypatch, capsys, second):
    # Field report: a second Ctrl-C during a slow shutdown lost --stats-json and printed
    # "no partial output".
    from convcrf_deploy.runtime import streams
    monkeypatch.setattr(streams, "open_source", lambda *a, **k: CtrlCTwice(4, second))
    out, stats = tmp_path / "out.mp4", tmp_path / "stats.json"
    code = main(["--video", "demo", "--model", toy_onnx, "--headless", "--save", str(out),
                 "--stats-json", str(stats)])
    assert code == 130                              # the first interrupt: Ctrl-C
    data = json.loads(stats.read_text())
    assert data["interrupted"] is True and data["signal"] == "SIGINT" and data["frames"] == 4
    assert count_video_frames(out) == 4
    err = capsys.readouterr().err
    assert "finishing the recording and statistics" in err and "no partial output" not in err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
