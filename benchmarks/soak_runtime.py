"""Soak test of the video runtime: many headless frames of the demo scene, memory must stay flat.

Runs ``run_video`` on the ``demo`` source (with rendering into a discarded recording, so the
drawing path is soaked too) and prints the resident memory (RSS) at the start (after a warm-up),
at the end, and its growth. Exits 1 when the growth exceeds ``--max-growth-mb``.

By default the model is the tiny per-pixel ONNX classifier of
:func:`convcrf_deploy.runtime.testing.write_toy_onnx` (a
1x1 convolution plus a 3x3 smoothing standing in for the CRF), so the soak measures the
runtime's own memory behaviour (sources, pre/post-processing, rendering, statistics) at
thousands of frames per minute; pass ``--model`` to soak a real model instead.

    python benchmarks/soak_runtime.py --frames 10000 --size 160x120
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux /proc; ru_maxrss elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def soak(frames: int, size: tuple[int, int], model: str | None = None,
         warmup: int = 200) -> dict[str, float]:
    """Run ``frames`` headless frames (after ``warmup`` frames) and return RSS figures (MiB)."""
    from convcrf_deploy.runtime import Segmenter
    from convcrf_deploy.runtime.testing import write_toy_onnx
    from convcrf_deploy.runtime.streams import open_source
    from convcrf_deploy.runtime.video import run_video
    from convcrf_deploy.runtime.visualize import Renderer, draw_hud

    with tempfile.TemporaryDirectory() as tmp:
        model = model or str(write_toy_onnx(Path(tmp) / "toy.onnx", input_size=size))
        options = {"threads": 1} if model.endswith(".onnx") else {}
        segmenter = Segmenter(model, **options)
        # Warm-up: allocator pools, OpenCV and ONNX Runtime caches reach their steady state.
        renderer = Renderer(segmenter.metadata.palette, "side-by-side")

        def draw(frame, result):  # render every frame so visualisation is soaked too
            draw_hud(renderer.render(frame.image, result.labels, result.unary_labels),
                     ["soak"])

        run_video(open_source("demo", demo_size=size), segmenter, max_frames=warmup,
                  on_frame=draw)
        start_rss = rss_mb()
        start = time.perf_counter()
        report = run_video(open_source("demo", demo_size=size), segmenter, max_frames=frames,
                           on_frame=draw)
        seconds = time.perf_counter() - start
        end_rss = rss_mb()
        segmenter.close()
    return {"frames": report.frames, "seconds": seconds, "fps": report.frames / seconds,
            "rss_start_mb": start_rss, "rss_end_mb": end_rss, "rss_growth_mb": end_rss - start_rss}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--size", default="160x120", help="WIDTHxHEIGHT of the demo scene")
    parser.add_argument("--model", help="model to soak (default: the tiny ONNX classifier)")
    parser.add_argument("--max-growth-mb", type=float, default=20.0)
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    result = soak(args.frames, (height, width), args.model)
    print(f"frames {result['frames']} in {result['seconds']:.1f} s ({result['fps']:.0f} FPS)")
    print(f"RSS start {result['rss_start_mb']:.1f} MiB, end {result['rss_end_mb']:.1f} MiB, "
          f"growth {result['rss_growth_mb']:+.1f} MiB (limit {args.max_growth_mb} MiB)")
    return 0 if result["rss_growth_mb"] < args.max_growth_mb else 1


if __name__ == "__main__":
    # Run from a source checkout without installing: the package is one folder up.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
