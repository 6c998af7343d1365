"""``convcrf-train``: train a ConvCRF's parameters on labelled images (decoupled training).

    convcrf-train crf --data DIR (--synthetic | --unary-model MODEL | --unary UNARY.onnx)
                      [--epochs 3] [--lr 0.02]
                      [--filter-size 7] [--learned-compatibility] [--learned-features]
                      [--trainable GROUPS] [--holdout 0.3] [--scale 1] [--out FILE] [--json FILE]

The unary stays frozen: with ``--synthetic`` it is the paper's noisy ground truth (fresh noise
every epoch), with ``--unary-model`` the predictions of a trained model (checkpoint or "demo"),
with ``--unary`` those of an ONNX unary network run in ONNX Runtime (its normalisation from
``--mean``/``--std``/``--metadata``; a fixed-size network sees the images resized to its size).
Only the CRF's parameters are trained, with Adam on the NLL of its output. A fraction of the
images is held out and evaluated before and after training. ``--out`` writes a CRF-only
checkpoint (``convcrf_deploy.training.load_crf``) with ``--synthetic`` or ``--unary`` (attach it
with ``convcrf-export --unary UNARY.onnx --crf OUT``), or the model with its trained CRF
(``convcrf_deploy.load_model``) with ``--unary-model``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from ..config import TRAINABLE_GROUPS
from ..files import JSON_SUFFIXES, check_output_paths, write_text_atomic
from ..install import TORCH_HINT, MissingDependencyError
from ..metrics import MIOU_LEGEND
from ..progress import Progress
from .harness import (ExitCode, PlainHelpFormatter, UsageError, add_model_loading_arguments,
                      command, float_in, load_model_argument, positive_float, positive_int,
                      report_stream)


def _groups(text: str) -> tuple[str, ...]:
    groups = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [g for g in groups if g not in TRAINABLE_GROUPS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown group(s) {unknown}; choose from "
                                         f"{','.join(TRAINABLE_GROUPS)}")
    return groups




def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convcrf-train", description=__doc__.split("\n\n")[0],
                                     formatter_class=PlainHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    crf = commands.add_parser(
        "crf", formatter_class=PlainHelpFormatter, help="train the CRF on a frozen unary",
                              description=__doc__.split("\n\n", 2)[2])
    crf.add_argument("--data", required=True, type=Path,
                     help="folder of NAME_0img.png + NAME_5labels.png pairs, or a VOC 2012 root")
    crf.add_argument("--split", default=None, help="VOC only: ImageSets/Segmentation list")
    crf.add_argument("--max-images", type=positive_int, default=None)
    unary = crf.add_mutually_exclusive_group(required=True)
    unary.add_argument("--synthetic", action="store_true",
                       help="unary = the paper's synthetic noisy ground truth")
    unary.add_argument("--unary-model", metavar="MODEL",
                       help="unary = this model's predictions (checkpoint path, 'demo', or a "
                            "unary saved as a torch.export program (.pt2) or TorchScript: "
                            "--out then writes a CRF-only checkpoint)")
    unary.add_argument("--unary", type=Path, metavar="UNARY.onnx",
                       help="unary = this ONNX network's predictions, run in ONNX Runtime "
                            "(--out writes a CRF-only checkpoint; --crf starts from one)")
    crf.add_argument("--num-classes", type=positive_int, default=21,
                     help="--synthetic: classes of the labels (default 21)")
    crf.add_argument("--epochs", type=positive_int, default=3)
    crf.add_argument("--lr", type=positive_float, default=0.02, help="Adam learning rate")
    crf.add_argument("--filter-size", type=positive_int, default=None,
                     help="ConvCRF filter size (default 7, or the model's CRF)")
    crf.add_argument("--blur", type=positive_int, default=None, help="default 4 or the model's")
    crf.add_argument("--learned-compatibility", action="store_true",
                     help="the paper's +C: learn a class compatibility matrix")
    crf.add_argument("--learned-features", action="store_true",
                     help="the paper's +T: learn the smoothness kernel's features")
    crf.add_argument("--trainable", type=_groups, default=None,
                     help=f"parameter groups to train (default: kernel_weights,bandwidths, plus "
                          f"compatibility/features when enabled); any of "
                          f"{','.join(TRAINABLE_GROUPS)}")
    crf.add_argument("--holdout", type=float_in(0.0, 1.0), default=0.3,
                     help="fraction of images kept for evaluation (default 0.3)")
    crf.add_argument("--eval-seeds", type=positive_int, default=3,
                     help="--synthetic: noise draws per held-out image (default 3)")
    crf.add_argument("--scale", type=positive_float, default=1.0,
                     help="resize images by this factor (train at your deployment resolution)")
    crf.add_argument("--seed", type=int, default=0, help="hold-out split, order and noise seed")
    crf.add_argument("--out", type=Path, default=None, help="write the trained checkpoint here")
    crf.add_argument("--json", type=Path, default=None, help="write the training report here")
    crf.add_argument("--quiet", action="store_true", help="no per-epoch output")
    add_model_loading_arguments(crf)
    return parser


def _run(args: argparse.Namespace) -> tuple[dict, object]:
    from ..config import CRFConfig
    from ..data.folder import LabelledFolder
    from .. import training

    model = None
    initial_state = None
    if args.synthetic:
        from .harness import unary_settings_given
        given = unary_settings_given(args)
        if given:
            raise UsageError(f"{', '.join(given)} describe a unary file (--unary, or a .pt2/"
                             "TorchScript --unary-model); --synthetic has none")
    if args.unary is not None:
        model = _onnx_unary_model(args)
    elif args.unary_model is not None:
        from ..model.constraints import with_probed_constraints
        # Once here (model_examples would otherwise probe for each split): the sizes the
        # network takes, and whether it takes one size only.
        model = with_probed_constraints(load_model_argument(args, args.unary_model))
    if model is not None:
        num_classes = model.num_classes
        base = model.crf.config if model.crf is not None else CRFConfig(num_classes=num_classes,
                                                                        filter_size=7)
        if model.crf is not None:
            initial_state = model.crf.state_dict()
    else:
        num_classes = args.num_classes
        base = CRFConfig(num_classes=num_classes, filter_size=7)
    changes = {}
    if args.filter_size is not None:
        changes["filter_size"] = args.filter_size
    if args.blur is not None:
        changes["blur"] = args.blur
    if args.learned_compatibility:
        changes["compatibility"] = "learned"
    if args.learned_features:
        changes["learned_features"] = True
    config = base.replace(**changes)
    trainable = args.trainable
    if trainable is None:
        trainable = ("kernel_weights", "bandwidths")
        trainable += ("compatibility",) if config.compatibility == "learned" else ()
        trainable += ("features",) if config.learned_features else ()
    config = config.replace(trainable=trainable)

    folder = LabelledFolder(args.data, split=args.split, num_classes=num_classes,
                            max_images=args.max_images)
    samples = [sample.resized(args.scale) for sample in folder]
    fixed = getattr(model, "fixed_input_size", None)
    if fixed is not None:      # the network runs at its own size only (the runtime stretches)
        samples = [_resized_to(sample, fixed) for sample in samples]
    train_samples, held_samples = training.split_holdout(samples, args.holdout, seed=args.seed)
    if model is None:
        # Several noise draws per held-out image: two or three images with one draw each
        # make a noisy comparison.
        held_out = [example for draw in range(args.eval_seeds)
                    for example in training.synthetic_examples(
                        held_samples, num_classes=num_classes, seed=10_000 * (args.seed + 1) + draw)]
        # Fresh noise every epoch: the CRF must learn to clean noise, not these draws.
        def train(epoch):
            return training.synthetic_examples(train_samples, num_classes=num_classes,
                                               seed=args.seed + 1 + epoch)
    else:
        held_out = training.model_examples(model, held_samples)
        train = training.model_examples(model, train_samples)

    bar = Progress("training", args.epochs * len(train_samples),
                   enabled=False if args.quiet else None)

    def on_step(epoch, step, loss):
        bar.advance(note=f"epoch {epoch + 1}, loss {loss:.4f}")
        if not args.quiet and step == len(train_samples) - 1 and not bar.shown:
            print(f"epoch {epoch + 1}/{args.epochs} done (last step loss {loss:.4f})",
                  file=sys.stderr)

    with bar:
        crf, report = training.run_decoupled_training(
            train, held_out, config, epochs=args.epochs, lr=args.lr, seed=args.seed,
            initial_state=initial_state, on_step=on_step)
    report.update({"data": str(args.data), "scale": args.scale, "holdout": args.holdout,
                   "unary": "synthetic" if model is None else str(args.unary or args.unary_model)})
    return report, (crf, model)


def _onnx_unary_model(args: argparse.Namespace):
    """``--unary``: the ONNX network as a frozen unary (ONNX Runtime) with the CRF settings
    and metadata of the command line."""
    from ..model.onnx_unary import load_onnx_unary
    from .harness import unary_settings
    for flag, given in (("--import", args.imports), ("--allow-pickle", args.allow_pickle)):
        if given:
            raise UsageError(f"{flag} applies to checkpoints; an ONNX unary runs no Python code")
    return load_onnx_unary(args.unary, unary_settings(args))


def _resized_to(sample, size: tuple[int, int]):
    """``sample`` stretched to ``size`` (H, W): image bilinear, labels nearest neighbour."""
    import cv2
    import numpy as np

    from ..data.folder import LabelledSample
    height, width = size
    image = cv2.resize(sample.image, (width, height), interpolation=cv2.INTER_LINEAR)
    labels = cv2.resize(sample.labels.astype(np.int32), (width, height),
                        interpolation=cv2.INTER_NEAREST).astype(np.int64)
    return LabelledSample(sample.name, image, labels)


def _save(path: Path, crf, model) -> None:
    from .. import training
    if model is None:
        training.save_crf(crf, path)
        return
    from ..model import SegmentationModel, save_model
    if getattr(model, "unary_file", None):
        training.save_crf(crf, path)   # a unary without class code stays in its own file
        return
    save_model(SegmentationModel(model.unary, crf, model.metadata, unary_spec=model.unary_spec),
               path)


def _print_report(report: dict) -> None:
    history = ", ".join(f"{loss:.4f}" for loss in report["loss_history"])
    print(f"trained on {report['num_train']} image(s) for {report['epochs']} epoch(s) in "
          f"{report['train_seconds']:.1f} s; loss per epoch: {history}")
    skipped = report.get("skipped_all_void", {})
    if any(skipped.values()):
        print(f"skipped image(s) whose pixels are all void (255): {skipped.get('train', 0)} "
              f"for training, {skipped.get('held_out', 0)} held out (no labels to learn from "
              "or score)")
    held = report.get("held_out")
    if not held:
        print("no held-out images (--holdout 0): nothing evaluated")
        return
    names = sorted(set(report["held_out_images"]))
    print(f"held out: {', '.join(names)} ({report['num_held_out']} evaluations)")
    print(f"{'':8}{'accuracy [%]':>14}{'mIoU GT [%]':>14}{'mIoU VOC [%]':>14}{'NLL':>9}")
    for name in ("unary", "before", "after"):
        m = held[name]
        print(f"{name:8}{100 * m['accuracy']:>14.2f}{100 * m['miou_gt_classes']:>14.2f}"
              f"{100 * m['miou']:>14.2f}{m['loss']:>9.4f}")
    print(MIOU_LEGEND["miou_gt_classes"])
    print(MIOU_LEGEND["miou"])


@command("convcrf-train")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from .. import training  # noqa: F401  (needs torch)
    except ImportError as error:
        raise MissingDependencyError(f"convcrf-train needs torch ({error}); install it: "
                                     f"{TORCH_HINT}") from error
    try:
        check_output_paths({"--out": args.out, "--json": args.json},
                           {"--data": args.data, "--unary-model": args.unary_model,
                            "--unary": args.unary, "--crf": args.crf},
                           suffixes={"--json": JSON_SUFFIXES})
        report, (crf, model) = _run(args)
        if args.out is not None:
            _save(args.out, crf, model)
    except (ValueError, FileNotFoundError, OSError, FloatingPointError) as error:
        raise UsageError(str(error)) from None
    out = report_stream(args.json)
    with contextlib.redirect_stdout(out):
        _print_report(report)
    if args.out is not None:
        report["checkpoint"] = str(args.out)
        print(f"checkpoint written to {args.out}", file=out)
    if args.json is not None:
        from ..evaluation import json_safe
        write_text_atomic(args.json, json.dumps(json_safe(report), indent=2))
        print(f"report written to {args.json}", file=out)
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
