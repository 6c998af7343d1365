"""``convcrf-triton``: write a Triton Inference Server model repository for an exported model
(Triton is an export target on the server side; a thin layer over
:mod:`convcrf_deploy.serving.repository`, docs/serving.md).

Examples::

    convcrf-triton model.onnx -o repo/                       # CPU: Python backend + our runtime
    convcrf-triton model.onnx -o repo/ --max-batch 16 --instances 2 --input-dtype float32
    convcrf-triton model.plugin.onnx -o repo/ --onnxruntime  # onnxruntime backend + our custom ops
    convcrf-triton model.onnx -o repo/ --engine model.engine \\
        --plugin libconvcrf_trt_plugin_static_reg.so --min 1x3x240x320 --max 8x3x240x320

MODEL is the ONNX file from convcrf-export (any flavour for the CPU and ONNX Runtime models; the
plugin flavour needs the custom-op library libconvcrf_ort_ops; the one the engine was built from
with --engine). The command prints the tritonserver command line that serves the repository.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..files import cannot_create_in
from ..progress import Progress
from .harness import (CommandError, ExitCode, UsageError, command, frame_size, int_at_least,
                      positive_int)


def _shape(text: str) -> tuple[int, int, int, int]:
    from ..tensorrt.profiles import parse_shape  # torch- and tensorrt-free

    try:
        return parse_shape(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convcrf-triton", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="ONNX file exported by convcrf-export")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="REPO",
                        help="model repository folder (created; other models in it are kept)")
    parser.add_argument("--name", default="convcrf", help="model name in the repository "
                        "(clients' --model; default convcrf)")
    parser.add_argument("--max-batch", type=positive_int, default=8, metavar="N",
                        help="max_batch_size: largest batch the dynamic batcher forms (default 8)")
    parser.add_argument("--instances", type=positive_int, default=1, metavar="N",
                        help="model instances (per GPU with --engine; default 1)")
    parser.add_argument("--queue-delay-us", type=int_at_least(0), default=2000, metavar="US",
                        help="how long a request may wait for others to batch with (default 2000)")
    parser.add_argument("--force", action="store_true",
                        help="replace REPO/NAME when convcrf-triton wrote it (never other files)")
    cpu = parser.add_argument_group("CPU model (Python backend, without --engine)")
    cpu.add_argument("--input-dtype", choices=("uint8", "float32"), default=None,
                     help="type of the 'image' frames clients send (default uint8: 4x fewer bytes)")
    cpu.add_argument("--threads", type=positive_int, default=1,
                     help="ONNX Runtime threads per instance (default 1; scale with --instances; "
                          "also with --onnxruntime)")
    cpu.add_argument("--max-frame-size", type=frame_size(1, "1920x1080"), default="3840x2160",
                     metavar="WxH",
                     help="refuse frames with more pixels than this (default 3840x2160)")
    onnxrt = parser.add_argument_group(
        "ONNX Runtime model (onnxruntime backend; written and schema-checked, untested on a server)")
    onnxrt.add_argument("--onnxruntime", action="store_true",
                        help="write an onnxruntime-backend model: the server's ONNX Runtime runs "
                             "the graph, its ConvCRF nodes on libconvcrf_ort_ops (declared in "
                             "model_operations)")
    onnxrt.add_argument("--ops-library", type=Path, metavar="LIB",
                        help="libconvcrf_ort_ops as the server sees it (absolute; default: the "
                             "one installed here)")
    onnxrt.add_argument("--gpu", action="store_true",
                        help="KIND_GPU instances, and the CUDA variant of the library by default")
    gpu = parser.add_argument_group("GPU model (TensorRT backend)")
    gpu.add_argument("--engine", type=Path, metavar="ENGINE",
                     help="engine from convcrf-build: writes a tensorrt_plan model instead")
    gpu.add_argument("--plugin", type=Path, metavar="LIB",
                     help="ConvCRF plugin library for the server (the self-registering "
                          "libconvcrf_trt_plugin_static_reg.so); named in the command line")
    gpu.add_argument("--min", type=_shape, metavar="NxCxHxW",
                     help="smallest 'image' shape the engine was built for (convcrf-build --min); "
                          "needed unless TensorRT and a GPU are here to read it from the engine")
    gpu.add_argument("--max", type=_shape, metavar="NxCxHxW",
                     help="largest 'image' shape the engine was built for (convcrf-build --max)")
    gpu.add_argument("--frame-size", type=frame_size(1, "1920x1080"), action="append",
                     metavar="WxH",
                     help="frame size clients send (repeatable; default the model's input size); "
                          "must lie inside the engine's profile")
    return parser


def _check_repository_output(args: argparse.Namespace) -> None:
    """Refuse, before anything is written, a repository path that is a file, and a model
    folder (``REPO/NAME``, replaced with ``--force``) that holds one of the inputs."""
    if args.output.exists() and not args.output.is_dir():
        raise UsageError(f"-o {args.output} is a file; the model repository is a folder")
    for folder in (args.output.absolute(), *args.output.absolute().parents):
        if (folder / "config.pbtxt").is_file():
            # e.g. -o repo/convcrf/1: a model inside another model's folder, which Triton
            # would not load (second new-user trial).
            raise UsageError(f"-o {args.output} lies inside the model folder {folder} (it has "
                             "a config.pbtxt); give the model repository that holds it: -o "
                             f"{folder.parent}")
    existing = next(p for p in (args.output.absolute(), *args.output.absolute().parents)
                    if p.exists())
    reason = cannot_create_in(existing) if existing.is_dir() else "not a folder"
    if reason:    # e.g. /proc (second new-user trial: [Errno 2] after the model was read)
        raise UsageError(f"-o {args.output}: cannot create files in {existing} ({reason}); "
                         "choose a folder you can write to")
    target = (args.output / args.name).resolve()
    for option, path in (("model", args.model), ("--engine", args.engine),
                         ("--plugin", args.plugin),
                         ("--ops-library", args.ops_library)):
        if path is not None and (path.resolve() == target or target in path.resolve().parents):
            raise UsageError(f"{option} {path} lies inside {args.output / args.name}, the model "
                             "folder convcrf-triton writes; copy it elsewhere first")


@command("convcrf-triton")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..serving.repository import (EngineProfile, ModelOptions, RepositoryError,
                                      RepositoryWriteError, server_command,
                                      write_onnxruntime_model, write_python_model,
                                      write_tensorrt_model)

    engine_only = [f"--{n.replace('_', '-')}" for n in ("plugin", "min", "max", "frame_size")
                   if getattr(args, n) is not None]
    if args.engine is None and engine_only:
        raise UsageError(f"{', '.join(engine_only)} only apply with --engine")
    onnxruntime_only = [f"--{n.replace('_', '-')}" for n in ("ops_library", "gpu")
                        if getattr(args, n) not in (None, False)]
    if not args.onnxruntime and onnxruntime_only:
        raise UsageError(f"{', '.join(onnxruntime_only)} only apply with --onnxruntime")
    if args.onnxruntime and args.engine is not None:
        raise UsageError("--onnxruntime and --engine are two kinds of model: choose one")
    if args.onnxruntime and args.input_dtype not in (None, "float32"):
        raise UsageError("the onnxruntime model takes the graph's float32 'image'; "
                         "--input-dtype uint8 applies to the Python-backend model")
    if (args.min is None) != (args.max is None):
        raise UsageError("give both --min and --max (the engine's profile), or neither")
    if args.engine is not None and args.plugin is not None and not args.plugin.is_file():
        raise UsageError(f"--plugin {args.plugin} does not exist")
    _check_repository_output(args)
    try:
        options = ModelOptions(args.name, args.max_batch, args.instances, args.queue_delay_us)
        with Progress(f"convcrf-triton: writing {args.output / args.name}"):
            if args.onnxruntime:
                path = write_onnxruntime_model(args.model, args.output, options,
                                               ops_library=args.ops_library,
                                               threads=args.threads, gpu=args.gpu,
                                               force=args.force)
            elif args.engine is None:
                path = write_python_model(args.model, args.output, options,
                                          input_dtype=args.input_dtype or "uint8",
                                          threads=args.threads,
                                          max_frame_size=(args.max_frame_size.height,
                                                          args.max_frame_size.width),
                                          force=args.force)
            else:
                profile = EngineProfile(args.min, args.max) if args.min is not None else None
                path = write_tensorrt_model(
                    args.model, args.engine, args.output, options, plugin=args.plugin,
                    profile=profile, force=args.force,
                    frame_sizes=[(size.height, size.width)
                                 for size in args.frame_size or ()] or None)
    except RepositoryWriteError as exc:    # written, but not as the server reads it: failed
        raise CommandError(str(exc)) from exc
    except RepositoryError as exc:
        # The model file, the options or the target folder cannot be used as asked (nothing
        # was written): status 2, as for every command's unusable input or refused output.
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise CommandError(f"cannot write {args.output}: {exc}") from exc
    kind = ("onnxruntime backend" if args.onnxruntime else
            "tensorrt_plan" if args.engine else "python backend")
    print(f"wrote {path} ({kind}); serve it with:")
    plugin = args.plugin if args.engine is not None else None
    if args.engine is not None and plugin is None:
        plugin = Path("/path/to/libconvcrf_trt_plugin_static_reg.so")
    print(f"  {server_command(args.output, plugin)}")
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
