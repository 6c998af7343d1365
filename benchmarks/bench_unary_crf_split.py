"""How a frame's time splits between the unary and the CRF, with the native CRF and with the
graph's own CRF, for exported models (issue 18: users' networks).

For each ``.onnx`` file (exported by ``convcrf-export``) two ONNX Runtime backends are
created, ``crf_executor="native"`` (the unary in ONNX Runtime, the CRF in libconvcrf_cpu) and
``crf_executor="graph"`` (the graph's CRF in ONNX Runtime), both with ``--threads`` threads
and without spinning. Their ``infer_unary`` and ``infer_crf`` are timed round-robin in one run
(:func:`convcrf_deploy.benchmarking.time_interleaved`) on a frame of the synthetic scene at
``--size`` (padded to the file's input constraints as the runtime does), and the median
milliseconds, the CRF's share of the frame (crf / (unary + crf)) and the graph-CRF / native-CRF
ratio are printed. Run it alone on the machine (e.g. under ``flock``).

Usage:  python benchmarks/bench_unary_crf_split.py A.onnx [B.onnx ...] [--size 640x480]
        [--threads 2] [--iterations 20] [--warmup 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import numpy as np

from convcrf_deploy.benchmarking import time_interleaved
from convcrf_deploy.cli.harness import parse_frame_size
from convcrf_deploy.data.scenes import SyntheticScene
from convcrf_deploy.runtime.backends.onnxrt import OnnxRuntimeBackend
from convcrf_deploy.runtime.padding import pad_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help="exported .onnx files")
    parser.add_argument("--size", type=parse_frame_size, default=parse_frame_size("640x480"),
                        help="WIDTHxHEIGHT of the frame (default 640x480)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    width, height = args.size
    rgb = SyntheticScene(height=height, width=width, seed=0).render(0)[0]
    frame = np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32)
    calls, inputs = {}, {}
    for path in args.models:
        for executor in ("native", "graph"):
            backend = OnnxRuntimeBackend(path, threads=args.threads, crf_executor=executor,
                                         spinning=False)
            image, _ = pad_image(frame, backend.metadata)   # what Segmenter feeds
            logits = backend.infer_unary(image)
            inputs[path.name] = image.shape[-2:]
            calls[(path.name, executor, "unary")] = (
                lambda b=backend, x=image: b.infer_unary(x))
            calls[(path.name, executor, "crf")] = (
                lambda b=backend, z=logits, x=image: b.infer_crf(z, x))
    samples = time_interleaved(calls, args.iterations, args.warmup)
    median = {key: statistics.median(values) for key, values in samples.items()}

    print(f"frame {width}x{height}, {args.threads} threads, median of {args.iterations} "
          f"interleaved calls; load average {os.getloadavg()[0]:.2f}")
    print(f"{'model':32} {'model input':>11} {'CRF':>7} {'unary ms':>9} {'CRF ms':>8} "
          f"{'CRF share':>9}")
    rows = []
    for path in args.models:
        name = path.name
        for executor in ("native", "graph"):
            unary, crf = median[(name, executor, "unary")], median[(name, executor, "crf")]
            share = crf / (unary + crf)
            rows.append({"model": name, "input": list(inputs[name]), "crf_executor": executor,
                         "unary_ms": unary, "crf_ms": crf, "crf_share": share})
            size = "x".join(map(str, inputs[name][::-1]))
            print(f"{name:32} {size:>11} {executor:>7} {unary:9.2f} {crf:8.2f} "
                  f"{100 * share:8.1f}%")
        ratio = median[(name, "graph", "crf")] / median[(name, "native", "crf")]
        print(f"{'':32} graph CRF / native CRF: {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"size": [width, height], "threads": args.threads,
                                         "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
