"""ONNX Runtime CPU latency of the exported graphs vs PyTorch, and graph sizes per flavour.

Exports one model (default: the demo model) in every flavour in this process (one trace,
see convcrf_deploy.export), then times, interleaved on the same random images:

* ``pytorch``     : ``model(image)`` under ``torch.no_grad()`` (the fused native CPU CRF path);
* ``portable``    : ONNX Runtime CPU on the portable graph (standard ops only);
* ``single-file`` : ONNX Runtime CPU on the single-file graph (ORT inlines the op functions,
  so it should match ``portable``);

at 320x240 and 640x480 (W x H), and prints the median latencies and the ratios to PyTorch,
for the full model and for the CRF alone (``part="crf"`` graphs: logits + image ->
probabilities, vs ``model.crf(logits, image)``). The ``plugin`` flavour has no CPU runtime
(TensorRT only); its node count is listed.

Usage:  python benchmarks/bench_onnx.py [--model demo|PATH] [--sizes 320x240,640x480]
        [--parts full,crf] [--repeats 10] [--threads 2] [--fp16] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from convcrf_deploy.benchmarking import time_interleaved
from convcrf_deploy.exported_model import ExportedModel
from convcrf_deploy.export import FLAVORS, export_onnx, load_exportable


def graph_size(path: Path) -> dict[str, int]:
    """Top-level nodes, and nodes once local functions are inlined (what a runtime executes)."""
    model = ExportedModel.open(path).proto      # the readers' own reader (digest checked)
    bodies = {(f.domain, f.name): len(f.node) for f in model.functions}
    inlined = sum(bodies.get((n.domain, n.op_type), 1) for n in model.graph.node)
    custom = sum(1 for n in model.graph.node if n.domain == "trt.plugins")
    return {"nodes": len(model.graph.node), "custom_nodes": custom,
            "inlined_nodes": inlined, "bytes": path.stat().st_size}


def ort_session(path: Path, threads: int):
    """The runtime's own session loader (no thread spinning: idle ONNX Runtime threads would
    busy-wait through the interleaved PyTorch calls, measured 1.4 ms -> 41 ms for one call).
    This script times the graphs as graphs; the runtime's ONNX Runtime backend runs the CRF
    natively (benchmarks/bench_runtime.py, convcrf-bench)."""
    from convcrf_deploy.runtime.backends.onnxrt import SessionLoader

    # custom_ops=False: the graphs as a plain ONNX Runtime runs them (the single-file flavour on
    # its function bodies); benchmarks/bench_ort_ops.py times them with libconvcrf_ort_ops.
    return SessionLoader(path, ("cpu",), threads=threads, spinning=False, custom_ops=False)()[0]


def bench_part(model, part: str, sessions: dict, sizes, args, results: dict) -> None:
    """Time PyTorch and the ONNX Runtime sessions of one part, interleaved, at every size."""
    for width, height in sizes:
        generator = torch.Generator().manual_seed(0)
        image = torch.rand(1, 3, height, width, generator=generator) * 255
        with torch.no_grad():
            logits = model.forward_unary(image)
        feed = {"image": image.numpy()}
        if part == "crf":
            feed["logits"] = logits.numpy()

        def run_torch():
            with torch.no_grad():
                return model.crf(logits, image) if part == "crf" else model(image)

        runs = {"pytorch": run_torch}
        for flavor, session in sessions.items():
            runs[flavor] = (lambda s=session: s.run(None, feed))
        # Interleaved, so that machine noise hits all variants alike.
        times = time_interleaved(runs, args.repeats, warmup=2)
        median = {name: statistics.median(t) for name, t in times.items()}
        results["latency_ms"][f"{part}@{width}x{height}"] = median
        error = float(np.abs(sessions["portable"].run(None, feed)[0]
                             - run_torch().numpy()).max())
        print(f"  {part} {width}x{height}: pytorch {median['pytorch']:.1f} ms, portable "
              f"{median['portable']:.1f} ms, single-file {median['single-file']:.1f} ms; "
              f"portable vs PyTorch max abs error {error:.2e}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo", help="'demo' or a checkpoint path")
    parser.add_argument("--sizes", default="320x240,640x480", help="WxH list")
    parser.add_argument("--parts", default="full,crf", help="full and/or crf")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fp16", action="store_true", help="time the fp16 graphs")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    torch.set_num_threads(args.threads)

    model = load_exportable(args.model).eval()
    parts = args.parts.split(",")
    results = {"model": args.model, "threads": args.threads, "fp16": args.fp16,
               "graphs": {}, "latency_ms": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for part in parts:
            paths = {}
            for flavor in FLAVORS:
                start = time.perf_counter()
                report = export_onnx(model, Path(tmp) / f"model.{part}.{flavor}.onnx",
                                     flavor=flavor, fp16=args.fp16, part=part)
                print(f"exported {part}/{flavor} in {time.perf_counter() - start:.1f} s; "
                      f"{report.verification.summary()}")
                paths[flavor] = report.path
                results["graphs"][f"{part}/{flavor}"] = graph_size(report.path)
            sessions = {f: ort_session(paths[f], args.threads)
                        for f in ("portable", "single-file")}
            bench_part(model, part, sessions, sizes, args, results)

        print("\ngraph sizes (nodes in the main graph / after inlining the op functions)")
        for name, size in results["graphs"].items():
            print(f"  {name:18s} {size['nodes']:6d} / {size['inlined_nodes']:6d} nodes, "
                  f"{size['custom_nodes']} ConvCRF nodes, {size['bytes'] / 1e3:.0f} kB")
        print(f"\nlatency, median of {args.repeats} (ms), {args.threads} threads")
        print(f"  {'part':5s} {'W x H':>9s} {'pytorch':>9s} {'portable':>9s} {'single':>9s} "
              f"{'port/pt':>8s} {'single/pt':>9s}")
        for key, median in results["latency_ms"].items():
            part, size = key.split("@")
            print(f"  {part:5s} {size:>9s} {median['pytorch']:9.1f} {median['portable']:9.1f} "
                  f"{median['single-file']:9.1f} {median['portable'] / median['pytorch']:8.2f} "
                  f"{median['single-file'] / median['pytorch']:9.2f}")
    if args.json:
        from convcrf_deploy.files import write_text_atomic
        write_text_atomic(args.json, json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
