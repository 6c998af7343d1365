"""Latency of ConvCRF on the CPU: end to end against F.unfold, stage by stage against floors.

The setting of the core issue (and of the paper's Table 1): 21 classes, a 375 x 500 image,
5 mean-field iterations, blur 4, filter sizes 7 and 11, on 2 threads. Everything runs in this
one run, so the printed ratios are comparable (absolute times are not: quote ratios).

1. End to end, per filter size k (medians of interleaved rounds, ms):
   * ``native``  ``ConvCRF`` under ``torch.no_grad()`` (exact: fused native mean-field steps);
   * ``fast``    ``intermediate_resolution="blurred"`` (opt-in approximation);
   * ``unfold``  ``ConvCRF(implementation="reference")``: messages by ``F.unfold`` as in the
     original ConvCRF code;
   * the training step (k=7 unless ``--train-all``): forward + backward of the loss through
     the CRF, native ops vs the unfold implementation.
2. Stages against floors (the fastest of many repetitions, ms): the library's C API for one
   message passing (k), the transposed message passing and the kernel gradient of training
   (k), and one full-resolution pass, each against
   * the **independent** floor programs of ``../shared/limits`` (``$CONVCRF_LIMITS_DIR``):
     message_passing.cpp for the three windowed passes (the same multiply-adds and sizes) and
     fused_pass.cpp for the full-resolution pass (width 504, ours 500);
   * the **own** floors of ``benchmarks/floor_kernels.cpp``, which also has plain loops of the
     two training passes.
   Both are compiled with ``g++ -O3 -march=native -fopenmp`` and run as processes of their own
   with ``OMP_NUM_THREADS=threads`` (benchmarks/floors.py); rounds of ours and the floors
   alternate and each keeps its minimum. ``own/independent`` must be <= 1.1 (a floor at least
   as fast as the independent one; tests/test_floor_kernels.py checks it too).

Goals (issues 9 and 22): unfold/native >= 12x at k=7 and >= 20x at k=11; training step >= 5x;
each windowed pass within 1.1x of the independent floor (k=7 and k=11).

Usage:  python benchmarks/bench_crf.py [--filter-sizes 7,11] [--threads 2] [--repeats 10]
        [--floor-rounds 5] [--train-all] [--json out.json]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from floors import (FloorError, FloorPrograms, INDEPENDENT_FUSED_SIZE,  # noqa: E402
                    INDEPENDENT_MP_SIZE)

from convcrf_deploy import _native  # noqa: E402

_native.prefer_passive_openmp()  # before torch loads OpenMP: idle threads must not spin

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from convcrf_deploy import CRFConfig, ConvCRF, ops  # noqa: E402
from convcrf_deploy.benchmarking import time_interleaved  # noqa: E402

HONEST_FLOOR = 1.1  # own floor / independent floor must not exceed this


def cpu_flags() -> str:
    """The vector instruction sets this CPU reports (x86 AVX2/AVX-512 family, ARM ASIMD/SVE)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
            break
    wanted = sorted(f for f in flags if f == "avx2" or f.startswith(("avx512", "asimd", "sve")))
    return " ".join(wanted) or "none of avx2/avx512/asimd"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--filter-sizes", default="7,11")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10,
                        help="interleaved rounds of the end-to-end timings")
    parser.add_argument("--floor-rounds", type=int, default=5,
                        help="alternating rounds of ours and the floor programs")
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
    print(f"ConvCRF, {args.classes} classes, {args.height}x{args.width}, 5 iterations, blur 4, "
          f"{args.threads} threads, native clone {_native.cpu_isa()}, CPU: {cpu_flags()}, "
          f"load average {os.getloadavg()[0]:.2f} at the start")
    with tempfile.TemporaryDirectory(prefix="convcrf-floor-") as workdir:
        floors = FloorPrograms(workdir, args.threads)
        for note in floors.notes:
            print(f"floors: {note}")
        results = {"end_to_end": [end_to_end(args, k) for k in filter_sizes(args)],
                   "stages": stages(args, lib, floors)}
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    if args.json:
        from convcrf_deploy.files import write_text_atomic
        write_text_atomic(args.json, json.dumps(
            {"threads": args.threads, "height": args.height, "width": args.width,
             "classes": args.classes, "isa": _native.cpu_isa(), "cpu_flags": cpu_flags(),
             "load_average": os.getloadavg()[0], "results": results}, indent=2))
    return 0


