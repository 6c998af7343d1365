"""Runtime benchmark: FPS and per-stage latency of the demo model, PyTorch vs ONNX Runtime,
CRF on vs off, at 320x240 and 640x480; and the warm-start (video-aware CRF) study.

All figures come from one run on this machine, so compare the ratios printed at the end
rather than absolute numbers across machines. Frames are pre-rendered demo-scene frames
(scene rendering is not timed); the model runs at the frame size (``resize="none"``).

    python benchmarks/bench_runtime.py                       # exports the demo model to ONNX
    python benchmarks/bench_runtime.py --frames 20 --sizes 320x240 --skip-warm-start
    python benchmarks/bench_runtime.py --onnx m.onnx --onnx-no-crf m_unary.onnx --json out.json

"CRF off" means ``Segmenter(crf=False)``: PyTorch skips the CRF, ONNX Runtime runs only the
unary part of the exported graph. ONNX Runtime's CRF runs natively (the same C library as
PyTorch's fused path) when the library is built; ``--crf-executor graph`` times the graph's
own CRF nodes instead.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("preprocess", "inference", "postprocess")


def demo_frames(size: tuple[int, int], count: int, seed: int = 0):
    """``count`` consecutive demo-scene frames ``(bgr, labels)`` of ``size`` (height, width)."""
    from convcrf_deploy.runtime.streams import open_source

    source = open_source("demo", demo_size=size, demo_seed=seed, demo_frames=count)
    return [(f.image, f.ground_truth) for f in source]


def _score(segmenter):
    from convcrf_deploy.runtime.stats import SegmentationScore

    return SegmentationScore(segmenter.metadata.num_classes)


def time_segmenters(segmenters: dict, frames, warmup: int = 3) -> dict:
    """Per segmenter: median ms per stage, FPS (from the mean total), CPU ms and scores over
    ``frames``. The segmenters run interleaved, frame by frame (the order reversed every
    other frame), so that a shared machine's slow phases hit all of them alike."""
    for segmenter in segmenters.values():
        for image, _ in frames[:warmup]:
            segmenter(image)
        reset = getattr(segmenter.backend, "reset", None)
        if reset is not None:
            reset()  # the warm start must begin at the first timed frame
    keys = list(segmenters)
    timings = {key: {stage: [] for stage in STAGES} for key in keys}
    cpu_ms = {key: [] for key in keys}
    scores = {key: (_score(s), _score(s)) for key, s in segmenters.items()}
    for index, (image, truth) in enumerate(frames):
        for key in (keys if index % 2 == 0 else reversed(keys)):
            cpu_start = time.process_time()
            result = segmenters[key](image)
            # CPU time of all the process's threads: less sensitive than wall time to other
            # load on the machine (but it includes the inference threads' spin-waiting).
            cpu_ms[key].append((time.process_time() - cpu_start) * 1e3)
            for stage in STAGES:
                timings[key][stage].append(result.timings[stage])
            crf_score, unary_score = scores[key]
            crf_score.update(result.labels, truth)
            if result.unary_labels is not None:
                unary_score.update(result.unary_labels, truth)
    rows = {}
    for key in keys:
        totals = [sum(t) for t in zip(*timings[key].values())]
        crf_score, unary_score = scores[key]
        rows[key] = {"fps": 1e3 / statistics.fmean(totals),
                     **{f"{stage}_ms": statistics.median(values)
                        for stage, values in timings[key].items()},
                     "cpu_ms": statistics.median(cpu_ms[key]),
                     "accuracy": crf_score.pixel_accuracy, "miou": crf_score.mean_iou,
                     "unary_accuracy": unary_score.pixel_accuracy,
                     "unary_miou": unary_score.mean_iou}
    return rows


def time_segmenter(segmenter, frames, warmup: int = 3) -> dict:
    """:func:`time_segmenters` for one segmenter."""
    return time_segmenters({"only": segmenter}, frames, warmup)["only"]


