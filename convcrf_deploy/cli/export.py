"""``convcrf-export``: a segmentation model to ONNX, verified against PyTorch
(a thin layer over :func:`convcrf_deploy.export.export_onnx`).

Examples::

    convcrf-export demo                                 # -> demo.single-file.onnx
    convcrf-export model.pt -o model.onnx --flavor portable
    convcrf-export model.pt --flavor plugin --fp16      # for TensorRT with our plugin
    convcrf-export model.pt --static --height 480 --width 640
    convcrf-export model.pt --part crf -o crf.onnx      # logits + image -> probabilities
    convcrf-export model.pt --int8 --calibration frames/   # INT8 unary, fp32 CRF
    convcrf-export --unary unary.onnx --crf crf.pt --metadata meta.json -o model.onnx
    convcrf-export model.pt --fp16 crf                  # fp32 unary, fp16 CRF
    convcrf-export unet.pt --pad-multiple 32            # a network that needs multiples of 32
    convcrf-export tv.pt --output-key out               # logits in the unary's output["out"]

Your own network: its unary may return a tensor, a tuple (first element), a dict ("out",
"logits" or --output-key) or an object with .logits, at any resolution (resized to the input
inside the graph). Input constraints (sizes it needs) are detected by probing sizes unless
--pad-multiple/--min-size give them; they are written to the file, and the runtime pads
frames to them.

Your ONNX unary (mmsegmentation, tf2onnx, a vendor, torch.onnx): --unary attaches the CRF to
it (one image input, NCHW or NHWC, float or uint8; one logits output at any resolution); the
CRF from --crf/--crf-config, classes and normalisation from --metadata/--class-names/--mean/
--std. The file is verified against the unary run in ONNX Runtime + our PyTorch ConvCRF.

Flavours: single-file (default: ConvCRF nodes with standard-op bodies; ONNX Runtime runs it,
convcrf-build strips the bodies so TensorRT uses the plugin), plugin (ConvCRF nodes only;
TensorRT / ORT TensorRT EP), portable (standard ONNX only). Exit status: 0 verified, 1 parity
check failed, 2 bad input or export error, 3 a library is missing.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..export import DEFAULT_FLAVOR, DEFAULT_OPSET, FLAVORS, MAX_OPSET, MIN_OPSET, PARTS
from ..install import TORCH_HINT, MissingDependencyError
from ..runtime.backends.registry import BACKENDS
from .harness import (CommandError, ExitCode, PlainHelpFormatter, UsageError,
                      add_model_loading_arguments, command, float_in, int_at_least,
                      load_model_argument, unary_settings)

#: --fp16 values: bare --fp16 is "all" (unary and CRF), --fp16 crf the CRF only.
FP16_MODES = ("all", "crf")


def _opset(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not MIN_OPSET <= value <= MAX_OPSET:
        raise argparse.ArgumentTypeError(f"supported opsets are {MIN_OPSET}..{MAX_OPSET}, "
                                         f"got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convcrf-export", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=PlainHelpFormatter)
    parser.add_argument("model", nargs="?",
                        help="checkpoint (save_model or a CRF-only checkpoint), 'demo', "
                             "or a unary saved as a torch.export program (.pt2) or "
                             "TorchScript (not with --unary)")
    parser.add_argument("--unary", type=Path, metavar="UNARY.onnx",
                        help="attach the CRF to this ONNX unary network instead (CRF and "
                             "metadata from the options below)")
    parser.add_argument("-o", "--output", type=Path, metavar="OUT.onnx",
                        help="file to write (default: <model>.<flavor>.onnx; with --unary "
                             "<unary>.crf.<flavor>.onnx)")
    parser.add_argument("--flavor", choices=FLAVORS, default=DEFAULT_FLAVOR,
                        help="how the ConvCRF ops are represented (default: single-file)")
    parser.add_argument("--fp16", nargs="?", const="all", choices=FP16_MODES, default=None,
                        help="FLOAT16 unary and ConvCRF op I/O (graph I/O stays float32); "
                             "--fp16 crf: the ConvCRF op I/O only, the unary stays fp32")
    parser.add_argument("--opset", type=_opset, metavar="N",
                        help=f"standard ONNX opset, {MIN_OPSET}..{MAX_OPSET} (default "
                             f"{DEFAULT_OPSET})")
    parser.add_argument("--height", type=int_at_least(2),
                        help="with --static the fixed input height, else the height the parity "
                             "check runs at (the graph accepts any size); at most 4096")
    parser.add_argument("--width", type=int_at_least(2), help="likewise the width")
    parser.add_argument("--static", action="store_true",
                        help="fix H and W (default: dynamic N, H, W)")
    parser.add_argument("--part", choices=PARTS, default=None,
                        help="full (default; crf for a CRF-only checkpoint), unary "
                             "(image -> logits) or crf (logits, image -> probabilities)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the checker and the parity check against PyTorch")
    parser.add_argument("--pad-multiple", type=int_at_least(1), metavar="N",
                        help="the unary needs height and width multiples of N (e.g. 32 for a "
                             "U-Net of output stride 32); default: from the checkpoint, else "
                             "detected by running the unary at a few sizes")
    parser.add_argument("--min-size", type=int_at_least(1), metavar="N",
                        help="the unary needs height and width of at least N px (e.g. 32 for "
                             "a Segformer); default: as --pad-multiple")
    parser.add_argument("--output-key", metavar="KEY",
                        help="the unary returns a dict (or object): its logits are under KEY "
                             "(default: 'out', then 'logits'); with --unary the name of the "
                             "ONNX output holding the logits when it has several")
    parser.add_argument("--verify-memory", type=float_in(0.1, 1024), default=2.0, metavar="GB",
                        help="memory the parity check may take (default 2 GiB): larger sizes "
                             "are verified at batch 1, dynamic graphs at a smaller size")
    add_model_loading_arguments(parser)
    int8 = parser.add_argument_group("INT8 unary (docs/export.md)")
    int8.add_argument("--int8", action="store_true",
                      help="quantise the unary network to INT8 (static QDQ, per-channel "
                           "weights), calibrated on --calibration frames; the CRF stays fp32 "
                           "(fp16 with --fp16). Verified by label agreement with the float graph")
    int8.add_argument("--calibration", type=Path, metavar="DIR",
                      help="with --int8: a folder of at least 8 frames (.png/.jpg) from the "
                           "camera the model will run on (at most 64 are used)")
    int8.add_argument("--reduce-range", action="store_true",
                      help="with --int8: 7-bit weights, for x86-64 CPUs without VNNI (AVX2 only)")
    return parser


@command("convcrf-export")
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_fp16_value_explicit(argv))
    if (args.height is None) != (args.width is None):
        parser.error("give both --height and --width, or neither")
    if (args.model is None) == (args.unary is None):
        parser.error("give a model (checkpoint, 'demo', .pt2) or --unary UNARY.onnx, not both"
                     if args.model else "give a model (checkpoint, 'demo', .pt2) or --unary "
                     "UNARY.onnx")
    fp16 = {None: False, "all": True, "crf": "crf"}[args.fp16]
    verify_memory = int(args.verify_memory * 1024 ** 3)
    if args.int8 and args.calibration is None:
        parser.error("--int8 needs --calibration DIR: a folder of at least 8 frames from the "
                     "camera the model will run on")
    for flag, value in (("--calibration", args.calibration), ("--reduce-range",
                                                              args.reduce_range)):
        if value and not args.int8:
            parser.error(f"{flag} applies to --int8 exports only")
    if args.int8 and args.part == "crf":
        parser.error("--int8 quantises the unary network; --part crf has none")

    try:
        from ..export import export_onnx
        from ..model import ConvCRF
    except ImportError as exc:
        raise MissingDependencyError(f"{exc}; the exporter needs torch, onnx, onnxscript and "
                                     f"onnxruntime ({TORCH_HINT})") from exc
    if args.unary is not None:
        return _attach(parser, args, fp16, verify_memory)
    output = args.output or default_output(args.model,
                                           args.flavor + (".int8" if args.int8 else ""))
    from ..files import OutputPathError, check_output_paths
    try:
        # convcrf-run, -bench and -triton tell an ONNX file by its suffix.
        check_output_paths({"-o": output}, {"model": args.model},
                           suffixes={"-o": BACKENDS["onnxruntime"].suffixes})
    except OutputPathError as exc:
        raise UsageError(str(exc)) from None
    model = load_model_argument(args, args.model, crf_only=True, traceable=True)
    part = args.part or ("crf" if isinstance(model, ConvCRF) else "full")
    return _report(lambda: export_onnx(
        model, output, flavor=args.flavor, fp16=fp16, opset=args.opset, height=args.height,
        width=args.width, static=args.static, part=part, verify=not args.no_verify,
        verify_memory=verify_memory, int8=args.int8, calibration=args.calibration,
        reduce_range=args.reduce_range, pad_multiple=args.pad_multiple,
        min_size=args.min_size, output_key=args.output_key),
        output, mismatch="the exported graph does not match PyTorch")


def _report(export, output: Path, mismatch: str) -> int:
    """Run ``export`` (returning an ExportReport), print its summary, turn failures into the
    harness's errors: a failed or mismatching verification leaves ``output`` as it was."""
    from ..export import ExportError
    from ..export.verify import VerificationError
    try:
        report = export()
    except MissingDependencyError:
        raise                                   # status 3 (the harness), before ExportError
    except VerificationError as exc:
        raise CommandError(f"verification failed: {exc}; {output} was left as it was, the "
                           "failing graph is beside it (.failed-verification.onnx)") from exc
    except (ExportError, ValueError, OSError) as exc:
        raise UsageError(str(exc)) from None
    print(report.summary())
    if not report.ok:
        what = ("the INT8 graph does not agree with the float graph" if report.verification
                is None or report.verification.passed else mismatch)
        raise CommandError(f"{what} (see above); {output} was left as it was, and the failing "
                           f"graph written for inspection to {report.path}")
    return ExitCode.OK