def filter_sizes(args) -> list[int]:
    return [int(v) for v in args.filter_sizes.split(",")]


# ---- 1. end to end ---------------------------------------------------------------------------

def end_to_end(args, k: int) -> dict:
    c, h, w = args.classes, args.height, args.width
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, c, h, w, generator=g) * 3
    image = torch.rand(1, 3, h, w, generator=g) * 255
    target = torch.randint(0, c, (1, h, w), generator=g)
    one_hot = F.one_hot(target, c).permute(0, 3, 1, 2).float()
    cfg = CRFConfig(num_classes=c, filter_size=k, blur=4, iterations=5)
    native, unfold = ConvCRF(cfg), ConvCRF(cfg, implementation="reference")
    fast = ConvCRF(cfg.replace(intermediate_resolution="blurred"))

    def train_step(model):
        zz = z.clone().requires_grad_(True)
        with torch.enable_grad():
            q = model(zz, image)
            loss = -(torch.log(q.clamp_min(1e-8)) * one_hot).sum() / (h * w)
            loss.backward()
        model.zero_grad(set_to_none=True)

    calls = {"native": lambda: native(z, image), "fast": lambda: fast(z, image),
             "unfold": lambda: unfold(z, image)}
    if k == 7 or args.train_all:
        calls["train native"] = lambda: train_step(native)
        calls["train unfold"] = lambda: train_step(unfold)
    with torch.no_grad():
        samples = time_interleaved(calls, args.repeats, warmup=1)
        agree = (native(z, image).argmax(1) == unfold(z, image).argmax(1)).float().mean().item()
    med = {name: statistics.median(v) for name, v in samples.items()}
    ratios = {"unfold/native (goal k=7 >= 12x, k=11 >= 20x)": med["unfold"] / med["native"],
              "unfold/fast": med["unfold"] / med["fast"]}
    if "train native" in med:
        ratios["training step unfold/native (goal >= 5x)"] = med["train unfold"] / med["train native"]
    print(f"\nk = {k}, end to end (median of {args.repeats} interleaved rounds, ms)")
    for name, value in med.items():
        print(f"  {name:<16} {value:9.2f}")
    for name, value in ratios.items():
        print(f"  {name:<50} {value:7.2f}x")
    print(f"  native/unfold labels agree on {agree:.4%} of pixels")
    return {"filter_size": k, "median_ms": med, "ratios": ratios, "label_agreement": agree}


# ---- 2. stages against floors -----------------------------------------------------------------

def best_of(call, reps: int) -> float:
    """The fastest of `reps` calls, ms."""
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        call()
        best = min(best, (time.perf_counter() - start) * 1e3)
    return best


