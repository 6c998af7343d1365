"""``convcrf-seal``: check an exported model you changed on purpose (e.g. with onnxsim or
onnxslim) against the original export, and write it with a fresh digest (a thin layer over
:func:`convcrf_deploy.export.reseal.reseal`).

Examples::

    onnxslim model.onnx model.slim.onnx
    convcrf-seal model.slim.onnx --original model.onnx -o model.sealed.onnx
    convcrf-run --model model.sealed.onnx --video cam0

Every reader refuses a changed file as "damaged": its digest covers the graph, the weights and
the convcrf metadata. This command checks that the changed file still carries the ConvCRF (the
same ConvCRF nodes, or for the portable flavour a CRF part that computes the same), keeps the
graph's input and output names, and gives the original's outputs (within the export's parity
criteria) on test images in ONNX Runtime; then it writes it with the original's metadata and a
new digest. The output is never one of the inputs, and nothing is written when a check fails
(exit 1). Needs onnx and onnxruntime, not torch.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .harness import CommandError, ExitCode, PlainHelpFormatter, UsageError, command, frame_size


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convcrf-seal", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=PlainHelpFormatter)
    parser.add_argument("changed", type=Path, metavar="CHANGED.onnx",
                        help="the export after your tool (optimiser, converter)")
    parser.add_argument("--original", type=Path, required=True, metavar="EXPORTED.onnx",
                        help="the file convcrf-export wrote (its digest must match)")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.onnx",
                        help="the re-sealed file to write (not one of the inputs)")
    parser.add_argument("--size", type=frame_size(2, "320x240"), metavar="WxH",
                        help="size of the test images (default: the graph's fixed size, else "
                             "the model's input size, at most 640 per side)")
    return parser


@command("convcrf-seal")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..export.reseal import ResealError, reseal

    for option, path in (("CHANGED.onnx", args.changed), ("--original", args.original)):
        if not path.is_file():
            raise UsageError(f"{option} {path} does not exist")
    try:
        report = reseal(args.changed, args.original, args.output, report=print,
                        size=(args.size.height, args.size.width) if args.size else None)
    except ResealError as exc:
        raise CommandError(str(exc)) from None
    except ValueError as exc:        # a damaged or foreign original, a path refused, not ONNX
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise CommandError(f"cannot write {args.output}: {exc}") from None
    print(report.summary())
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
