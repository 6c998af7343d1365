"""Latency of ConvCRF on the CPU, stage by stage, against the F.unfold implementation and a floor.

The setting of the core issue (and of the paper's Table 1): 21 classes, a 375 x 500 image,
5 mean-field iterations, blur 4, filter sizes 7 and 11, on 2 threads. Every variant runs on the
same inputs in this one process, interleaved round-robin, so the printed ratios are meaningful
even on a noisy machine (absolute times are not: quote ratios).

Timed per filter size k:
* ``native``      ``ConvCRF`` under ``torch.no_grad()`` (exact: fused native mean-field steps);
* ``fast``        the same with ``intermediate_resolution="blurred"`` (opt-in approximation);
* ``unfold``      ``ConvCRF(implementation="reference")``: messages by ``F.unfold`` as in the
  original ConvCRF code;
* stages of ``native``: ``kernel build`` (pairwise kernel of the image), ``message passing``
  (one, at 1/blur resolution) and ``full-res pass`` (one fused full-resolution step);
* floor references, compiled from ``benchmarks/floor_kernels.cpp`` with the system C++
  compiler and run in this process: a plain vectorised message passing (zero-padded q, all
  classes of a row per offset) and a plain AVX2 fused full-resolution pass (same work as ours,
  width rounded up to 504), plus a copy of the unary tensor (memory-bandwidth figure);
* training step (k=7 unless ``--train-all``): forward + backward of the loss through the CRF
  (unary and parameters), native ops vs the unfold implementation.

Goals (issue 9): unfold/native >= 12x at k=7 and >= 20x at k=11; message passing within 1.3x of
the floor loop at k=7; training step >= 5x.

Usage:  python benchmarks/bench_crf.py [--filter-sizes 7,11] [--threads 2] [--repeats 10]
        [--train-all] [--json out.json]
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from convcrf_deploy import _native

_native.prefer_passive_openmp()  # before torch loads OpenMP: idle threads must not spin

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from convcrf_deploy import CRFConfig, ConvCRF, ops  # noqa: E402
from convcrf_deploy.benchmarking import time_interleaved  # noqa: E402

FLOOR_SOURCE = Path(__file__).with_name("floor_kernels.cpp")


def build_floor(workdir: str) -> ctypes.CDLL | None:
    """The floor kernels compiled for this CPU, or None (with a note) when no compiler works."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        print("floor: no C++ compiler found, floor figures skipped")
        return None
    out = Path(workdir) / "libfloor.so"
    cmd = [compiler, "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", str(FLOOR_SOURCE),
           "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"floor: compiling {FLOOR_SOURCE.name} failed, floor figures skipped:\n"
              f"{proc.stderr[-800:]}")
        return None
    lib = ctypes.CDLL(str(out))
    p, i = ctypes.c_void_p, ctypes.c_int
    lib.floor_message_passing.argtypes = [p, p, i, i, i, i, p, i]
    lib.floor_message_passing.restype = None
    lib.floor_fused_pass.argtypes = [p, p, i, i, i, p, i]
    lib.floor_fused_pass.restype = i
    return lib


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--filter-sizes", default="7,11")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--train-all", action="store_true",
                        help="time the training step for every filter size (default: k=7 only)")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    lib = _native.cpu_library()
    if lib is None:
        raise SystemExit("the native CPU library is not built: pip install . first")
    workdir = tempfile.mkdtemp(prefix="convcrf-floor-")
    try:
        floor = build_floor(workdir)
        results = run(args, lib, floor)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        from convcrf_deploy.files import write_text_atomic
        write_text_atomic(args.json, json.dumps(
            {"threads": args.threads, "height": args.height, "width": args.width,
             "classes": args.classes, "isa": _native.cpu_isa(),
             "load_average": os.getloadavg()[0], "results": results}, indent=2))
    return 0


