"""ROS bags in and out of convcrf-run: bags written here (rosbags) from the demo scene with
known stamps, read back through main([...]), results compared with Segmenter on the same
frames, and the output bag read back with rosbags."""
from __future__ import annotations

import json
import os
import sys
import time

import cv2
import numpy as np
import pytest

pytest.importorskip("rosbags")

from convcrf_deploy.cli.run import main
from convcrf_deploy.runtime import Segmenter, open_source, run_video
from convcrf_deploy.runtime.streams.ros import BagSink, BagSource, MissingDependencyError, Stamp
from convcrf_deploy.runtime.streams.ros.testing import (FRAME_ID, LOG0, STAMP0, TOPIC, read_bag,
                                                scene_frames, write_bag)
from convcrf_deploy.runtime.streams import SourceError

PREFIX = TOPIC + "/convcrf"
SPACING = 50_000_000


#: the toy model's input size (conftest.toy_onnx)
TOY_INPUT_SIZE = (60, 80)


def bag_path(tmp_path, kind):
    return tmp_path / ("in.bag" if kind == "ros1" else f"in_{kind}")


def run(args, toy_onnx):
    return main(["--model", toy_onnx, "--backend", "onnxruntime", "--headless", *args])


def one_line_error(capsys) -> str:
    """The single ``convcrf-run: error: ...`` line on stderr (and no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("convcrf-run: error: ")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.mark.parametrize("kind,encoding,pad", [
    ("mcap", "rgb8", 5), ("mcap", "jpeg", 0), ("sqlite3", "bgr8", 0), ("sqlite3", "mono8", 3),
    ("ros1", "mono16", 2), ("ros1", "png", 0), ("mcap", "bgra8", 0), ("mcap", "rgba8", 4)])
def test_bag_in_bag_out_labels_equal_segmenter_and_stamps_are_kept(tmp_path, toy_onnx, frames,
                                                                     kind, encoding, pad, capsys):
    source = bag_path(tmp_path, kind)
    expected_images = write_bag(source, frames, kind, encoding, pad=pad, spacing_ns=SPACING)
    out, stats = tmp_path / "out", tmp_path / "stats.json"
    assert run(["--video", f"bag:{source}", "--topic", TOPIC, "--save-bag", str(out),
                "--stats-json", str(stats)], toy_onnx) == 0
    data = json.loads(stats.read_text())
    assert data["frames"] == len(frames) and data["corrupt_frames"] == 0

    written = read_bag(out)
    assert {topic: [m[0] for m in msgs][0] for topic, msgs in written.items()} == {
        f"{PREFIX}/classes": "std_msgs/msg/String",
        f"{PREFIX}/labels": "sensor_msgs/msg/Image",
        f"{PREFIX}/confidence": "sensor_msgs/msg/Image",
        f"{PREFIX}/overlay/compressed": "sensor_msgs/msg/CompressedImage",
        f"{PREFIX}/latency": "diagnostic_msgs/msg/DiagnosticArray"}
    counts = {topic: len(msgs) for topic, msgs in written.items()}
    assert counts == {f"{PREFIX}/classes": 1, f"{PREFIX}/labels": 4, f"{PREFIX}/confidence": 4,
                      f"{PREFIX}/overlay/compressed": 4, f"{PREFIX}/latency": 4}
    # Issue 21: --save-bag says what it wrote (path, topics, message counts), also in the stats.
    printed = capsys.readouterr().out
    assert f"--save-bag: wrote {out.resolve()}" in printed
    assert all(f"{topic} {count}" in printed for topic, count in counts.items())
    assert data["sinks"][0]["topics"] == counts and data["sinks"][0]["path"] == str(out.resolve())
    classes = json.loads(written[f"{PREFIX}/classes"][0][2].data)
    segmenter = Segmenter(toy_onnx, return_confidence=True)
    assert classes["classes"] == list(segmenter.metadata.class_names)
    assert classes["palette"] == np.asarray(segmenter.metadata.palette).tolist()

    for i, image in enumerate(expected_images):
        result = segmenter(image)
        want = result.labels
        for topic in ("labels", "confidence", "overlay/compressed", "latency"):
            _, log_time, msg = written[f"{PREFIX}/{topic}"][i]
            assert log_time == LOG0 + i * SPACING
            assert Stamp.of(msg.header.stamp).nanoseconds == STAMP0 + i * SPACING
            assert msg.header.frame_id == FRAME_ID
        labels = written[f"{PREFIX}/labels"][i][2]
        assert (labels.encoding, labels.height, labels.width, labels.step) == \
            ("mono8", *want.shape, want.shape[1])
        np.testing.assert_array_equal(labels.data.reshape(want.shape), want)
        confidence = written[f"{PREFIX}/confidence"][i][2]
        assert confidence.encoding == "mono8"
        np.testing.assert_array_equal(confidence.data.reshape(want.shape), result.confidence)
        overlay = cv2.imdecode(written[f"{PREFIX}/overlay/compressed"][i][2].data,
                               cv2.IMREAD_COLOR)
        assert overlay.shape == image.shape
        status = written[f"{PREFIX}/latency"][i][2].status[0]
        values = {kv.key: kv.value for kv in status.values}
        assert status.name == "convcrf" and values["crf"] == "true"
        assert float(values["total_ms"]) >= float(values["inference_ms"]) > 0
        # The whole call, not the sum of every timing (unary and crf are parts of inference:
        # they were counted twice).
        assert float(values["total_ms"]) == pytest.approx(sum(
            float(values[f"{s}_ms"]) for s in ("preprocess", "inference", "postprocess")),
            abs=2e-3)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no staging left


def test_bgr8_overlay_and_sqlite3_output(tmp_path, toy_onnx, frames):
    source = tmp_path / "in.mcap"
    write_bag(tmp_path / "b", frames[:2], "mcap", "bgr8")
    os.rename(tmp_path / "b" / "b.mcap", source)  # a bare .mcap file (no metadata.yaml)
    out = tmp_path / "out"
    assert run(["--video", f"bag:{source}", "--save-bag", str(out), "--bag-storage", "sqlite3",
                "--bag-overlay", "bgr8", "--alpha", "1.0"], toy_onnx) == 0
    assert list(out.glob("*.db3"))
    from ruamel.yaml import YAML  # rosbags' own dependency
    info = YAML(typ="safe").load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert json.loads(info["custom_data"]["convcrf.classes"])["classes"] == \
        list(Segmenter(toy_onnx).metadata.class_names)
    written = read_bag(out)
    overlay = written[f"{PREFIX}/overlay"]
    assert overlay[0][0] == "sensor_msgs/msg/Image" and len(overlay) == 2
    msg = overlay[0][2]
    assert msg.encoding == "bgr8"
    segmenter = Segmenter(toy_onnx)
    labels = segmenter(frames[0]).labels
    from convcrf_deploy.runtime.visualize import colorize, palette_lut
    want = colorize(labels, palette_lut(segmenter.metadata.palette))  # alpha 1: colours only
    np.testing.assert_array_equal(msg.data.reshape(want.shape), want)


def test_segmenter_gets_the_header_stamp_through_the_python_api(tmp_path, toy_onnx, frames):
    write_bag(tmp_path / "b", frames, "mcap", "rgb8", spacing_ns=SPACING)
    seen = []
    with open_source(f"bag:{tmp_path / 'b'}", topic=TOPIC) as source:
        report = run_video(source, Segmenter(toy_onnx),
                           on_frame=lambda frame, result: seen.append(
                               (frame.frame_id, frame.log_time_ns, result.timestamp)))
    assert report.frames == 4
    assert seen == [(FRAME_ID, LOG0 + i * SPACING, Stamp.from_ns(STAMP0 + i * SPACING))
                    for i in range(4)]


def test_list_topics_shows_image_topics_with_counts(tmp_path, toy_onnx, frames, capsys):
    write_bag(tmp_path / "b", frames, "sqlite3", "jpeg")
    assert main(["--video", f"bag:{tmp_path / 'b'}", "--list-topics"]) == 0
    captured = capsys.readouterr()
    assert "running headless" not in captured.err     # second new-user trial: no window here
    lines = captured.out.splitlines()
    assert any(line.split() == ["4", TOPIC, "sensor_msgs/msg/CompressedImage"] for line in lines)
    assert any("/chatter" in line and "not an image" in line for line in lines)


def test_topic_may_be_omitted_when_the_bag_has_one_image_topic(tmp_path, frames):
    write_bag(tmp_path / "b.bag", frames, "ros1", "bgr8")
    with BagSource(tmp_path / "b.bag") as source:
        assert source.topic == TOPIC and source.message_count == 4
        assert source.fps == pytest.approx(1e9 / SPACING)


def test_rate_replays_in_recorded_time_and_drops_what_a_slow_reader_misses(tmp_path, frames):
    spacing = 40_000_000
    write_bag(tmp_path / "b", frames * 2, "mcap", "bgr8", spacing_ns=spacing)
    with BagSource(tmp_path / "b", rate=2.0) as source:  # 20 ms apart in wall time
        start = time.monotonic()
        got = [frame.index for frame in source]
        elapsed = time.monotonic() - start
    assert elapsed >= 7 * 0.020 * 0.9
    assert len(got) + source.dropped_frames == 8
    with BagSource(tmp_path / "b", rate=2.0) as source:
        slow = []
        while (frame := source.read()) is not None:
            slow.append(frame.index)
            time.sleep(0.05)  # slower than the 20 ms between frames
    assert source.dropped_frames >= 3 and len(slow) + source.dropped_frames == 8
    assert slow == sorted(slow) and slow[-1] == 7  # the newest frame is never skipped


def test_results_of_a_camera_like_source_get_wall_clock_stamps(tmp_path, toy_onnx):
    out = tmp_path / "out.bag2"
    before = time.time_ns()
    assert run(["--video", "demo", "--size", "64x48", "--max-frames", "2", "--save-bag",
                str(out)], toy_onnx) == 0
    written = read_bag(out)
    stamps = [Stamp.of(m[2].header.stamp).nanoseconds for m in written["/convcrf/labels"]]
    assert len(stamps) == 2 and before - 10**9 < stamps[0] <= stamps[1] <= time.time_ns()


# -- bad input ----------------------------------------------------------------------------------

def test_missing_bag(tmp_path, toy_onnx, capsys):
    assert run(["--video", f"bag:{tmp_path / 'nope'}"], toy_onnx) == 2
    err = one_line_error(capsys)
    assert "does not exist" in err and "rosbag2 folder" in err and ".mcap" in err


@pytest.mark.parametrize("name", ["junk.mcap", "junk.db3", "junk.bag", "folder", "notabag.txt"])
def test_corrupt_bags_are_refused_in_one_line(tmp_path, toy_onnx, capsys, name):
    path = tmp_path / name
    if name == "folder":
        path.mkdir()
        (path / "metadata.yaml").write_text("rosbag2_bagfile_information: [not, valid\n")
    else:
        path.write_bytes(os.urandom(3000))
    assert run(["--video", f"bag:{path}", "--save-bag", str(tmp_path / "out")], toy_onnx) == 2
    err = one_line_error(capsys)
    assert str(path.name) in err and ("damaged" in err or "not a bag" in err)
    assert not (tmp_path / "out").exists()


def test_truncated_mcap_is_refused_and_names_the_repair(tmp_path, toy_onnx, frames, capsys):
    write_bag(tmp_path / "b", frames, "mcap", "bgr8")
    data = (tmp_path / "b" / "b.mcap").read_bytes()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[:len(data) * 2 // 3])
    assert run(["--video", f"bag:{cut}"], toy_onnx) == 2
    err = one_line_error(capsys)
    assert "cut.mcap" in err and "truncated" in err and "mcap recover" in err


def test_missing_and_non_image_topics_list_the_image_topics(tmp_path, toy_onnx, frames, capsys):
    write_bag(tmp_path / "b", frames, "mcap", "bgr8")
    assert run(["--video", f"bag:{tmp_path / 'b'}", "--topic", "/nope"], toy_onnx) == 2
    err = one_line_error(capsys)
    assert "/nope is not in" in err and f"{TOPIC} (Image, 4 messages)" in err
    assert run(["--video", f"bag:{tmp_path / 'b'}", "--topic", "/chatter"], toy_onnx) == 2
    err = one_line_error(capsys)
    assert "std_msgs/msg/String, not an image" in err and "CompressedImage (jpeg, png)" in err
    # New-user trial: an image topic without messages ran 0 frames, exit 0, --save-bag dropped.
    write_bag(tmp_path / "empty", [], "mcap", "bgr8")
    assert run(["--video", f"bag:{tmp_path / 'empty'}", "--topic", TOPIC, "--save-bag",
                str(tmp_path / "out")], toy_onnx) == 2
    err = one_line_error(capsys)
    assert f"topic {TOPIC} has no messages" in err and not (tmp_path / "out").exists()


def test_unsupported_encoding_ends_the_run_naming_the_message(tmp_path, toy_onnx, frames, capsys):
    def to_float(i, fields):
        fields["encoding"] = "32FC1"
    write_bag(tmp_path / "b", frames, "mcap", "mono8", mutate=to_float)
    assert run(["--video", f"bag:{tmp_path / 'b'}", "--save-bag", str(tmp_path / "o")],
               toy_onnx) == 4  # the source failed during the run
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = next(line for line in err.splitlines() if "32FC1" in line)
    assert f"{TOPIC} message 0" in line and "supported: bgr8, rgb8" in line
    assert not (tmp_path / "o").exists()  # no frame: no bag


def test_unsupported_compressed_format(tmp_path, frames):
    def depth(i, fields):
        fields["format"] = "16UC1; compressedDepth"
    write_bag(tmp_path / "b", frames, "mcap", "png", mutate=depth)
    with BagSource(tmp_path / "b") as source:
        assert source.read() is None
    assert "compressedDepth" in source.error and "supported: jpeg, png" in source.error


@pytest.mark.parametrize("damage", ["short_data", "small_step", "bad_jpeg"])
def test_damaged_messages_are_skipped_with_a_warning(tmp_path, toy_onnx, frames, caplog, damage):
    def spoil(i, fields):
        if i != 1:
            return
        if damage == "short_data":
            fields["data"] = fields["data"][:-7]
        elif damage == "small_step":
            fields["step"] = fields["width"] * 3 - 1
            fields["data"] = fields["data"][:fields["step"] * fields["height"]]
        else:
            fields["data"] = fields["data"][:40]
    write_bag(tmp_path / "b", frames, "mcap", "jpeg" if damage == "bad_jpeg" else "rgb8",
              mutate=spoil)
    out, stats = tmp_path / "out", tmp_path / "s.json"
    assert run(["--video", f"bag:{tmp_path / 'b'}", "--save-bag", str(out), "--stats-json",
                str(stats)], toy_onnx) == 0
    line = next(r.getMessage() for r in caplog.records if "skipping" in r.getMessage())
    assert "\n" not in line and f"{TOPIC} message 1" in line
    assert {"short_data": "expected", "small_step": "step",
            "bad_jpeg": "not a readable"}[damage] in line
    data = json.loads(stats.read_text())
    assert data["frames"] == 3 and data["corrupt_frames"] == 1
    assert len(read_bag(out)[f"{PREFIX}/labels"]) == 3


def test_existing_output_bag_is_never_touched(tmp_path, toy_onnx, frames, capsys):
    write_bag(tmp_path / "b", frames, "mcap", "bgr8")
    out = tmp_path / "out"
    write_bag(out, frames[:1], "sqlite3", "bgr8")
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    assert run(["--video", f"bag:{tmp_path / 'b'}", "--save-bag", str(out)], toy_onnx) == 2
    assert "exists" in one_line_error(capsys)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()} == before


@pytest.mark.parametrize("target", ["b", "b/inside", "b/b.mcap"])
def test_output_that_is_the_input_is_refused(tmp_path, toy_onnx, frames, capsys, target):
    write_bag(tmp_path / "b", frames, "mcap", "bgr8")
    before = sorted(p.name for p in (tmp_path / "b").iterdir())
    source = tmp_path / ("b/b.mcap" if target == "b/b.mcap" else "b")
    assert run(["--video", f"bag:{source}", "--save-bag", str(tmp_path / target)],
               toy_onnx) == 2
    expected = {"b": "is the input bag", "b/inside": "lies inside the input bag",
                "b/b.mcap": "would overwrite the input --video"}[target]
    assert expected in one_line_error(capsys)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == before


def test_a_failed_run_leaves_no_output(tmp_path, toy_onnx, frames):
    write_bag(tmp_path / "b", frames, "mcap", "bgr8")

    class Boom(Exception):
        pass

    def explode(frame, result):
        if frame.index == 2:
            raise Boom
    sink = BagSink(tmp_path / "out", Segmenter(toy_onnx).metadata)
    with pytest.raises(Boom):
        run_video(BagSource(tmp_path / "b"), Segmenter(toy_onnx), on_frame=explode,
                  sinks=[sink])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_ctrl_c_keeps_the_frames_processed_so_far(tmp_path, toy_onnx, frames):
    write_bag(tmp_path / "b", frames, "mcap", "bgr8")

    def interrupt(frame, result):
        if frame.index == 2:
            raise KeyboardInterrupt
    segmenter = Segmenter(toy_onnx)
    report = run_video(BagSource(tmp_path / "b"), segmenter, on_frame=interrupt,
                       sinks=[BagSink(tmp_path / "out", segmenter.metadata)])
    assert report.interrupted
    assert len(read_bag(tmp_path / "out")["/convcrf/labels"]) == 2


def test_flags_that_need_a_bag(toy_onnx, capsys):
    assert run(["--video", "demo", "--topic", TOPIC], toy_onnx) == 2
    assert "apply to bag: sources" in capsys.readouterr().err


def test_bag_source_rejects_a_bad_rate(tmp_path, frames):
    write_bag(tmp_path / "b", frames, "mcap", "bgr8")
    with pytest.raises(SourceError, match="rate must be > 0"):
        BagSource(tmp_path / "b", rate=0)


def test_missing_rosbags_gives_the_install_command(tmp_path, toy_onnx, capsys, monkeypatch):
    write_bag(tmp_path / "b", scene_frames(1), "mcap", "bgr8")
    monkeypatch.setitem(sys.modules, "rosbags.highlevel", None)  # import fails
    assert run(["--video", f"bag:{tmp_path / 'b'}"], toy_onnx) == 2
    from convcrf_deploy.install import install_hint
    assert install_hint("ros") in one_line_error(capsys)
    monkeypatch.setitem(sys.modules, "rosbags.rosbag2", None)
    with pytest.raises(MissingDependencyError, match=r"convcrf-deploy\[ros\]"):
        BagSink(tmp_path / "out", Segmenter(toy_onnx).metadata)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


# ---- issue 21: a bag to start from -------------------------------------------------------------

def test_write_image_bag_makes_a_bag_convcrf_run_reads(tmp_path, toy_onnx):
    from convcrf_deploy.runtime.streams.ros import write_image_bag

    drive = tmp_path / "drive"
    info = write_image_bag(drive, "demo", max_frames=5, demo_size=(48, 64))
    assert info["frames"] == 5 and info["topic"] == "/camera/image_raw"
    source = BagSource(drive, topic="/camera/image_raw")
    frames = list(source)
    demo = open_source("demo", demo_size=(48, 64))
    for frame in frames:                                          # bgr8: lossless
        np.testing.assert_array_equal(frame.image, demo.read().image)
    stamps = [frame.stamp.nanoseconds for frame in frames]
    assert np.allclose(np.diff(stamps), 1e9 / 30, atol=1)        # the demo's 30 fps
    # The README's bag command works on it.
    assert run(["--video", f"bag:{drive}", "--topic", "/camera/image_raw", "--save-bag",
                str(tmp_path / "out")], toy_onnx) == 0
    # From a video file at its own frame rate, as JPEG CompressedImage.
    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for i in range(4):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    info = write_image_bag(tmp_path / "from_clip", str(clip), encoding="jpeg", max_frames=None)
    assert info["frames"] == 4 and info["topic"] == "/camera/image_raw/compressed"
    stamps = [f.stamp.nanoseconds for f in BagSource(tmp_path / "from_clip")]
    assert np.allclose(np.diff(stamps), 1e8, atol=1)
    # Never over an existing path; nothing left behind when it fails.
    with pytest.raises(FileExistsError):
        write_image_bag(drive, "demo", max_frames=2)
    with pytest.raises(ValueError, match="never ends"):
        write_image_bag(tmp_path / "endless", "demo", max_frames=None)
    # Second new-user trial: 0 silently became 30 fps, -5 ran time backwards, inf gave every
    # frame one stamp, nan and 1e-9 ended in errors of other libraries; the API's errors named
    # the command's option.
    for fps in (0, -5, float("inf"), float("nan"), 1e-9, "30"):
        with pytest.raises(ValueError, match=r"fps must be a number in 0.01..10000"):
            write_image_bag(tmp_path / "rate", "demo", max_frames=2, fps=fps)
    with pytest.raises(FileExistsError, match=r"^path .*drive: it exists"):
        write_image_bag(drive, "demo", max_frames=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "drive", "from_clip", "out"]


def test_bag_output_options_are_checked_before_the_run(tmp_path, toy_onnx, frames, capsys):
    """Second new-user trial: --save-bag out.mcap made a folder out.mcap/ holding
    out.mcap.mcap, and --bag-storage without --save-bag was ignored."""
    write_bag(tmp_path / "b", frames, "mcap", "bgr8")
    source = ["--video", f"bag:{tmp_path / 'b'}"]
    assert run(source + ["--save-bag", str(tmp_path / "out.mcap")], toy_onnx) == 2
    assert "a ROS 2 bag is a folder; give the folder's name without .mcap" in \
        one_line_error(capsys)
    for flag, value in (("--bag-storage", "sqlite3"), ("--bag-overlay", "bgr8")):
        assert run(source + [flag, value], toy_onnx) == 2
        assert f"{flag} apply to --save-bag OUT only" in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