def export_full(model, folder: Path, flavor: str) -> str:
    """Export ``model`` with its CRF (dynamic H, W); returns the path. "CRF off" runs the same
    file with ``Segmenter(crf=False)``, which runs only the unary part of the graph."""
    from convcrf_deploy.export.exporter import export_onnx

    path = folder / f"model_{flavor}.onnx"
    report = export_onnx(model, str(path), flavor=flavor)
    if not report.ok:
        raise SystemExit(f"export of {path.name} failed verification: {report}")
    return str(path)


def speed_table(args, model, onnx_full: str, onnx_unary: str | None) -> list[dict]:
    from convcrf_deploy.runtime import Segmenter

    rows = []
    configurations = (("torch", True), ("torch", False), ("onnxruntime", True),
                      ("onnxruntime", False))
    for height, width in args.sizes:
        frames = demo_frames((height, width), args.frames + 3)
        segmenters = {}
        for backend, crf in configurations:
            if backend == "torch":
                segmenters[backend, crf] = Segmenter(model, "torch", resize="none", crf=crf,
                                                     threads=args.threads)
            elif crf or onnx_unary is None:
                segmenters[backend, crf] = Segmenter(onnx_full, "onnxruntime", resize="none",
                                                     crf=crf, threads=args.threads,
                                                     crf_executor=args.crf_executor)
            else:
                segmenters[backend, crf] = Segmenter(onnx_unary, "onnxruntime", resize="none",
                                                     threads=args.threads)
        timed = time_segmenters(segmenters, frames)
        for (backend, crf), segmenter in segmenters.items():
            executor = segmenter.describe()["crf_executor"] if crf else "off"
            row = {"size": f"{width}x{height}", "backend": backend, "crf": crf,
                   "crf_executor": executor, **timed[backend, crf]}
            segmenter.close()
            rows.append(row)
            print(f"  {row['size']:>8} {backend:<12} CRF {executor:<7}"
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
                         f"{o['fps'] / t['fps']:.2f}; frame time ONNX Runtime / PyTorch = "
                         f"{t['fps'] / o['fps']:.2f}x (ONNX Runtime CRF executor "
                         f"{o['crf_executor']})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo", help="checkpoint or 'demo'")
    parser.add_argument("--frames", type=int, default=30, help="timed frames per configuration")
    parser.add_argument("--sizes", default="320x240,640x480")
    parser.add_argument("--flavor", default="single-file", choices=("single-file", "portable"),
                        help="ONNX export flavour for ONNX Runtime")
    parser.add_argument("--onnx", help="use this export (with CRF) instead of exporting")
    parser.add_argument("--onnx-no-crf", help="use this export (without CRF) for 'CRF off' "
                        "(default: the --onnx file with the CRF switched off)")
    parser.add_argument("--crf-executor", default="auto", choices=("auto", "native", "graph"),
                        help="ONNX Runtime's CRF: native library or the graph's nodes "
                             "(default auto: native when built)")
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

    from convcrf_deploy import _native

    _native.prefer_passive_openmp()  # as convcrf-run does, before torch loads OpenMP
    import torch

    from convcrf_deploy.model import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model).eval()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    results: dict = {"model": args.model, "torch_threads": torch.get_num_threads(),
                     "frames": args.frames, "cpu_count": os.cpu_count(),
                     "load_average_1min": load}
    print(f"{os.cpu_count()} CPUs, load average {load} (other processes' load makes absolute "
          "figures noisy; configurations are interleaved frame by frame)", flush=True)
    if not args.skip_speed:
        with tempfile.TemporaryDirectory() as tmp:
            onnx_full, onnx_unary = args.onnx, args.onnx_no_crf
            if not onnx_full:
                start = time.perf_counter()
                onnx_full = export_full(model, Path(args.export_dir or tmp), args.flavor)
                print(f"exported {args.flavor} ONNX in {time.perf_counter() - start:.0f} s",
                      flush=True)
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
