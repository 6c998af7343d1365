"""The ConvCRF custom ops in plain ONNX Runtime (libconvcrf_ort_ops) vs our runtime (issue 20).

Exports one model (default: the demo model) in the plugin and single-file flavours, then times,
interleaved on the same frame (a synthetic scene, ``--size`` W x H, batch 1, ``--threads``
threads everywhere, ONNX Runtime's idle-thread spinning off in every session so that the
interleaved variants do not slow each other):

* ``plugin+ops``     : a plain ``onnxruntime.InferenceSession`` on the plugin flavour with the
  custom-op library registered (what a C++ pipeline or Triton's onnxruntime backend runs);
* ``runtime``        : our Python runtime (``OnnxRuntimeBackend`` on the single-file flavour:
  the unary in ONNX Runtime, the CRF in the fused native library);
* ``single-file``    : a plain session on the single-file flavour without the library (the
  ConvCRF nodes as their standard-op function bodies: what ONNX Runtime users got before);
* ``single-file+ops``: the same file with the library registered (its nodes on our kernels);
* ``plugin-dec+ops`` : a diagnostic: the plugin graph with the channel softmaxes rewritten as
  the other flavours have them (``export.rewrites.decompose_channel_softmax``; the plugin
  flavour keeps ``Softmax`` for TensorRT), with the library: how much of the gap to the runtime
  is ONNX Runtime's slow channel ``Softmax``;

and prints the medians and the ratios ``plugin+ops / runtime`` (goal: within 1.1x) and
``single-file / plugin+ops`` (the speed-up), then where ``plugin+ops`` spends its time (ONNX
Runtime's profile, per op type). Time it on an otherwise idle machine and report the load
average (``uptime``) beside the figures.

Usage:  python benchmarks/bench_ort_ops.py [--model demo|PATH] [--size 640x480] [--threads 2]
        [--repeats 15] [--json out.json]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
import onnx

from convcrf_deploy import _native
from convcrf_deploy.benchmarking import time_interleaved
from convcrf_deploy.export import export_onnx
from convcrf_deploy.export.rewrites import decompose_channel_softmax


def plain_session(path: Path, threads: int, library: str | None, profile_prefix: str | None = None):
    """A plain ONNX Runtime session, configured the way docs/onnxruntime.md says."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if library is not None:
        options.add_session_config_entry(_native.ORT_OPS_THREADS_KEY, str(threads))
        options.register_custom_ops_library(library)
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def profile_by_op_type(path: Path, threads: int, library: str, image: np.ndarray,
                       folder: str, runs: int = 5) -> dict[str, float]:
    """Milliseconds per run by ONNX Runtime op type (its profiler; after two warm-up runs)."""
    session = plain_session(path, threads, library, os.path.join(folder, "profile"))
    for _ in range(2 + runs):
        session.run(["labels"], {"image": image})
    with open(session.end_profiling()) as handle:
        events = json.load(handle)
    # Only the node events of the last `runs` runs: the first two are warm-up.
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    after = starts[2] if len(starts) > 2 else 0
    per_type: dict[str, float] = collections.defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time") \
                and event["ts"] >= after:
            per_type[event["args"]["op_name"]] += event["dur"] / 1e3 / runs
    return dict(per_type)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo", help="demo or a checkpoint")
    parser.add_argument("--size", default="640x480", help="W x H")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    library = _native.ort_ops_library()

    from convcrf_deploy.data.scenes import SyntheticScene
    from convcrf_deploy.runtime.backends.onnxrt import OnnxRuntimeBackend

    rgb = SyntheticScene(height, width, seed=3).render(5)[0]
    image = np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32)
    with tempfile.TemporaryDirectory() as folder:
        paths = {flavor: export_onnx(args.model, Path(folder) / f"m.{flavor}.onnx", flavor=flavor,
                                     verify=False).path
                 for flavor in ("plugin", "single-file")}
        decomposed = onnx.load(str(paths["plugin"]))
        decompose_channel_softmax(decomposed)
        paths["plugin-dec"] = Path(folder) / "m.plugin-dec.onnx"
        onnx.save(decomposed, str(paths["plugin-dec"]))
        sessions = {"plugin+ops": plain_session(paths["plugin"], args.threads, library),
                    "plugin-dec+ops": plain_session(paths["plugin-dec"], args.threads, library),
                    "single-file": plain_session(paths["single-file"], args.threads, None),
                    "single-file+ops": plain_session(paths["single-file"], args.threads, library)}
        runtime = OnnxRuntimeBackend(paths["single-file"], threads=args.threads, spinning=False)
        assert runtime.crf_executor == "native", runtime.describe()
        feed = {"image": image}
        calls = {name: (lambda s=session: s.run(["labels"], feed)) for name, session in sessions.items()}
        calls["runtime"] = lambda: runtime.infer(feed)
        labels = {name: np.asarray(call()[0] if name != "runtime" else call()["labels"])
                  for name, call in calls.items()}
        times = time_interleaved(calls, args.repeats, warmup=2)
        median = {name: statistics.median(t) for name, t in times.items()}
        breakdown = profile_by_op_type(paths["plugin"], args.threads, library, image, folder)

    agreement = {name: float((value == labels["runtime"]).mean()) for name, value in labels.items()}
    ratios = {"plugin+ops / runtime": median["plugin+ops"] / median["runtime"],
              "plugin-dec+ops / runtime": median["plugin-dec+ops"] / median["runtime"],
              "single-file / plugin+ops": median["single-file"] / median["plugin+ops"],
              "single-file / single-file+ops": median["single-file"] / median["single-file+ops"]}
    print(f"{args.model} at {width}x{height}, {args.threads} threads, {args.repeats} interleaved "
          f"rounds (medians):")
    for name in ("plugin+ops", "runtime", "single-file", "single-file+ops", "plugin-dec+ops"):
        print(f"  {name:16s} {median[name]:8.1f} ms   labels agree with runtime on "
              f"{100 * agreement[name]:.3f} %")
    for name, value in ratios.items():
        print(f"  {name:30s} {value:5.2f}x")
    total = sum(breakdown.values())
    print("  plugin+ops by op type (ONNX Runtime profile, ms per run):")
    for op, ms in sorted(breakdown.items(), key=lambda item: -item[1])[:10]:
        print(f"    {op:24s} {ms:7.1f}  ({100 * ms / total:4.1f} %)")
    if args.json:
        args.json.write_text(json.dumps({"median_ms": median, "ratios": ratios,
                                         "label_agreement": agreement,
                                         "plugin_ops_profile_ms": breakdown}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