def _attach(parser: argparse.ArgumentParser, args: argparse.Namespace, fp16,
            verify_memory: int) -> int:
    """``--unary``: the CRF attached to an ONNX unary (:func:`convcrf_deploy.export.attach_crf`)."""
    from ..export import attach_crf
    from ..files import OutputPathError, check_output_paths
    if args.part == "crf":
        parser.error("--part crf exports a CRF checkpoint alone (convcrf-export CRF.pt --part "
                     "crf); with --unary choose full or unary")
    for flag, given in (("--import", args.imports), ("--allow-pickle", args.allow_pickle)):
        if given:
            parser.error(f"{flag} applies to checkpoints; an ONNX unary runs no Python code")
    output = args.output or args.unary.with_name(
        f"{args.unary.stem}.crf.{args.flavor}{'.int8' if args.int8 else ''}.onnx")
    inputs = {"--unary": args.unary}
    if args.crf and args.crf.lower() != "none":
        inputs["--crf"] = args.crf
    try:
        check_output_paths({"-o": output}, inputs)
    except OutputPathError as exc:
        raise UsageError(str(exc)) from None
    return _report(lambda: attach_crf(
        args.unary, output, settings=unary_settings(args), flavor=args.flavor, fp16=fp16,
        opset=args.opset, height=args.height, width=args.width, static=args.static,
        part=args.part or "full", verify=not args.no_verify, verify_memory=verify_memory,
        int8=args.int8, calibration=args.calibration, reduce_range=args.reduce_range,
        logits_output=args.output_key, pad_multiple=args.pad_multiple, min_size=args.min_size),
        output, mismatch="the attached graph does not match the unary in ONNX Runtime + the "
                         "PyTorch ConvCRF")


def _fp16_value_explicit(argv: list[str] | None) -> list[str]:
    """``--fp16`` takes an optional value (``--fp16 crf``); so that ``--fp16 model.pt`` still
    means the whole graph in fp16 and the model ``model.pt``, a bare ``--fp16`` followed by
    anything but a value is written ``--fp16=all`` before parsing."""
    import sys
    argv = list(sys.argv[1:] if argv is None else argv)
    return [("--fp16=all" if token == "--fp16" and (index + 1 == len(argv) or
                                                    argv[index + 1] not in FP16_MODES)
             else token) for index, token in enumerate(argv)]


def default_output(model: str, flavor: str) -> Path:
    """``<model>.<flavor>.onnx`` next to a checkpoint; ``demo.<flavor>.onnx`` here."""
    if model == "demo":
        return Path(f"demo.{flavor}.onnx")
    path = Path(model)
    return path.with_name(f"{path.stem}.{flavor}.onnx")


if __name__ == "__main__":
    raise SystemExit(main())
