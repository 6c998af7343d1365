#!/usr/bin/env python
"""Validate the TensorRT path on a machine with an NVIDIA GPU and TensorRT installed.

Exports the built-in ``demo`` model to ONNX (through ``convcrf-export``), builds a TensorRT
engine with the ConvCRF plugin library, runs it on a few images (the synthetic scene, or the
PASCAL VOC sample folder when given) and compares with PyTorch on the CPU: maximum absolute
error of the probabilities and label agreement. Exits 0 when both are within tolerance.

    python scripts/validate_tensorrt.py --plugin build/plugins/tensorrt/libconvcrf_trt_plugin.so
    python scripts/validate_tensorrt.py --fp16 --atol 2e-2 --min-agreement 0.99
    python scripts/validate_tensorrt.py --images /path/to/pascal-voc-sample --workdir /tmp/trt

Needs: ``pip install "/path/to/convcrf-deploy[torch,tensorrt]"`` (your checkout), the plugin library (``--plugin``,
``$CONVCRF_TRT_PLUGIN`` or the installed copy). Nothing here ran in the authors' CI, which has
no GPU; please report the printed numbers with your GPU and TensorRT version.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np


def _images(folder: Path | None, count: int, height: int, width: int) -> list[np.ndarray]:
    """float32 [1, 3, H, W] RGB 0..255 frames."""
    if folder is not None:
        from convcrf_deploy.data.folder import read_image

        paths = sorted(folder.glob("*_0img.png")) or sorted(folder.glob("*.png")) + sorted(folder.glob("*.jpg"))
        if not paths:
            raise SystemExit(f"no images in {folder}")
        import cv2

        frames = []
        for path in paths[:count]:
            rgb = cv2.resize(read_image(path), (width, height), interpolation=cv2.INTER_AREA)
            frames.append(rgb.transpose(2, 0, 1)[None].astype(np.float32))
        return frames
    from convcrf_deploy.data.scenes import SyntheticScene

    scene = SyntheticScene(height=height, width=width, seed=0)
    return [scene.render(t * 7)[0].transpose(2, 0, 1)[None].astype(np.float32) for t in range(count)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plugin", help="libconvcrf_trt_plugin.so")
    parser.add_argument("--flavor", default="plugin", choices=("plugin", "single-file"),
                        help="export flavour (the builder strips single-file's standard-op "
                             "bodies, so both must build with the plugin)")
    parser.add_argument("--fp16", action="store_true", help="export with fp16 ConvCRF/unary I/O")
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--images", type=Path, help="folder of images (default: synthetic scene)")
    parser.add_argument("--count", type=int, default=4, help="number of images")
    parser.add_argument("--workdir", type=Path, help="keep the ONNX and engine here")
    parser.add_argument("--atol", type=float, default=None,
                        help="max abs probability error allowed (default 1e-3, fp16 2e-2)")
    parser.add_argument("--min-agreement", type=float, default=0.999,
                        help="minimum fraction of pixels with equal labels (default 0.999)")
    args = parser.parse_args(argv)
    atol = args.atol if args.atol is not None else (2e-2 if args.fp16 else 1e-3)

    from convcrf_deploy.runtime.backends.trt import TensorRTBackend
    from convcrf_deploy.tensorrt import (EngineBuildError, PluginLibraryError,
                                         TensorRTUnavailableError, build_engine,
                                         find_plugin_library, import_tensorrt)

    try:
        trt = import_tensorrt()
        library = find_plugin_library(args.plugin)
        from convcrf_deploy.cli.export import main as export_main
        from convcrf_deploy.runtime.backends.torch import TorchBackend
    except (TensorRTUnavailableError, PluginLibraryError, ImportError) as exc:
        print(f"validate_tensorrt: {exc}", file=sys.stderr)
        return 2

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="convcrf-trt-"))
    workdir.mkdir(parents=True, exist_ok=True)
    onnx_path = workdir / f"demo-{args.flavor}{'-fp16' if args.fp16 else ''}.onnx"
    export_args = ["demo", "-o", str(onnx_path), "--flavor", args.flavor]
    if args.fp16:
        export_args.append("--fp16")
    print(f"[1/4] convcrf-export {' '.join(export_args)}")
    if export_main(export_args) != 0:
        print("export failed", file=sys.stderr)
        return 1

    shape = f"1x3x{args.height}x{args.width}"
    print(f"[2/4] build engine (TensorRT {trt.__version__}, plugin {library}, profile {shape})")
    try:
        # Fails unless every ConvCRF node became a plugin layer; prints which implementation.
        engine_path = build_engine(onnx_path, workdir / (onnx_path.stem + ".engine"),
                                   plugin_library=library, opt_shape=shape,
                                   report=lambda line: print(f"      {line}"))
    except (PluginLibraryError, EngineBuildError) as exc:
        print(f"validate_tensorrt: {exc}", file=sys.stderr)
        return 1

    frames = _images(args.images, args.count, args.height, args.width)
    print(f"[3/4] run {len(frames)} image(s) of {shape} in TensorRT and PyTorch (CPU)")
    worst, agree, total = 0.0, 0, 0
    with TensorRTBackend(engine_path, plugin_library=library) as trt_backend, \
            TorchBackend("demo", device="cpu") as torch_backend:
        for frame in frames:
            got = trt_backend.infer({"image": frame})
            ref = torch_backend.infer({"image": frame})
            worst = max(worst, float(np.abs(got["probabilities"] - ref["probabilities"]).max()))
            agree += int((got["labels"] == ref["labels"]).sum())
            total += ref["labels"].size
        times = trt_backend.last_inference_time
    agreement = agree / total
    print(f"[4/4] max |p_trt - p_torch| = {worst:.3g} (tolerance {atol:g}); label agreement "
          f"{agreement:.5f} (minimum {args.min_agreement}); last TensorRT inference {times * 1e3:.2f} ms "
          "(includes copies; use convcrf-bench for timing)")
    ok = worst <= atol and agreement >= args.min_agreement
    print("PASS" if ok else "FAIL", f"(files in {workdir})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
