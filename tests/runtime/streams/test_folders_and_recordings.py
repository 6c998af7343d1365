"""Folders of frames in, recordings out (issue 21, field reports of a new-user trial).

Before: ``--video DIR`` read PASCAL VOC label maps (``*_5labels.png``) as frames, ordered
``1, 10, 11, 2``, did not take OpenCV's ``frame_%04d.png`` patterns, and stretched frames of
other sizes in the recording without a word; ``--save out.gif`` kept 1 frame of 10 and left 9
hidden temporary files.
"""
from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest

from convcrf_deploy.cli.run import main
from convcrf_deploy.runtime.streams import FrameWriter, SourceError, open_source
from convcrf_deploy.runtime.streams.files import (VIDEO_SUFFIXES, check_recording_target,
                                                  pattern_suffixes)
from convcrf_deploy.runtime.testing import write_toy_onnx


def image(value, size=(32, 24)):
    return np.full((size[1], size[0], 3), value, np.uint8)


def values(source):
    return [int(frame.image[0, 0, 0]) for frame in source]


def test_folders_and_globs_skip_label_maps_and_say_so(tmp_path):
    folder = tmp_path / "voc"
    folder.mkdir()
    for i, name in enumerate(["2007_000033", "2007_000129"]):
        cv2.imwrite(str(folder / f"{name}_0img.png"), image(10 + i))
        cv2.imwrite(str(folder / f"{name}_5labels.png"), np.full((24, 32), 200, np.uint8))
    source = open_source(str(folder))
    assert values(source) == [10, 11]
    assert "2 label maps skipped" in source.description
    glob_source = open_source(str(folder / "*.png"))
    assert values(glob_source) == [10, 11] and "2 label maps skipped" in glob_source.description
    voc_labels = tmp_path / "VOC2012" / "SegmentationClass"     # VOC's own label folder
    voc_labels.mkdir(parents=True)
    cv2.imwrite(str(voc_labels / "2007_000033.png"), image(1))
    with pytest.raises(SourceError, match="only label maps"):
        open_source(str(voc_labels))
    with pytest.raises(SourceError, match="only label maps"):
        open_source(str(folder / "*_5labels.png"))


def test_the_pascal_voc_sample_folder_yields_only_its_images(voc_sample):
    source = open_source(str(voc_sample))
    assert len(source.paths) == 7 and all(p.name.endswith("_0img.png") for p in source.paths)
    assert "7 label maps skipped" in source.description


def test_folders_and_globs_are_in_natural_order(tmp_path):
    for number in (1, 2, 10, 11, 100):
        cv2.imwrite(str(tmp_path / f"{number}.png"), image(number))
    assert values(open_source(str(tmp_path))) == [1, 2, 10, 11, 100]
    assert values(open_source(str(tmp_path / "*.png"))) == [1, 2, 10, 11, 100]
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name, value in [("cam_b9.png", 4), ("cam_a10.png", 2), ("cam_a9.png", 1),
                        ("CAM_b10.png", 5), ("cam_b1.png", 3)]:
        cv2.imwrite(str(mixed / name), image(value))
    assert values(open_source(str(mixed))) == [1, 2, 3, 4, 5]


def test_opencv_sequence_patterns_are_read_by_number(tmp_path):
    for number in (0, 1, 2, 10, 11):
        cv2.imwrite(str(tmp_path / f"frame_{number:04d}.png"), image(number))
    cv2.imwrite(str(tmp_path / "frame_12.png"), image(12))        # not %04d: not part of it
    cv2.imwrite(str(tmp_path / "frame_0003.jpg"), image(99))      # another suffix
    source = open_source(str(tmp_path / "frame_%04d.png"))
    assert values(source) == [0, 1, 2, 10, 11]
    assert values(open_source(str(tmp_path / "frame_%d.png"))) == [12]
    with pytest.raises(SourceError, match="no files match the image sequence"):
        open_source(str(tmp_path / "other_%04d.png"))
    with pytest.raises(SourceError, match="one integer field"):
        open_source(str(tmp_path / "frame_%s.png"))


