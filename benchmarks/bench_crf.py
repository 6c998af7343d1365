"""Latency of full ConvCRF inference on the CPU: native kernels vs an F.unfold implementation.

The setting of the core issue (and of the paper's Table 1): 21 classes, a 375 x 500 image,
5 mean-field iterations, blur 4, filter sizes 7 and 11, on 2 threads. Every variant runs the
same model on the same inputs in this one process, interleaved, so the printed ratios are
meaningful even on a noisy machine:

* ``native``  : ``ConvCRF`` under ``torch.no_grad()`` (fused native mean-field step);
* ``fast``    : the same with ``intermediate_resolution="blurred"`` (opt-in approximation:
  intermediate iterations on the blurred grid);
* ``native-ops``: the differentiable path with the native ops, recording autograd (the
  forward pass of training);
* ``unfold``  : ``ConvCRF(implementation="reference")``, messages by ``F.unfold`` as in the
  original ConvCRF code;
* ``message-passing``: one native message passing alone, for the per-iteration floor.

Usage:  python benchmarks/bench_crf.py [--filter-sizes 7,11] [--threads 2] [--repeats 10]
        [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch

from convcrf_deploy import CRFConfig, ConvCRF, ops
from convcrf_deploy.benchmarking import time_interleaved


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--filter-sizes", default="7,11")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    if not ops.native_available():
        raise SystemExit("the native CPU library is not built: pip install . first")
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, args.classes, args.height, args.width, generator=g) * 3
    image = torch.rand(1, 3, args.height, args.width, generator=g) * 255
    print(f"ConvCRF inference, {args.classes} classes, {args.height}x{args.width}, 5 iterations, "
          f"blur 4, {args.threads} threads (median of {args.repeats}, ms)")
    print(f"{'k':>3} {'native':>9} {'fast':>9} {'native-ops':>11} {'unfold':>9} {'msg-pass':>9} "
          f"{'unfold/native':>14} {'unfold/fast':>12}")
    results = []
    for k in (int(v) for v in args.filter_sizes.split(",")):
        cfg = CRFConfig(num_classes=args.classes, filter_size=k, blur=4, iterations=5)
        native, unfold = ConvCRF(cfg), ConvCRF(cfg, implementation="reference")
        fast = ConvCRF(cfg.replace(intermediate_resolution="blurred"))

        def training_forward():
            # Trainable parameters and grad mode: ConvCRF takes its differentiable path.
            with torch.enable_grad():
                return native(z, image)
        with torch.no_grad():
            kernel = native.pairwise_kernel(image, args.height, args.width)
            q_low = torch.rand(1, args.classes, kernel.shape[2], kernel.shape[3], generator=g)
            # Interleaved, so that machine noise hits all variants alike.
            samples = time_interleaved({
                "native": lambda: native(z, image),
                "fast": lambda: fast(z, image),
                "native-ops": training_forward,
                "unfold": lambda: unfold(z, image),
                "message-passing": lambda: ops.message_passing(q_low, kernel, k),
            }, args.repeats, warmup=1)
            agree = (native(z, image).argmax(1) == unfold(z, image).argmax(1)).float().mean().item()
        med = {name: statistics.median(v) for name, v in samples.items()}
        ratio = med["unfold"] / med["native"]
        ratio_fast = med["unfold"] / med["fast"]
        print(f"{k:>3} {med['native']:>9.1f} {med['fast']:>9.1f} {med['native-ops']:>11.1f} "
              f"{med['unfold']:>9.1f} {med['message-passing']:>9.2f} {ratio:>13.1f}x "
              f"{ratio_fast:>11.1f}x   (native/unfold labels agree: {agree:.4%})")
        results.append({"filter_size": k, "median_ms": med, "speedup_vs_unfold": ratio,
                        "fast_speedup_vs_unfold": ratio_fast, "label_agreement": agree})
    if args.json:
        from convcrf_deploy.files import write_text_atomic
        write_text_atomic(args.json, json.dumps(
            {"threads": args.threads, "height": args.height, "width": args.width,
             "classes": args.classes, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
