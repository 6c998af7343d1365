"""Soak test of the video runtime: many headless frames of the demo scene, memory must stay flat.

Runs ``run_video`` on the ``demo`` source (with rendering into a discarded recording, so the
drawing path is soaked too) and prints the resident memory (RSS) at the start (after a warm-up),
at the end, and its growth. Exits 1 when the growth exceeds ``--max-growth-mb``.

By default the model is a tiny per-pixel ONNX classifier written by :func:`write_toy_onnx` (a
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Colour prototypes (RGB) of SyntheticScene's classes, used by the toy model's weights.
_TOY_PROTOTYPES = [(110, 110, 110), (200, 70, 60), (60, 150, 210), (90, 190, 80), (215, 190, 60)]


def write_toy_onnx(path: str | os.PathLike, class_names=("background", "disc", "box",
                                                          "triangle", "star"),
                   input_size=(240, 320), resize: str = "none") -> Path:
    """Write a tiny ONNX model with the exported models' interface.

    Input ``image`` float32 ``[N, 3, H, W]`` RGB 0..255 (dynamic N, H, W); outputs
    ``probabilities`` (softmax of 3x3-averaged logits, a stand-in for the CRF's smoothing),
    ``labels`` (their argmax) and ``unary_labels`` (argmax of the raw 1x1-convolution logits);
    ``convcrf.*`` metadata_props from :class:`ModelMetadata`. Logits are the negative squared
    distance to a colour prototype per class, so the model is a plausible colour classifier.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from convcrf_deploy.metadata import ModelMetadata

    num_classes = len(class_names)
    prototypes = np.array([_TOY_PROTOTYPES[i % len(_TOY_PROTOTYPES)] for i in range(num_classes)],
                          np.float32) / 255.0
    # -|x - p|^2 = 2 p.x - |p|^2 - |x|^2; the |x|^2 term is the same for all classes.
    weight = (2 * prototypes * 8.0).reshape(num_classes, 3, 1, 1)
    bias = (-(prototypes ** 2).sum(1) * 8.0)
    nodes = [
        helper.make_node("Mul", ["image", "inv255"], ["scaled"]),
        helper.make_node("Conv", ["scaled", "weight", "bias"], ["logits"]),
        helper.make_node("AveragePool", ["logits"], ["smoothed"], kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1], count_include_pad=0),
        helper.make_node("Softmax", ["smoothed"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["labels"], axis=1, keepdims=0),
        helper.make_node("ArgMax", ["logits"], ["unary_labels"], axis=1, keepdims=0),
    ]
    initializers = [numpy_helper.from_array(np.array(1 / 255.0, np.float32), "inv255"),
                    numpy_helper.from_array(weight.astype(np.float32), "weight"),
                    numpy_helper.from_array(bias.astype(np.float32), "bias")]
    graph = helper.make_graph(
        nodes, "toy_segmenter",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT,
                                       ["N", num_classes, "H", "W"]),
         helper.make_tensor_value_info("labels", TensorProto.INT64, ["N", "H", "W"]),
         helper.make_tensor_value_info("unary_labels", TensorProto.INT64, ["N", "H", "W"])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    metadata = ModelMetadata(class_names=list(class_names), input_size=input_size, resize=resize)
    props = {**metadata.to_onnx_props(), "convcrf.flavor": "portable"}
    helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, str(path))
    return path


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
    from convcrf_deploy.runtime.sources import open_source
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
    sys.exit(main())
