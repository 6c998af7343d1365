"""``convcrf-eval``: segmentation quality of CRFs and models on labelled images.

    convcrf-eval synthetic --data DIR [--filter-sizes 5,7,11,13] [--seeds N] [--blur 4]
                           [--json FILE] [--max-images N] [--scale S]
        The paper's Table 1: a noisy unary made from the ground truth, refined by ConvCRF
        (hand-set parameters) at each filter size and by FullCRF (same parameters) when
        pydensecrf is installed (the [fullcrf] extra), with each CRF's
        speed-up over FullCRF timed in the same run.

    convcrf-eval dataset MODEL --data DIR [--json FILE] [--max-images N] [--scale S]
        A trained model (checkpoint path or "demo") with and without its CRF.

DIR is a folder of NAME_0img.png / NAME_5labels.png pairs or a PASCAL VOC 2012 root
(``--split val`` to use ImageSets/Segmentation/val.txt).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from ..files import JSON_SUFFIXES, check_output_paths, write_text_atomic
from ..install import TORCH_HINT, MissingDependencyError
from .harness import (ExitCode, PlainHelpFormatter, UsageError, add_model_loading_arguments,
                      command, load_model_argument, positive_float, positive_int,
                      report_stream)
from ..metrics import MIOU_LEGEND


def _filter_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated odd integers, got {text!r}")
    if not sizes or any(k < 1 or k % 2 == 0 for k in sizes):
        raise argparse.ArgumentTypeError(f"filter sizes must be odd and >= 1, got {text!r}")
    return sizes


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path,
                        help="folder of NAME_0img.png + NAME_5labels.png pairs, or a VOC 2012 root")
    parser.add_argument("--split", default=None,
                        help="VOC only: ImageSets/Segmentation list to use (e.g. val)")
    parser.add_argument("--max-images", type=positive_int, default=None,
                        help="evaluate only the first N images")
    parser.add_argument("--scale", type=positive_float, default=1.0,
                        help="resize images by this factor first (default 1: full resolution)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (it is drawn only on a terminal anyway)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convcrf-eval", description=__doc__.split("\n\n")[0],
        formatter_class=PlainHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    synthetic = commands.add_parser(
        "synthetic", formatter_class=PlainHelpFormatter, help="the paper's Table 1 (noisy ground truth as unary)",
        description="The ConvCRF paper's synthetic task: the ground truth is down-sampled 8x, "
                    "20%% of the low-resolution cells get random labels, and the up-sampled "
                    "result is the unary that each CRF has to clean up.")
    _add_data_arguments(synthetic)
    synthetic.add_argument("--filter-sizes", type=_filter_sizes, default=[5, 7, 11, 13],
                           help="ConvCRF filter sizes (default 5,7,11,13)")
    synthetic.add_argument("--seeds", type=positive_int, default=1,
                           help="noise draws per image (default 1)")
    synthetic.add_argument("--blur", type=positive_int, default=4, help="ConvCRF blur (default 4)")
    synthetic.add_argument("--iterations", type=int, default=5,
                           help="mean-field iterations (default 5)")
    synthetic.add_argument("--num-classes", type=positive_int, default=21,
                           help="classes of the labels (default 21, PASCAL VOC)")
    synthetic.add_argument("--crf", type=Path, action="append", default=[],
                           help="also evaluate a trained CRF-only checkpoint (convcrf-train crf "
                                "--synthetic --out); repeatable")
    synthetic.add_argument("--no-fullcrf", action="store_true",
                           help="skip FullCRF even when pydensecrf is installed (extra [fullcrf], "
                                "package pydensecrf2)")

    dataset = commands.add_parser(
        "dataset", formatter_class=PlainHelpFormatter, help="a trained model with and without its CRF")
    dataset.add_argument("model", help="checkpoint path (convcrf_deploy.save_model), 'demo', or "
                                       "a unary saved as a torch.export program (.pt2) or "
                                       "TorchScript")
    _add_data_arguments(dataset)
    add_model_loading_arguments(dataset)
    return parser


def _run(args: argparse.Namespace) -> dict:
    from ..data.folder import LabelledFolder
    from ..evaluation import evaluate_model, evaluate_synthetic

    if args.command == "synthetic":
        folder = LabelledFolder(args.data, split=args.split, num_classes=args.num_classes,
                                max_images=args.max_images)
        crfs = {}
        if args.crf:
            from ..model.checkpoint import load_crf
            for path in args.crf:
                crf = load_crf(path)
                if crf.config.num_classes != args.num_classes:
                    raise ValueError(f"{path}: the CRF has {crf.config.num_classes} classes, "
                                     f"the data {args.num_classes} (--num-classes)")
                crfs[f"trained:{path.name}"] = crf.eval()
        return evaluate_synthetic(folder, num_classes=args.num_classes,
                                  filter_sizes=args.filter_sizes, seeds=args.seeds,
                                  blur=args.blur, iterations=args.iterations,
                                  fullcrf=not args.no_fullcrf, crfs=crfs, scale=args.scale,
                                  progress=False if args.quiet else None)
    from ..data.folder import DatasetError

    model = load_model_argument(args, args.model)
    folder = LabelledFolder(args.data, split=args.split, num_classes=model.num_classes,
                            max_images=args.max_images)
    try:
        result = evaluate_model(model, folder, scale=args.scale,
                                progress=False if args.quiet else None)
    except DatasetError as error:
        if not _about_classes(error):   # an unreadable file is not the wrong data set
            raise
        raise DatasetError(f"{error}; the model {args.model} has {model.num_classes} classes "
                           f"{model.metadata.class_names}: is this its data set?") from None
    result["model"] = str(args.model)
    return result


def _about_classes(error: Exception) -> bool:
    """Whether a data-set error is about label values the model's classes do not cover (a
    class outside its range, a colour not in the map of its classes)."""
    text = str(error)
    return "outside" in text or "colour map" in text


@command("convcrf-eval")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .._native import prefer_passive_openmp

    prefer_passive_openmp()  # CRFs are timed as convcrf-run runs them (no spinning OpenMP)
    try:
        from .. import evaluation  # noqa: F401  (needs torch at run time)
        import torch  # noqa: F401
    except ImportError as error:
        raise MissingDependencyError(f"convcrf-eval needs torch ({error}); install it: "
                                     f"{TORCH_HINT}") from error
    try:
        check_output_paths(
            {"--json": args.json}, {"--data": args.data, "--model": getattr(args, "model", None),
                                    **{f"--crf {p}": p for p in getattr(args, "crf", None) or []}},
            suffixes={"--json": JSON_SUFFIXES})
        result = _run(args)
    except (ValueError, FileNotFoundError, OSError) as error:
        # DatasetError, CheckpointError and bad settings are ValueErrors with a full message.
        raise UsageError(str(error)) from None
    from ..evaluation import format_table, json_safe

    out = report_stream(args.json)
    print(format_table(result), file=out)
    print("\n".join(MIOU_LEGEND.values()), file=out)
    if args.json is not None:
        result["data"] = str(args.data)
        try:
            write_text_atomic(args.json, json.dumps(json_safe(result), indent=2))
        except OSError as error:
            raise UsageError(f"cannot write {args.json}: {error}") from None
        print(f"results written to {args.json}", file=out)
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