def test_frames_of_other_sizes_are_segmented_at_their_own_size_and_fitted_in_the_video(
        tmp_path, caplog):
    folder = tmp_path / "frames"
    folder.mkdir()
    sizes = [(64, 48), (48, 64), (96, 48), (64, 48)]
    for i, (width, height) in enumerate(sizes):
        frame = np.zeros((height, width, 3), np.uint8)
        frame[:, : width // 2] = 255                    # a white left half shows stretching
        cv2.imwrite(str(folder / f"{i}.png"), frame)
    model = write_toy_onnx(tmp_path / "toy.onnx", input_size=(24, 32), resize="stretch")
    out, stats, pattern = tmp_path / "out.mp4", tmp_path / "s.json", tmp_path / "f_%02d.png"
    with caplog.at_level(logging.WARNING):
        assert main(["--video", str(folder), "--model", str(model), "--headless",
                     "--view", "mask", "--save", str(out), "--stats-json", str(stats)]) == 0
    warnings = [r.getMessage() for r in caplog.records if "fitted inside" in r.getMessage()]
    assert len(warnings) == 1 and "48x64" in warnings[0]       # once, saying what is done
    assert json.loads(stats.read_text())["frames_written"] == 4
    capture = cv2.VideoCapture(str(out))
    frames = []
    while (grabbed := capture.read())[0]:
        frames.append(grabbed[1])
    assert len(frames) == 4 and all(f.shape == (48, 64, 3) for f in frames)
    # The portrait frame is letterboxed: black borders left and right, not stretched.
    assert frames[1][:, :10].max() < 40 and frames[1][:, -10:].max() < 40
    # Image patterns keep every frame's own size.
    assert main(["--video", str(folder), "--model", str(model), "--headless", "--view", "mask",
                 "--no-hud", "--save", str(pattern)]) == 0
    assert [cv2.imread(str(tmp_path / f"f_{i:02d}.png")).shape[1::-1] for i in range(4)] == sizes


@pytest.mark.parametrize("suffix", VIDEO_SUFFIXES)
def test_every_accepted_video_suffix_keeps_every_frame(tmp_path, suffix):
    target = tmp_path / f"out{suffix}"
    writer = FrameWriter(target, fps=10)
    for i in range(10):
        writer.write(image(i * 20))
    writer.close()
    capture = cv2.VideoCapture(str(target))
    count = 0
    while capture.read()[0]:
        count += 1
    assert count == 10
    assert [p.name for p in tmp_path.iterdir()] == [target.name]     # no temporary file


def test_every_accepted_image_pattern_suffix_is_written(tmp_path):
    for suffix in pattern_suffixes():
        writer = FrameWriter(tmp_path / f"f_%03d{suffix}")
        for i in range(3):
            writer.write(image(i * 60))
        writer.close()
        assert cv2.imread(str(tmp_path / f"f_002{suffix}")) is not None, suffix
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("name", ["out.gif", "out.pnm", "out.sr", "out.avif", "out.wmv",
                                  "out.flv", "out", "f_%03d.gif", "f_%s.png"])
def test_frame_writer_refuses_what_it_cannot_write_in_full(tmp_path, name):
    with pytest.raises(ValueError, match="supported|one image cannot hold a video|integer field"):
        check_recording_target(tmp_path / name)
    with pytest.raises(ValueError):
        FrameWriter(tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_run_leaves_no_temporary_files(tmp_path):
    from convcrf_deploy.runtime import Segmenter, run_video
    from convcrf_deploy.runtime.streams import DemoSource

    class Failing(DemoSource):
        def read(self):
            if self._t == 3:
                raise RuntimeError("the source broke")
            return super().read()

    model = write_toy_onnx(tmp_path / "toy.onnx", input_size=(24, 32), resize="stretch")
    (tmp_path / "out.mp4").write_bytes(b"previous recording")
    with pytest.raises(RuntimeError, match="broke"):
        run_video(Failing(48, 64), Segmenter(str(model)), save=str(tmp_path / "out.mp4"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4", "toy.onnx"]
    assert (tmp_path / "out.mp4").read_bytes() == b"previous recording"
