"""Frame latency of ``convcrf-run --video demo`` with and without one competing busy process.

Robots run many processes on few cores. Issue 9 found the default settings going from 15 ms
to 350 ms per frame (20-25x) when one other process kept a CPU busy, while ``--threads 1``
stayed at 15 ms. The goal: with one competing busy process, the median frame latency at
default settings within 2x of the idle figure.

Each configuration runs ``python -m convcrf_deploy.cli.run`` headless in a child process
(the same code a user runs, default threads unless given), interleaved over ``--rounds``:
idle, then with a busy-loop Python process that this script starts and kills (bounded by a
deadline, so nothing outlives the run). "frame" = preprocess + inference + postprocess (the
demo scene's rendering, the "read" stage, is the source, not the segmenter).

Usage:  python benchmarks/bench_shared_cpu.py [--frames 60] [--rounds 2] [--size 320x240]
        [--configs default,threads1,spin] [--json out.json]
  configs: default   convcrf-run as shipped;
           threads1  with --threads 1;
           spin      OMP_WAIT_POLICY=ACTIVE (PyTorch's OpenMP threads spinning, as before the fix);
           no-crf    --no-crf (the unary network alone);
           crf-only  ConvCRF inference alone at default threads (no unary network, no video)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUSY_LOOP = "import time\nend = time.time() + {limit}\nwhile time.time() < end:\n    pass\n"


def run_once(frames: int, size: str, extra_args: list[str], env_extra: dict[str, str],
             timeout_s: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        stats = Path(tmp) / "stats.json"
        env = {**os.environ, **env_extra,
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        cmd = [sys.executable, "-m", "convcrf_deploy.cli.run", "--video", "demo", "--headless",
               "--size", size, "--max-frames", str(frames), "--stats-json", str(stats),
               *extra_args]
        subprocess.run(cmd, check=True, env=env, timeout=timeout_s, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        data = json.loads(stats.read_text())
    stages = data["stages_ms"]
    frame = sum(stages[name]["p50"] for name in ("preprocess", "inference", "postprocess"))
    return {"frame_p50_ms": frame, "inference_p50_ms": stages["inference"]["p50"],
            "inference_p95_ms": stages["inference"]["p95"]}


def with_busy_process(fn, limit_s: float):
    busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP.format(limit=limit_s)])
    try:
        time.sleep(0.5)  # let it get going
        return fn()
    finally:
        busy.kill()
        busy.wait()


CONFIGS = {
    "default": ([], {}),
    "threads1": (["--threads", "1"], {}),
    "spin": ([], {"OMP_WAIT_POLICY": "ACTIVE"}),
    "no-crf": (["--no-crf"], {}),
}

# The CRF alone (ConvCRF inference at default threads on a demo-sized input), in a child
# process like convcrf-run, to tell the CRF's share from the unary network's.
CRF_ONLY = """
import json, statistics, sys, time
from convcrf_deploy import _native
_native.prefer_passive_openmp()
import torch
from convcrf_deploy import CRFConfig, ConvCRF
w, h = (int(v) for v in sys.argv[2].split("x"))
g = torch.Generator().manual_seed(0)
z, image = torch.randn(1, 21, h, w, generator=g) * 3, torch.rand(1, 3, h, w, generator=g) * 255
crf = ConvCRF(CRFConfig(num_classes=21))
times = []
with torch.no_grad():
    for i in range(int(sys.argv[1]) + 2):
        start = time.perf_counter()
        crf(z, image)
        if i >= 2:
            times.append((time.perf_counter() - start) * 1e3)
p50 = statistics.median(times)
print(json.dumps({"frame_p50_ms": p50, "inference_p50_ms": p50,
                  "inference_p95_ms": sorted(times)[int(0.95 * (len(times) - 1))]}))
"""


def run_crf_only(frames: int, size: str, timeout_s: float) -> dict:
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", CRF_ONLY, str(frames), size], check=True,
                          env=env, timeout=timeout_s, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--configs", default="default,threads1,spin,no-crf,crf-only")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds allowed per convcrf-run (also bounds the busy process)")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    unknown = set(configs) - set(CONFIGS) - {"crf-only"}
    if unknown:
        parser.error(f"unknown configs {sorted(unknown)}; choose from {sorted(CONFIGS)}")

    samples: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.rounds):  # interleaved: machine noise hits every cell alike
        for config in configs:
            if config == "crf-only":
                run = lambda: run_crf_only(args.frames, args.size, args.timeout)  # noqa: E731
            else:
                extra, env = CONFIGS[config]
                run = lambda: run_once(args.frames, args.size, extra, env, args.timeout)  # noqa: E731
            samples.setdefault((config, "idle"), []).append(run())
            samples.setdefault((config, "busy"), []).append(with_busy_process(run, args.timeout))

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"convcrf-run --video demo --size {args.size}, {args.frames} frames x {args.rounds} "
          f"rounds, {cpus} CPUs, load average {os.getloadavg()[0]:.2f} at the end")
    print(f"{'config':>10} {'idle frame':>11} {'busy frame':>11} {'busy/idle':>10} "
          f"{'busy infer p95':>15}   (medians over rounds of per-run p50, ms)")
    results = {}
    for config in configs:
        idle = statistics.median(s["frame_p50_ms"] for s in samples[(config, "idle")])
        busy = statistics.median(s["frame_p50_ms"] for s in samples[(config, "busy")])
        p95 = statistics.median(s["inference_p95_ms"] for s in samples[(config, "busy")])
        results[config] = {"idle_frame_ms": idle, "busy_frame_ms": busy, "ratio": busy / idle,
                           "busy_inference_p95_ms": p95}
        print(f"{config:>10} {idle:>11.1f} {busy:>11.1f} {busy / idle:>9.2f}x {p95:>15.1f}")
    print("goal: default busy/idle <= 2x")
    if args.json:
        from convcrf_deploy.files import write_text_atomic
        write_text_atomic(args.json, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
