"""Where the INT8 unary's time goes: ONNX Runtime's per-operator kernel times of the fp32 and
the INT8 unary, run as the runtime runs them (the unary part extracted from the exported file,
``--threads`` intra-op threads, idle threads not spinning), and their medians interleaved at
two graph optimisation levels. Explains ``convcrf-bench --int8`` ratios: which operators are
quantised (QLinear*), which stay float (stem, normalisation, upsampling), what the QDQ layout
costs (QuantizeLinear, Transpose/Reorder) and what ONNX Runtime's NCHWc and QDQ fusions give.

Usage:  python benchmarks/profile_int8.py --calibration DIR [--model demo|PATH]
        [--size 320x240] [--threads 2] [--rounds 150]

Run it under ``flock`` on a quiet machine; print ``uptime`` beside it.
"""
from __future__ import annotations

import argparse
import collections
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from convcrf_deploy.data.scenes import SyntheticScene
from convcrf_deploy.export import export_onnx
from convcrf_deploy.export.quantize import quantization_info
from convcrf_deploy.exported_model import extract_part, unary_logits_name

LEVELS = {"ALL": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
          "EXTENDED": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}


def unary_bytes(path: Path) -> bytes:
    model = onnx.load(str(path))
    return extract_part(model, ["image"], [unary_logits_name(model)]).SerializeToString()


def session(data: bytes, threads: int, level: str, profile: str | None = None):
    """A session as the runtime's unary session; ``profile``: a file prefix to profile to."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = LEVELS[level]
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    if profile:
        options.enable_profiling, options.profile_file_prefix = True, profile
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def kernel_times(data: bytes, image: np.ndarray, threads: int, runs: int = 60) -> dict[str, float]:
    """Milliseconds per run per operator type (ONNX Runtime's profiler, level ALL)."""
    with tempfile.TemporaryDirectory() as folder:
        s = session(data, threads, "ALL", profile=str(Path(folder) / "ort"))
        for _ in range(runs):
            s.run(None, {"image": image})
        events = json.loads(Path(s.end_profiling()).read_text())
    per_op: dict[str, float] = collections.defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"] / runs / 1e3
    return dict(per_op)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calibration", required=True, help="folder of calibration frames")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--size", default="320x240", help="WIDTHxHEIGHT of the profiled frame")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=150)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    rgb, _ = SyntheticScene(height, width, seed=10_001).render(7)
    image = np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32)
    with tempfile.TemporaryDirectory() as folder:
        fp32_path, int8_path = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        export_onnx(args.model, fp32_path, verify=False)
        export_onnx(args.model, int8_path, verify=False, int8=True, calibration=args.calibration)
        parts = {"fp32": unary_bytes(fp32_path), "int8": unary_bytes(int8_path)}
        info = quantization_info(onnx.load(str(int8_path)))
    print(f"onnxruntime {ort.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} threads, {width}x{height}; INT8: {info['quantized_nodes']} quantised, "
          f"float: {', '.join(info['float_nodes'])}")
    sessions = {(name, level): session(data, args.threads, level)
                for name, data in parts.items() for level in LEVELS}
    for s in sessions.values():
        for _ in range(10):
            s.run(None, {"image": image})
    samples = collections.defaultdict(list)
    keys = list(sessions)
    for index in range(args.rounds):
        for key in keys if index % 2 == 0 else reversed(keys):
            start = time.perf_counter()
            sessions[key].run(None, {"image": image})
            samples[key].append((time.perf_counter() - start) * 1e3)
    median = {key: float(np.median(values)) for key, values in samples.items()}
    print(f"unary medians in ms ({args.rounds} interleaved rounds):")
    for level in LEVELS:
        fp32, int8 = median[("fp32", level)], median[("int8", level)]
        print(f"  graph optimisation {level:8s}: fp32 {fp32:.3f}, int8 {int8:.3f}, "
              f"int8/fp32 {int8 / fp32:.2f}")
    for name, data in parts.items():
        times = kernel_times(data, image, args.threads)
        total = sum(times.values())
        print(f"{name}: kernel times {total:.3f} ms per run (profiler on)")
        for op, value in sorted(times.items(), key=lambda kv: -kv[1]):
            if value >= 0.01:
                print(f"  {op:18s} {value:6.3f} ms  {100 * value / total:5.1f} %")


if __name__ == "__main__":
    main()
