"""Runtime benchmark: FPS and per-stage latency of the demo model, PyTorch vs ONNX Runtime,
CRF on vs off, at 320x240 and 640x480; and the warm-start (video-aware CRF) study.

All figures come from one run on this machine, so compare the ratios printed at the end
rather than absolute numbers across machines. Frames are pre-rendered demo-scene frames
(scene rendering is not timed); the model runs at the frame size (``resize="none"``).

    python benchmarks/bench_runtime.py                       # exports the demo model to ONNX
    python benchmarks/bench_runtime.py --frames 20 --sizes 320x240 --skip-warm-start
    python benchmarks/bench_runtime.py --onnx m.onnx --onnx-no-crf m_unary.onnx --json out.json

"CRF off" means: PyTorch skips the CRF (``crf=False``); ONNX Runtime runs a second export of
the same model without its CRF, since an exported graph always runs the CRF it contains.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


STAGES = ("preprocess", "inference", "postprocess")


def demo_frames(size: tuple[int, int], count: int, seed: int = 0):
    """``count`` consecutive demo-scene frames ``(bgr, labels)`` of ``size`` (height, width)."""
    from convcrf_deploy.runtime.sources import open_source

    source = open_source("demo", demo_size=size, demo_seed=seed, demo_frames=count)
    return [(f.image, f.ground_truth) for f in source]


def time_segmenter(segmenter, frames, warmup: int = 3) -> dict:
    """Median ms per stage, FPS (from the mean total), and scores over ``frames``."""
    from convcrf_deploy.runtime.stats import SegmentationScore

    for image, _ in frames[:warmup]:
        segmenter(image)
    reset = getattr(segmenter.backend, "reset", None)
    if reset is not None:
        reset()  # the warm start must begin at the first timed frame
    timings = {stage: [] for stage in STAGES}
    num_classes = segmenter.metadata.num_classes
    crf_score, unary_score = SegmentationScore(num_classes), SegmentationScore(num_classes)
    cpu_ms = []
    for image, truth in frames:
        cpu_start = time.process_time()
        result = segmenter(image)
        # CPU time of all the process's threads: less sensitive than wall time to other load
        # on the machine (but it includes the inference threads' spin-waiting).
        cpu_ms.append((time.process_time() - cpu_start) * 1e3)
        for stage in STAGES:
            timings[stage].append(result.timings[stage])
        crf_score.update(result.labels, truth)
        if result.unary_labels is not None:
            unary_score.update(result.unary_labels, truth)
    totals = [sum(t) for t in zip(*timings.values())]
    return {"fps": 1e3 / statistics.fmean(totals),
            **{f"{stage}_ms": statistics.median(values) for stage, values in timings.items()},
            "cpu_ms": statistics.median(cpu_ms),
            "accuracy": crf_score.pixel_accuracy, "miou": crf_score.mean_iou,
            "unary_accuracy": unary_score.pixel_accuracy, "unary_miou": unary_score.mean_iou}


def export_pair(model, folder: Path, flavor: str) -> tuple[str, str]:
    """Export ``model`` with and without its CRF (dynamic H, W); returns the two paths."""
    from convcrf_deploy.export.exporter import export_onnx
    from convcrf_deploy.model import SegmentationModel

    full, unary = folder / f"model_{flavor}.onnx", folder / "model_no_crf.onnx"
    for path, candidate in ((full, model),
                            (unary, SegmentationModel(model.unary, None, model.metadata))):
        report = export_onnx(candidate, str(path), flavor=flavor)
        if not report.ok:
            raise SystemExit(f"export of {path.name} failed verification: {report}")
    return str(full), str(unary)


def speed_table(args, model, onnx_full: str, onnx_unary: str) -> list[dict]:
    from convcrf_deploy.runtime import Segmenter

    rows = []
    for height, width in args.sizes:
        frames = demo_frames((height, width), args.frames + 3)
        for backend, crf in (("torch", True), ("torch", False), ("onnxruntime", True),
                             ("onnxruntime", False)):
            if backend == "torch":
                segmenter = Segmenter(model, "torch", resize="none", crf=crf)
            else:
                segmenter = Segmenter(onnx_full if crf else onnx_unary, "onnxruntime",
                                      resize="none", threads=args.threads)
            row = {"size": f"{width}x{height}", "backend": backend, "crf": crf,
                   **time_segmenter(segmenter, frames)}
            segmenter.close()
            rows.append(row)
            print(f"  {row['size']:>8} {backend:<12} CRF {'on ' if crf else 'off'} "
                  f"{row['fps']:6.1f} FPS  pre {row['preprocess_ms']:.2f}  inf "
                  f"{row['inference_ms']:.1f}  post {row['postprocess_ms']:.2f} ms  (CPU "
                  f"{row['cpu_ms']:.0f} ms/frame)", flush=True)
    return rows


def warm_start_study(args, model) -> list[dict]:
    """Quality and latency of warm-started mean-field vs the full CRF on consecutive frames."""
    from convcrf_deploy.runtime import Segmenter

    iterations = model.crf.config.iterations
    height, width = args.warm_start_size
    frames = demo_frames((height, width), args.warm_start_frames + 3, seed=1)
    variants = [
        ("unary only", {"crf": False}),
        (f"full CRF ({iterations} it, ConvCRF.forward)", {}),
        (f"cold {iterations} it (warm-start code, mix 0)",
         {"warm_start": True, "warm_start_iterations": iterations, "warm_start_mix": 0.0}),
        ("cold 2 it (mix 0)", {"warm_start": True, "warm_start_iterations": 2,
                               "warm_start_mix": 0.0}),
        ("warm 2 it (mix 0.5)", {"warm_start": True, "warm_start_iterations": 2,
                                 "warm_start_mix": 0.5}),
        ("warm 1 it (mix 0.5)", {"warm_start": True, "warm_start_iterations": 1,
                                 "warm_start_mix": 0.5}),
        ("warm 2 it (mix 0.8)", {"warm_start": True, "warm_start_iterations": 2,
                                 "warm_start_mix": 0.8}),
    ]
    rows = []
    for name, options in variants:
        crf = options.pop("crf", True)
        segmenter = Segmenter(model, "torch", resize="none", crf=crf, **options)
        row = {"variant": name, **time_segmenter(segmenter, frames)}
        segmenter.close()
        rows.append(row)
        print(f"  {name:<44} acc {row['accuracy']:.2%}  mIoU VOC {row['miou']:.2%}  "
              f"inference {row['inference_ms']:.1f} ms  (CPU {row['cpu_ms']:.0f} ms/frame)", flush=True)
    return rows


def ratios(rows: list[dict]) -> list[str]:
    lines = []
    by_key = {(r["size"], r["backend"], r["crf"]): r for r in rows}
    for size in dict.fromkeys(r["size"] for r in rows):
        for backend in ("torch", "onnxruntime"):
            on, off = by_key[(size, backend, True)], by_key[(size, backend, False)]
            lines.append(f"{size} {backend}: CRF costs {on['inference_ms'] - off['inference_ms']:.1f}"
                         f" ms; FPS with/without CRF = {on['fps'] / off['fps']:.2f}")
        for crf in (True, False):
            t, o = by_key[(size, "torch", crf)], by_key[(size, "onnxruntime", crf)]
            lines.append(f"{size} CRF {'on ' if crf else 'off'}: ONNX Runtime / PyTorch FPS = "
                         f"{o['fps'] / t['fps']:.2f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo", help="checkpoint or 'demo'")
    parser.add_argument("--frames", type=int, default=30, help="timed frames per configuration")
    parser.add_argument("--sizes", default="320x240,640x480")
    parser.add_argument("--flavor", default="single-file", choices=("single-file", "portable"),
                        help="ONNX export flavour for ONNX Runtime")
    parser.add_argument("--onnx", help="use this export (with CRF) instead of exporting")
    parser.add_argument("--onnx-no-crf", help="use this export (without CRF)")
    parser.add_argument("--threads", type=int,
                        help="inference threads of both backends (default: each one's own; on "
                             "a machine busy with other work, 1 gives steadier figures)")
    parser.add_argument("--export-dir", help="keep the ONNX exports in this folder")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-warm-start", action="store_true")
    parser.add_argument("--warm-start-frames", type=int, default=60)
    parser.add_argument("--warm-start-size", default="320x240")
    parser.add_argument("--json", help="write all figures to this JSON file")
    args = parser.parse_args(argv)

    def size(text):
        w, h = (int(v) for v in text.split("x"))
        return h, w

    args.sizes = [size(s) for s in args.sizes.split(",")]
    args.warm_start_size = size(args.warm_start_size)

    import torch

    from convcrf_deploy.model import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model).eval()
    results: dict = {"model": args.model, "torch_threads": torch.get_num_threads(),
                     "frames": args.frames}
    if not args.skip_speed:
        with tempfile.TemporaryDirectory() as tmp:
            if args.onnx and args.onnx_no_crf:
                onnx_full, onnx_unary = args.onnx, args.onnx_no_crf
            else:
                start = time.perf_counter()
                onnx_full, onnx_unary = export_pair(model, Path(args.export_dir or tmp),
                                                    args.flavor)
                print(f"exported {args.flavor} ONNX with and without CRF in "
                      f"{time.perf_counter() - start:.0f} s", flush=True)
            print("speed (median ms per stage; FPS from the mean frame time):")
            rows = speed_table(args, model, onnx_full, onnx_unary)
        results["speed"] = rows
        results["ratios"] = ratios(rows)
        print("ratios:")
        for line in results["ratios"]:
            print("  " + line)
    if not args.skip_warm_start and model.crf is not None:
        print(f"warm start on {args.warm_start_frames} consecutive demo frames "
              f"({args.warm_start_size[1]}x{args.warm_start_size[0]}, PyTorch):")
        results["warm_start"] = warm_start_study(args, model)
    if args.json:
        from convcrf_deploy.files import write_text_atomic
        write_text_atomic(args.json, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    # Run from a source checkout without installing: the package is one folder up.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