def stages(args, lib, floors: FloorPrograms) -> list[dict]:
    c, h, w, threads = args.classes, args.height, args.width, args.threads
    hl, wl = -(-h // 4), -(-w // 4)
    g = torch.Generator().manual_seed(1)
    independent_mp = floors.independent and (c, hl, wl) == INDEPENDENT_MP_SIZE
    independent_fused = floors.independent and (c, h, -(-w // 8) * 8) == INDEPENDENT_FUSED_SIZE
    if floors.independent and not independent_mp:
        print(f"floors: the independent programs are written for {INDEPENDENT_MP_SIZE[0]} "
              f"classes at 375x500: their column is skipped at these sizes")
    rows = []
    q = torch.rand(1, c, hl, wl, generator=g)
    grad = torch.randn(1, c, hl, wl, generator=g)
    out = torch.empty_like(q)
    for k in filter_sizes(args):
        kernel = torch.rand(1, k * k, hl, wl, generator=g)
        kernel_grad = torch.empty_like(kernel)
        ours = {
            "message passing": lambda: lib.convcrf_message_passing_f32(
                q.data_ptr(), kernel.data_ptr(), 1, c, hl, wl, k, out.data_ptr(), threads),
            "transposed message passing (training)": lambda: (
                lib.convcrf_message_passing_transposed_f32(
                    grad.data_ptr(), kernel.data_ptr(), 1, c, hl, wl, k, out.data_ptr(), threads)),
            "kernel gradient (training)": lambda: lib.convcrf_message_passing_kernel_grad_f32(
                grad.data_ptr(), q.data_ptr(), 1, c, hl, wl, k, kernel_grad.data_ptr(), threads),
        }
        own_stage = {"message passing": "mp", "transposed message passing (training)": "mpT",
                     "kernel gradient (training)": "kgrad"}
        for call in ours.values():
            _native.check(call(), "stage")  # also the warm-up
        best = {name: [] for name in ours}
        indep, own = [], {name: [] for name in ours}
        for _ in range(args.floor_rounds):
            for name, call in ours.items():
                best[name].append(best_of(call, 100))
            if independent_mp:
                indep.append(floors.independent_message_passing(k))
            if floors.own:
                for name in ours:
                    own[name].append(floors.own_floor(own_stage[name], k, c, hl, wl, 100))
        for name in ours:
            rows.append(stage_row(f"{name}, k={k}", min(best[name]),
                                  min(indep) if indep else None,
                                  min(own[name]) if own[name] else None,
                                  same_loop=name == "message passing"))
    rows.append(full_resolution_pass(args, lib, floors, independent_fused))
    rows = sorted(rows, key=lambda row: ("training" in row["stage"], "full-res" in row["stage"]))
    print_stages(rows, args, floors)
    return rows


def full_resolution_pass(args, lib, floors: FloorPrograms, independent: bool) -> dict:
    c, h, w, threads = args.classes, args.height, args.width, args.threads
    hl, wl = -(-h // 4), -(-w // 4)
    g = torch.Generator().manual_seed(2)
    unary_term = torch.randn(1, c, h, w, generator=g) * 3
    messages = torch.rand(1, c, hl, wl, generator=g)
    weights = torch.rand(c, generator=g)
    next_low = torch.empty_like(messages)

    def call():
        _native.check(lib.convcrf_mean_field_step_f32(
            unary_term.data_ptr(), messages.data_ptr(), weights.data_ptr(), 1, c, h, w, 4,
            None, None, None, None, next_low.data_ptr(), None, threads), "mean-field step")

    call()
    ours, indep, own = [], [], []
    for _ in range(args.floor_rounds):
        ours.append(best_of(call, 20))
        if independent:
            indep.append(floors.independent_fused_pass(20))
        if floors.own:
            try:
                own.append(floors.own_floor("fused", 1, c, h, w, 20))
            except FloorError as error:  # written for AVX2 + FMA
                print(f"floors: {error}")
                break
    return stage_row("full-resolution pass (blur 4)", min(ours), min(indep) if indep else None,
                     min(own) if own else None)


def stage_row(name: str, ours: float, independent: float | None, own: float | None,
              same_loop: bool = True) -> dict:
    """One stage's figures. `same_loop`: the own and the independent floor time the same
    computation (for the training passes the independent column is the message-passing
    program, the same multiply-adds in a simpler access pattern)."""
    return {"stage": name, "ours_ms": ours, "independent_floor_ms": independent,
            "own_floor_ms": own,
            "ours/independent": ours / independent if independent else None,
            "ours/own": ours / own if own else None,
            "own/independent": own / independent if own and independent and same_loop else None}


def print_stages(rows: list[dict], args, floors: FloorPrograms) -> None:
    print(f"\nstages against floors (fastest of 100 calls (20 for the full-resolution pass) in "
          f"each of {args.floor_rounds} alternating rounds, ms; ratios < 1: faster than the "
          f"floor)")

    def fmt(value, spec, suffix=""):
        width = len(format(1.0, spec)) + len(suffix)
        return format(value, spec) + suffix if value is not None else "-".rjust(width)

    print(f"  {'stage':<46} {'ours':>8} {'indep.':>8} {'own':>8}   {'ours/indep.':>11} "
          f"{'ours/own':>8} {'own/indep.':>10}")
    for row in rows:
        flag = ""
        if row["own/independent"] is not None and row["own/independent"] > HONEST_FLOOR:
            flag = f"  own floor slower than {HONEST_FLOOR}x the independent one"
        print(f"  {row['stage']:<46} {fmt(row['ours_ms'], '8.3f')} "
              f"{fmt(row['independent_floor_ms'], '8.3f')} {fmt(row['own_floor_ms'], '8.3f')}   "
              f"{fmt(row['ours/independent'], '10.2f', 'x')} {fmt(row['ours/own'], '7.2f', 'x')} "
              f"{fmt(row['own/independent'], '9.2f', 'x')}{flag}")
    print("  (indep.: ../shared/limits message_passing.cpp for the windowed passes, the same "
          "multiply-adds; fused_pass.cpp at width 504 for the full-resolution pass. own: "
          "benchmarks/floor_kernels.cpp, the same pass as ours)")


if __name__ == "__main__":
    raise SystemExit(main())
