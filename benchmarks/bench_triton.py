"""Triton load benchmark: one local Segmenter vs a real tritonserver (CPU, Python backend) with
1 client and with 8 concurrent clients, in one run; prints throughput, p50/p99 latency, their
ratios, and the batch sizes the server's dynamic batcher formed (its statistics).

    python benchmarks/bench_triton.py                          # exports the demo model
    python benchmarks/bench_triton.py --onnx demo.onnx --clients 8 --frames 50 --protocol grpc

Needs the server environment (``bash scripts/triton_env.sh``; ``$CONVCRF_TRITON_PYTHON`` or
``--server-python``) and tritonclient. Frames are pre-rendered 320x240 demo-scene frames, each
client its own stream; latency is per frame as a client sees it (``Segmenter.__call__``:
pre-processing, request round trip, post-processing). Every server answer is checked against
the local Segmenter's labels for the same frame. The local baseline and each server instance
use the same number of ONNX Runtime threads (``--threads``), so on an idle machine the ratios
show what batching and concurrency buy, not more cores. Compare ratios, not absolute times.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def demo_frames(count: int, seed: int, size=(240, 320)) -> list[np.ndarray]:
    from convcrf_deploy.runtime.streams import open_source

    return [f.image for f in open_source("demo", demo_size=size, demo_seed=seed, demo_frames=count)]


def percentiles(latencies_s: list[float]) -> tuple[float, float]:
    ms = np.asarray(latencies_s) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def run_clients(make_segmenter, streams: list[list[np.ndarray]], expected) -> dict:
    """Each stream in its own thread with its own segmenter; returns throughput and latencies."""
    latencies: list[float] = []
    mismatches, lost, errors = [0], [0], []
    lock = threading.Lock()
    barrier = threading.Barrier(len(streams), timeout=120)

    def client(index: int) -> None:
        try:
            with make_segmenter() as segmenter:
                segmenter(streams[index][0])  # connect and warm up outside the timing
                barrier.wait()
                done = 0
                for i, frame in enumerate(streams[index]):
                    start = time.perf_counter()
                    labels = segmenter(frame).labels
                    elapsed = time.perf_counter() - start
                    done += 1
                    with lock:
                        latencies.append(elapsed)
                        mismatches[0] += not np.array_equal(labels, expected[index][i])
                with lock:
                    lost[0] += len(streams[index]) - done
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(len(streams))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=1800)
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    p50, p99 = percentiles(latencies)
    return {"frames": len(latencies), "fps": len(latencies) / wall, "p50": p50, "p99": p99,
            "mismatches": mismatches[0], "lost": lost[0]}


def batch_counts(client, model: str) -> dict[int, int]:
    stats = client.get_inference_statistics(model)["model_stats"][0]
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", type=Path, help="exported model (default: export the demo model)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--frames", type=int, default=50, help="frames per client")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="grpc")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (local and per instance)")
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--queue-delay-us", type=int, default=2000)
    parser.add_argument("--server-python", help="python of the server environment")
    args = parser.parse_args(argv)

    import tritonclient.http as httpclient

    from convcrf_deploy.runtime import Segmenter
    from convcrf_deploy.serving import ModelOptions, TritonServer, write_python_model

    with tempfile.TemporaryDirectory(prefix="bench-triton-") as tmp:
        onnx_path = args.onnx
        if onnx_path is None:
            from convcrf_deploy.export import export_onnx

            onnx_path = Path(tmp) / "demo.onnx"
            export_onnx("demo", onnx_path, flavor="single-file", verify=False)
        options = ModelOptions("convcrf", args.max_batch, args.instances, args.queue_delay_us)
        repo = Path(tmp) / "repo"
        write_python_model(onnx_path, repo, options, threads=args.threads)

        streams = [demo_frames(args.frames, seed=c) for c in range(args.clients)]
        local = Segmenter(onnx_path, threads=args.threads)
        expected = [[local(f).labels for f in stream] for stream in streams]  # also warms up

        results = {"local Segmenter, 1 stream": run_clients(lambda: local, streams[:1], expected[:1])}
        with TritonServer(repo, python=args.server_python) as server:
            url = server.grpc_url if args.protocol == "grpc" else server.http_url
            stats = httpclient.InferenceServerClient(server.http_url, network_timeout=60)

            def remote():
                return Segmenter("convcrf", "triton", url=url, protocol=args.protocol, timeout=120)

            batches = {}
            for label, count in (("triton, 1 client", 1), (f"triton, {args.clients} clients", args.clients)):
                before = batch_counts(stats, "convcrf")
                results[label] = run_clients(remote, streams[:count], expected[:count])
                after = batch_counts(stats, "convcrf")
                batches[label] = {n: after[n] - before.get(n, 0) for n in sorted(after)
                                  if after[n] - before.get(n, 0)}

    base = results["local Segmenter, 1 stream"]
    print(f"demo model ({onnx_path.name}), 320x240, {args.protocol}, {args.threads} ORT thread(s) "
          f"locally and per server instance, {args.instances} instance(s), max batch "
          f"{args.max_batch}, queue delay {args.queue_delay_us} us")
    print(f"{'':<26}{'frames':>7}{'frames/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'x local fps':>13}"
          f"{'lost':>6}{'wrong':>7}")
    for label, r in results.items():
        print(f"{label:<26}{r['frames']:>7}{r['fps']:>10.1f}{r['p50']:>9.1f}{r['p99']:>9.1f}"
              f"{r['fps'] / base['fps']:>13.2f}{r['lost']:>6}{r['mismatches']:>7}")
    for label, counts in batches.items():
        print(f"batches formed ({label}), size: count = {counts}")
    bad = sum(r["lost"] + r["mismatches"] for r in results.values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
