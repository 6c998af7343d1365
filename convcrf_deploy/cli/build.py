"""``convcrf-build``: an exported ONNX model to a TensorRT engine with the ConvCRF plugins
(a thin layer over :func:`convcrf_deploy.tensorrt.build_engine`).

Examples::

    convcrf-build model.onnx                                   # -> model.engine (+ .json)
    convcrf-build model.onnx -o model.engine --plugin build/plugins/tensorrt/libconvcrf_trt_plugin.so \\
        --min 1x3x240x320 --opt 1x3x480x640 --max 1x3x720x1280 --timing-cache trt.cache
    convcrf-build model.onnx --cache                           # reuse the engine cache

The ConvCRF is built from the plugin or not at all: the file's ConvCRF function bodies are
stripped before parsing, and a network whose plugin layers do not match the file's ConvCRF
nodes is an error (exit 1) unless --allow-standard-op-crf is given. The tool prints which
implementation the engine has.

Needs the ``tensorrt`` extra (``pip install "/path/to/convcrf-deploy[tensorrt]"``, your checkout)
and an NVIDIA GPU.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..files import check_output_paths
from ..runtime.backends.registry import BACKENDS
from ..tensorrt import (DEFAULT_WORKSPACE_MB, PLUGIN_ENV, EngineBuildError, PluginLibraryError,
                        build_engine, metadata_path_for, parse_shape)
from .harness import CommandError, ExitCode, PlainHelpFormatter, UsageError, command, positive_int


def _shape(text: str) -> str:
    try:
        parse_shape(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convcrf-build", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=PlainHelpFormatter)
    parser.add_argument("model", type=Path, help="ONNX file exported by convcrf-export")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("-o", "--output", type=Path, metavar="ENGINE",
                        help="engine file to write (default: MODEL with suffix .engine)")
    output.add_argument("--cache", action="store_true",
                        help="write to / reuse the engine cache ($CONVCRF_ENGINE_CACHE or "
                             "~/.cache/convcrf-deploy/engines) instead of -o")
    parser.add_argument("--plugin", metavar="LIB",
                        help=f"libconvcrf_trt_plugin.so (default: ${PLUGIN_ENV}, then the "
                             "installed convcrf_deploy/_lib copy)")
    parser.add_argument("--min", type=_shape, metavar="NxCxHxW", help="smallest image shape")
    parser.add_argument("--opt", type=_shape, metavar="NxCxHxW",
                        help="shape to tune for (default: 1x3xHxW of the model's input size)")
    parser.add_argument("--max", type=_shape, metavar="NxCxHxW", help="largest image shape")
    parser.add_argument("--timing-cache", type=Path, metavar="FILE",
                        help="TensorRT timing cache to read and update (faster rebuilds)")
    parser.add_argument("--workspace", type=positive_int, default=DEFAULT_WORKSPACE_MB, metavar="MB",
                        help=f"TensorRT workspace limit in MiB (default {DEFAULT_WORKSPACE_MB})")
    parser.add_argument("--version-compatible", action="store_true",
                        help="version-compatible engine with the plugin library embedded")
    parser.add_argument("--force", action="store_true", help="rebuild even on a cache hit")
    parser.add_argument("--allow-standard-op-crf", action="store_true",
                        help="build even if TensorRT would compute the ConvCRF with standard ops "
                             "instead of the plugin (e.g. a portable-flavour file); by default "
                             "that is an error")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return parser


@command("convcrf-build")
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="convcrf-build: %(message)s")

    if not args.model.is_file():
        raise UsageError(f"ONNX model {str(args.model)!r} does not exist")
    engine_path = None if args.cache else (args.output or args.model.with_suffix(".engine"))
    try:
        check_output_paths(   # convcrf-run and -triton tell an engine by its suffix
            {"-o": engine_path, "--timing-cache": args.timing_cache},
            {"model": args.model, "--plugin": args.plugin},
            suffixes={"-o": BACKENDS["tensorrt"].suffixes})
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        path = build_engine(args.model, engine_path, plugin_library=args.plugin,
                            min_shape=args.min, opt_shape=args.opt, max_shape=args.max,
                            timing_cache=args.timing_cache, workspace_mb=args.workspace,
                            version_compatible=args.version_compatible, force=args.force,
                            allow_standard_op_crf=args.allow_standard_op_crf, report=print)
    except (FileNotFoundError, ValueError) as exc:
        # The model is missing, damaged or inconsistent, or the shapes are bad: an input that
        # cannot be used (status 2, as every command), named before TensorRT is needed.
        raise UsageError(str(exc)) from None
    except (PluginLibraryError, EngineBuildError, OSError) as exc:
        raise CommandError(str(exc)) from exc
    sidecar = metadata_path_for(path)
    print(f"wrote {path}" + (f" (metadata {sidecar.name})" if sidecar.is_file() else ""))
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
