"""The ConvCRF paper's Table 1 (synthetic task) on a labelled folder, beside the published figures.

    python benchmarks/table1.py [--data ../shared/data/pascal-voc-sample] [--seeds 3] [--scale 1]

The paper ran full PASCAL VOC validation on a GPU (FullCRF on a CPU); this runs the same
noise protocol on whatever folder is given, on this machine's CPU, so compare the accuracy
and mIoU columns in spirit (different images) and the times not at all; the speed-up over
FullCRF (FullCRF time / method time, both timed in this run; needs the [fullcrf] extra) is
the figure to compare with the paper's ratios.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# method -> (time ms, accuracy %, mIoU %) as published (Teichmann & Cipolla, Table 1).
PAPER = {"unary": (None, 86.60, 51.87), "fullcrf": (647, 94.79, 84.37),
         "conv5": (7, 97.13, 90.90), "conv7": (13, 97.13, 92.98),
         "conv11": (26, 98.97, 93.74), "conv13": (34, 98.99, 93.89)}
DEFAULT_DATA = Path(os.environ.get("CONVCRF_VOC_SAMPLE") or
                    Path(__file__).resolve().parents[2] / "shared/data/pascal-voc-sample")


def main() -> int:
    from convcrf_deploy.data.folder import LabelledFolder
    from convcrf_deploy.evaluation import evaluate_synthetic

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"{args.data} not found; pass --data", file=sys.stderr)
        return 2
    folder = LabelledFolder(args.data)
    result = evaluate_synthetic(folder, seeds=args.seeds, scale=args.scale,
                                progress=None)
    print(f"{len(folder)} images x {args.seeds} seeds, scale {args.scale}, "
          f"{result['num_threads']} CPU threads")
    print(f"{'method':8} {'ms (ours)':>10} {'ms (paper)':>10} {'acc ours':>9} {'acc paper':>9} "
          f"{'mIoU-GT ours':>12} {'mIoU VOC ours':>13} {'mIoU paper':>10} {'vs FullCRF':>10} "
          f"{'paper':>6}")
    paper_fullcrf_ms = PAPER["fullcrf"][0]
    for name, m in result["methods"].items():
        paper = PAPER.get(name, (None, None, None))
        cells = [f"{m['time_ms']:.1f}" if m["time_ms"] else "-",
                 "-" if paper[0] is None else str(paper[0]),
                 f"{100 * m['accuracy']:.2f}", "-" if paper[1] is None else f"{paper[1]:.2f}",
                 f"{100 * m['miou_gt_classes']:.2f}", f"{100 * m['miou']:.2f}",
                 "-" if paper[2] is None else f"{paper[2]:.2f}",
                 "-" if m.get("speedup_vs_fullcrf") is None else f"{m['speedup_vs_fullcrf']:.1f}x",
                 "-" if paper[0] is None else f"{paper_fullcrf_ms / paper[0]:.0f}x"]
        print(f"{name:8} {cells[0]:>10} {cells[1]:>10} {cells[2]:>9} {cells[3]:>9} "
              f"{cells[4]:>12} {cells[5]:>13} {cells[6]:>10} {cells[7]:>10} {cells[8]:>6}")
    print("note: the paper's speed-ups compare ConvCRF on a GPU with FullCRF on a CPU; ours run "
          "both on this CPU")
    for note in result["notes"]:
        print("note:", note)
    return 0


if __name__ == "__main__":
    # Run from a source checkout without installing: the package is one folder up.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
