"""ROS bag benchmark: replay speed of bags vs an mp4 of the same frames, and the cost of
writing the results bag (``--save-bag``), measured in one run (compare the ratios).

    python benchmarks/bench_bags.py                          # 200 frames, 320x240, toy model
    python benchmarks/bench_bags.py --frames 100 --size 640x480 --model demo.onnx --json out.json

Sources (all hold the same demo-scene frames): an mp4 (mp4v, what ``--save`` writes), rosbag2
MCAP with ``sensor_msgs/Image`` rgb8 and with JPEG ``CompressedImage``, rosbag2 SQLite3 rgb8,
and a ROS 1 bag rgb8. For each: "read" = frames/s of the source alone (decode + conversion to
BGR), "run" = frames/s of ``run_video`` (read + segment, headless) on the mp4 and the MCAP
rgb8 bag. "save-bag" = frames/s of a ``BagSink`` alone (overlay drawn and JPEG-encoded or
raw, serialised, written, bag finished), fed the run's frames and results; its cost per frame
is then compared with the run's time per frame. The model defaults
to the toy ONNX model of the tests (about a millisecond a frame), so that the I/O being
measured is not hidden behind inference; pass ``--model`` for a real one. Each figure is the
best of ``--repeats`` runs, taken in interleaved order (the machine may be shared).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return height, width


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--size", type=_size, default=(240, 320), metavar="WxH")
    parser.add_argument("--model", help="model for the 'run' figures (default: toy ONNX)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)

    from convcrf_deploy.runtime import Segmenter, open_source, run_video
    from convcrf_deploy.runtime.streams.ros import BagSink
    from convcrf_deploy.runtime.streams.ros.testing import scene_frames, write_bag
    from convcrf_deploy.runtime.testing import write_toy_onnx

    work = Path(tempfile.mkdtemp(prefix="bench_bags_"))
    try:
        height, width = args.size
        frames = scene_frames(args.frames, height, width)
        mp4 = work / "frames.mp4"
        writer = cv2.VideoWriter(str(mp4), cv2.VideoWriter_fourcc(*"mp4v"), 30, (width, height))
        for frame in frames:
            writer.write(frame)
        writer.release()
        sources = {"mp4": str(mp4)}
        for name, kind, encoding, path in (
                ("mcap rgb8", "mcap", "rgb8", work / "mcap_rgb8"),
                ("mcap jpeg", "mcap", "jpeg", work / "mcap_jpeg"),
                ("sqlite3 rgb8", "sqlite3", "rgb8", work / "sqlite_rgb8"),
                ("ros1 rgb8", "ros1", "rgb8", work / "ros1.bag")):
            write_bag(path, frames, kind, encoding, spacing_ns=33_000_000)
            sources[name] = f"bag:{path}"
        model = args.model or str(write_toy_onnx(work / "toy.onnx", input_size=(height, width)))
        options = {"threads": args.threads} if model.endswith(".onnx") else {}
        segmenter = Segmenter(model, **options)
        segmenter(frames[0])  # warm-up

        def read_fps(spec: str) -> float:
            with open_source(spec) as source:
                start = time.perf_counter()
                count = sum(1 for _ in source)
                elapsed = time.perf_counter() - start
            assert count == args.frames, (spec, count)
            return count / elapsed

        def run_fps(spec: str) -> float:
            report = run_video(open_source(spec), segmenter)
            assert report.frames == args.frames
            return report.fps

        with open_source(sources["mcap rgb8"]) as source:
            pairs = [(frame, segmenter(frame.image, timestamp=frame.stamp)) for frame in source]

        def sink_fps(overlay_format: str) -> float:
            """Frames/s of BagSink alone (write every frame, then finish the bag)."""
            out = work / f"out_{time.monotonic_ns()}"
            start = time.perf_counter()
            sink = BagSink(out, segmenter.metadata, overlay_format=overlay_format,
                           topic_prefix="/camera/image_raw/convcrf")
            for frame, result in pairs:
                sink.write(frame, result)
            sink.close()
            elapsed = time.perf_counter() - start
            shutil.rmtree(out)
            return len(pairs) / elapsed

        tasks = {**{f"read {name}": (read_fps, spec) for name, spec in sources.items()},
                 "run mp4": (run_fps, sources["mp4"]),
                 "run mcap rgb8": (run_fps, sources["mcap rgb8"]),
                 "save-bag jpeg": (sink_fps, "jpeg"), "save-bag bgr8": (sink_fps, "bgr8")}
        best: dict[str, float] = {}
        for _ in range(args.repeats):
            for name, (measure, arg) in tasks.items():
                best[name] = max(best.get(name, 0.0), measure(arg))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"{args.frames} frames {width}x{height}, model {args.model or 'toy ONNX'}, "
          f"best of {args.repeats}")
    print(f"{'':<22}{'FPS':>10}{'ms/frame':>10}{'vs mp4':>9}")
    for name, fps in best.items():
        base = {"read": best["read mp4"], "run": best["run mp4"]}.get(name.split()[0])
        ratio = f"{fps / base:>8.2f}x" if base else ""
        print(f"{name:<22}{fps:>10.1f}{1e3 / fps:>10.2f}{ratio:>9}")
    run_ms = 1e3 / best["run mcap rgb8"]
    overhead = {fmt: 1e3 / best[f"save-bag {fmt}"] for fmt in ("jpeg", "bgr8")}
    for fmt, ms in overhead.items():
        print(f"--save-bag ({fmt} overlay) costs {ms:.2f} ms/frame = {ms / run_ms:.1%} of a "
              f"bag run's {run_ms:.2f} ms/frame")
    if args.json:
        from convcrf_deploy.files import write_text_atomic
        write_text_atomic(args.json, json.dumps({"frames": args.frames, "size": [height, width],
                                               "fps": best, "save_bag_overhead_ms": overhead},
                                              indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