def run(args, lib, floor) -> list[dict]:
    c, h, w, threads = args.classes, args.height, args.width, args.threads
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, c, h, w, generator=g) * 3
    image = torch.rand(1, 3, h, w, generator=g) * 255
    target = torch.randint(0, c, (1, h, w), generator=g)
    one_hot = F.one_hot(target, c).permute(0, 3, 1, 2).float()
    hl, wl = -(-h // 4), -(-w // 4)
    w8 = -(-w // 8) * 8  # the floor pass wants whole AVX2 vectors
    floor_unary = torch.randn(c, h, w8, generator=g) * 3
    floor_messages = torch.rand(c, hl, -(-w8 // 4), generator=g)
    floor_q = torch.empty_like(floor_messages)
    copy_dst = torch.empty_like(z)

    print(f"ConvCRF, {c} classes, {h}x{w}, 5 iterations, blur 4, {threads} threads, native "
          f"clone {_native.cpu_isa()}, load average {os.getloadavg()[0]:.2f} at the start "
          f"(median of {args.repeats} interleaved rounds, ms)")
    results = []
    for k in (int(v) for v in args.filter_sizes.split(",")):
        cfg = CRFConfig(num_classes=c, filter_size=k, blur=4, iterations=5)
        native, unfold = ConvCRF(cfg), ConvCRF(cfg, implementation="reference")
        fast = ConvCRF(cfg.replace(intermediate_resolution="blurred"))
        with torch.no_grad():
            kernel = native.pairwise_kernel(image, h, w)
            q_low = torch.softmax(torch.randn(1, c, hl, wl, generator=g), dim=1)
            messages = ops.message_passing(q_low, kernel, k)
            unary_term = torch.randn_like(z)
            weights = native.message_weight.detach().float().contiguous()
            next_low = torch.empty_like(q_low)
            q_pad = F.pad(q_low[0], (k // 2,) * 4).contiguous()
            floor_m = torch.empty_like(q_low[0])

        def full_res_pass():
            status = lib.convcrf_mean_field_step_f32(
                unary_term.data_ptr(), messages.data_ptr(), weights.data_ptr(), 1, c, h, w, 4,
                None, None, None, None, next_low.data_ptr(), None, threads)
            _native.check(status, "mean-field step")

        def train_step(model):
            zz = z.clone().requires_grad_(True)
            with torch.enable_grad():
                q = model(zz, image)
                loss = -(torch.log(q.clamp_min(1e-8)) * one_hot).sum() / (h * w)
                loss.backward()
            model.zero_grad(set_to_none=True)

        calls = {
            "native": lambda: native(z, image),
            "fast": lambda: fast(z, image),
            "unfold": lambda: unfold(z, image),
            "kernel build": lambda: native.pairwise_kernel(image, h, w),
            "message passing": lambda: ops.message_passing(q_low, kernel, k),
            "full-res pass": full_res_pass,
            "copy unary": lambda: copy_dst.copy_(z),
        }
        if floor is not None:
            calls["floor message passing"] = lambda: floor.floor_message_passing(
                q_pad.data_ptr(), kernel.data_ptr(), c, hl, wl, k, floor_m.data_ptr(), threads)
            calls["floor full-res pass"] = lambda: floor.floor_fused_pass(
                floor_unary.data_ptr(), floor_messages.data_ptr(), c, h, w8,
                floor_q.data_ptr(), threads)
        if k == 7 or args.train_all:
            calls["train native"] = lambda: train_step(native)
            calls["train unfold"] = lambda: train_step(unfold)
        with torch.no_grad():
            samples = time_interleaved(calls, args.repeats, warmup=1)
            agree = (native(z, image).argmax(1) == unfold(z, image).argmax(1)).float().mean().item()
        med = {name: statistics.median(v) for name, v in samples.items()}
        results.append(report(k, med, agree))
    return results


def report(k: int, med: dict[str, float], agree: float) -> dict:
    print(f"\nk = {k}")
    for name, value in med.items():
        print(f"  {name:<24} {value:9.3f}")
    ratios = {"unfold/native (goal k=7 >= 12x, k=11 >= 20x)": med["unfold"] / med["native"],
              "unfold/fast": med["unfold"] / med["fast"]}
    if "floor message passing" in med:
        ratios["message passing / floor (goal <= 1.3)"] = (med["message passing"]
                                                           / med["floor message passing"])
        ratios["full-res pass / floor"] = med["full-res pass"] / med["floor full-res pass"]
        floor_total = (6 * med["floor full-res pass"] + 5 * med["floor message passing"]
                       + med["kernel build"])
        ratios["native / floor total (6 passes + 5 MP + kernel build)"] = med["native"] / floor_total
    ratios["full-res pass / copy of the unary"] = med["full-res pass"] / med["copy unary"]
    if "train native" in med:
        ratios["training step unfold/native (goal >= 5x)"] = med["train unfold"] / med["train native"]
    for name, value in ratios.items():
        print(f"  {name:<58} {value:7.2f}x")
    print(f"  native/unfold labels agree on {agree:.4%} of pixels")
    return {"filter_size": k, "median_ms": med, "ratios": ratios, "label_agreement": agree}


if __name__ == "__main__":
    raise SystemExit(main())
