"""``convcrf-bench``: latency of the unary, the CRF and the whole model per backend, or a sweep
of CRF settings (a thin layer over :mod:`convcrf_deploy.benchmarking`).

Examples::

    convcrf-bench demo                                       # torch + onnxruntime, 2 sizes
    convcrf-bench model.pt --backends torch,onnxruntime,tensorrt --sizes 640x480 --batch 4
    convcrf-bench demo --threads 2 --json bench.json --plot bench.png
    convcrf-bench demo --sweep --filter-sizes 5,7,11 --blurs 2,4,8 --crf-iterations 1,3,5
    convcrf-bench model.pt --sweep --frames path/to/labelled/folder --size 500x375
    convcrf-bench demo --backends onnxruntime --crf-executor graph   # the graph's own CRF
    convcrf-bench demo --sweep --backends onnxruntime --warm-start-iterations 1,2   # native
    convcrf-bench demo --threads 2 --sizes 320x240 --int8 --calibration frames/

Sizes are WIDTHxHEIGHT. All variants of one run are timed interleaved, so compare the ratios
of one run ("vs torch": PyTorch eager median / backend median), not figures across runs.
Exit status: 0 done, 1 a backend failed, 2 bad arguments or model, 3 no requested backend can
run here (a missing library: the message gives the pip command).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..benchmarking import MAX_BENCH_SIDE
from ..files import JSON_SUFFIXES, check_output_paths, write_text_atomic
from ..install import TORCH_HINT, MissingDependencyError, install_hint
from ..runtime.backends.base import CRF_EXECUTOR_CHOICES
from .harness import (ExitCode, PlainHelpFormatter, UsageError, add_model_loading_arguments,
                      command, float_in, frame_size, frame_sizes, int_at_least, int_list,
                      load_model_argument, positive_int, report_stream)

PROG = "convcrf-bench"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=PlainHelpFormatter)
    parser.add_argument("model", help="checkpoint path (convcrf_deploy.save_model), 'demo', or a "
                                      "unary saved as a torch.export program (.pt2) or "
                                      "TorchScript")
    parser.add_argument("--backends",
                        help="comma-separated: torch, onnxruntime, tensorrt (default: "
                             "torch,onnxruntime; with --sweep one of torch (default), "
                             "onnxruntime: whose CRF the sweep runs)")
    parser.add_argument("--crf-executor", choices=CRF_EXECUTOR_CHOICES, default="auto",
                        help="onnxruntime: who runs the CRF: native (the native library, the "
                             "unary in ONNX Runtime) or graph (the exported graph's own CRF); "
                             "default auto: native when possible. The 'frame' stage and the "
                             "frame time table split each backend's frame into pre-processing, "
                             "unary, CRF and post-processing")
    parser.add_argument("--sizes", default="320x240,640x480",
                        type=frame_sizes(8, MAX_BENCH_SIDE),
                        help="comma-separated WIDTHxHEIGHT (default: 320x240,640x480)")
    parser.add_argument("--batch", type=positive_int, default=1, help="images per call (default 1)")
    parser.add_argument("--iterations", type=positive_int, default=20,
                        help="timed calls per stage and size (default 20)")
    parser.add_argument("--warmup", type=int_at_least(0), default=3,
                        help="untimed calls first (default 3)")
    parser.add_argument("--fp16", action="store_true",
                        help="fp16 exports for ONNX Runtime/TensorRT (torch runs fp32)")
    parser.add_argument("--threads", type=positive_int,
                        help="intra-op threads of torch and ONNX Runtime (default: theirs)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda")
    parser.add_argument("--flavor", choices=("single-file", "portable"), default="single-file",
                        help="ONNX flavour timed in ONNX Runtime (default single-file)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write all figures as JSON")
    parser.add_argument("--plot", type=Path, metavar="FILE.png",
                        help="bar chart of latency per stage and backend (needs matplotlib)")
    parser.add_argument("--crf-references", type=lambda text: [t.strip() for t in text.split(",")
                                                               if t.strip()],
                        default=[], metavar="NAMES",
                        help="also time CPU reference CRFs on the same inputs, interleaved with "
                             "the CRF stage: unfold (pure-PyTorch F.unfold ConvCRF), fullcrf "
                             "(FullCRF, pydensecrf2: the [fullcrf] extra); e.g. unfold,fullcrf")
    add_model_loading_arguments(parser)
    int8 = parser.add_argument_group("INT8 unary vs fp32 (ONNX Runtime)")
    int8.add_argument("--int8", action="store_true",
                      help="also time an INT8-unary export (row onnxruntime-int8) beside fp32 "
                           "ONNX Runtime and PyTorch, and measure its label agreement with "
                           "fp32 and accuracy on --frames (default: demo scenes)")
    int8.add_argument("--calibration", type=Path, metavar="DIR",
                      help="with --int8: a folder of at least 8 calibration frames")
    sweep = parser.add_argument_group("sweep of CRF settings (torch or onnxruntime: --backends)")
    sweep.add_argument("--sweep", action="store_true",
                       help="time the CRF and its quality gain over the unary per setting")
    sweep.add_argument("--filter-sizes", type=int_list, help="e.g. 5,7,11 (default: the model's)")
    sweep.add_argument("--blurs", type=int_list, help="e.g. 2,4,8 (default: the model's)")
    sweep.add_argument("--crf-iterations", type=int_list,
                       help="mean-field iterations, e.g. 1,3,5 (default: the model's)")
    sweep.add_argument("--warm-start-iterations", type=int_list, metavar="K,...",
                       help="also each setting warm-started (video: from the previous frame's "
                            "result) with K iterations, e.g. 1,2; the frames are then a clip "
                            "(consecutive demo frames, or the folder's in order)")
    sweep.add_argument("--warm-start-mix", type=float_in(0.0, 1.0, include_high=True),
                       default=0.5,
                       help="weight of the previous frame's result in a warm start (default 0.5)")
    sweep.add_argument("--frames", default="demo",
                       help="labelled folder (LabelledFolder layouts) or 'demo' (synthetic "
                            "scenes with ground truth; default)")
    sweep.add_argument("--num-frames", type=positive_int, default=8,
                       help="frames for the quality figures (default 8)")
    sweep.add_argument("--size", default="320x240", type=frame_size(8, maximum=MAX_BENCH_SIDE),
                       help="WIDTHxHEIGHT of the latency input and demo frames (default 320x240)")
    return parser


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from .. import benchmarking as bench
        from ..model import CheckpointError  # imports torch
    except ImportError as exc:
        raise MissingDependencyError(f"convcrf-bench needs torch ({exc}): {TORCH_HINT}") \
            from exc
    sweep_only = [flag for flag, value in (("--filter-sizes", args.filter_sizes),
                                           ("--blurs", args.blurs),
                                           ("--crf-iterations", args.crf_iterations),
                                           ("--warm-start-iterations",
                                            args.warm_start_iterations))
                  if value is not None]
    if sweep_only and not args.sweep:
        raise UsageError(f"{', '.join(sweep_only)} only apply with --sweep")
    if args.int8 and args.calibration is None:
        raise UsageError("--int8 needs --calibration DIR: a folder of at least 8 frames from "
                         "the camera the model will run on")
    if args.calibration is not None and not args.int8:
        raise UsageError("--calibration applies to --int8 only")
    if args.int8 and args.sweep:
        raise UsageError("--int8 applies to the latency benchmark, not to --sweep")
    if args.sweep and args.crf_references:
        raise UsageError("--crf-references applies to the latency benchmark, not to --sweep")
    if args.sweep and args.plot is not None:
        raise UsageError("--plot draws the latency benchmark; use --json with --sweep")
    if args.sweep and args.crf_executor == "graph":
        raise UsageError("--crf-executor graph: the sweep varies the CRF's settings, which an "
                         "exported graph fixes; the sweep runs the native CRF (--backends "
                         "onnxruntime) or PyTorch's")
    try:
        check_output_paths({"--json": args.json, "--plot": args.plot}, {"model": args.model},
                           suffixes={"--plot": bench.PLOT_SUFFIXES, "--json": JSON_SUFFIXES})
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    out = report_stream(args.json)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    model = load_model_argument(args, args.model)
    try:
        if args.sweep:
            backends = bench.normalize_backends((args.backends or "torch").split(","))
            if len(backends) != 1:
                raise UsageError(f"--sweep runs one backend's CRF: pass --backends torch or "
                                 f"--backends onnxruntime, not {','.join(backends)}")
            result = bench.sweep_crf(
                model, filter_sizes=args.filter_sizes, blurs=args.blurs,
                crf_iterations=args.crf_iterations,
                warm_start_iterations=args.warm_start_iterations,
                warm_start_mix=args.warm_start_mix, backend=backends[0], frames=args.frames,
                size=tuple(args.size), num_frames=args.num_frames,
                iterations=args.iterations, warmup=args.warmup, threads=args.threads,
                allow_pickle=args.allow_pickle, log=log)
            table = bench.format_sweep(result)
        else:
            backends = bench.normalize_backends((args.backends or "torch,onnxruntime")
                                                .split(","))
            sizes = [tuple(size) for size in args.sizes]
            if args.plot is not None:
                _check_matplotlib()
            result = bench.benchmark_model(
                model, backends=backends, sizes=sizes, batch=args.batch,
                iterations=args.iterations, warmup=args.warmup, fp16=args.fp16,
                threads=args.threads, device=args.device, flavor=args.flavor,
                allow_pickle=args.allow_pickle, crf_references=args.crf_references,
                crf_executor=args.crf_executor,
                int8_calibration=args.calibration if args.int8 else None,
                quality_frames=args.frames, num_quality_frames=args.num_frames, log=log)
            table = bench.format_benchmark(result)
    except MissingDependencyError:
        raise
    except (CheckpointError, ValueError, OSError) as exc:
        raise UsageError(str(exc)) from None
    result["model"] = str(args.model)
    print(table, file=out)
    if args.json is not None:
        from ..evaluation import json_safe
        write_text_atomic(args.json, json.dumps(json_safe(result), indent=2) + "\n")
        print(f"wrote {args.json}", file=out)
    if args.plot is not None and not args.sweep:
        print(f"wrote {bench.plot_benchmark(result, args.plot)}", file=out)
    return ExitCode.OK


def _check_matplotlib() -> None:
    """Fail before the (long) benchmark rather than after it when --plot cannot work."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(f"--plot needs matplotlib ({exc}); install it with "
                                     f"{install_hint('plot')}") from exc


if __name__ == "__main__":
    sys.exit(main())
