"""Evaluation runners: the paper's Table 1 (synthetic task) and a trained model on a data set.

* :func:`evaluate_synthetic` — for every image of a labelled folder and every seed, the
  paper's noisy unary (:mod:`convcrf_deploy.data.synthetic`) is refined by ConvCRF at each
  filter size (hand-set parameters) and, when ``pydensecrf`` is installed, by the
  permutohedral FullCRF (:func:`convcrf_deploy.fullcrf.fullcrf_inference`); reports pixel
  accuracy, mIoU over ground-truth classes, VOC mIoU, the CRF time per image and each CRF's
  speed-up over FullCRF measured in the same run.
* :func:`evaluate_model` — a :class:`~convcrf_deploy.SegmentationModel` on a labelled folder,
  its unary alone and with its CRF.

Both return plain dictionaries (JSON-serialisable); :func:`format_table` prints them like the
paper's table. Everything runs under ``torch.no_grad()`` on the CPU.
"""
from __future__ import annotations

import math
import time
from typing import Any, Iterable, Sequence

import numpy as np

from .config import CRFConfig
from .data.folder import LabelledSample
from .data.synthetic import noise_rng, synthetic_logits
from .fullcrf import INSTALL_HINT, fullcrf_available, fullcrf_inference
from .metrics import SegmentationMetrics
from .progress import Progress

#: The filter sizes of the paper's Table 1.
PAPER_FILTER_SIZES = (5, 7, 11, 13)


class _Method:
    """Metrics and timing of one method over the data set."""

    def __init__(self, num_classes: int):
        self.metrics = SegmentationMetrics(num_classes)
        self.seconds: list[float] = []

    def add(self, prediction: np.ndarray, labels: np.ndarray, seconds: float | None) -> None:
        self.metrics.update(prediction, labels)
        if seconds is not None:
            self.seconds.append(seconds)

    def result(self) -> dict[str, Any]:
        metrics = self.metrics.result()
        return {"accuracy": metrics["accuracy"], "miou_gt_classes": metrics["miou_gt_classes"],
                "miou": metrics["miou"], "per_class_iou": metrics["per_class_iou"],
                "num_images": metrics["num_images"],
                "time_ms": 1000 * float(np.mean(self.seconds)) if self.seconds else None}


def evaluate_synthetic(samples: Iterable[LabelledSample], *, num_classes: int = 21,
                       filter_sizes: Sequence[int] = PAPER_FILTER_SIZES, seeds: int = 1,
                       blur: int = 4, iterations: int = 5, fullcrf: bool = True,
                       crfs: dict | None = None,
                       scale: float = 1.0, progress: bool | None = False,
                       num_samples: int | None = None) -> dict[str, Any]:
    """The paper's Table 1 on labelled images (synthetic noisy unary, hand-set CRFs).

    Args:
        samples: labelled images (e.g. a :class:`~convcrf_deploy.data.LabelledFolder`).
        num_classes: C of the labels.
        filter_sizes: ConvCRF filter sizes to compare (the paper's 5, 7, 11, 13).
        seeds: noise draws per image; image ``i`` with seed ``s`` uses
            ``numpy.random.default_rng([s, i])``.
        blur, iterations: ConvCRF settings (paper: 4 and 5).
        fullcrf: also run FullCRF (:func:`~convcrf_deploy.fullcrf.fullcrf_inference`, same
            hand-set parameters) when ``pydensecrf`` is installed; a note says when it is not.
        crfs: extra ``{name: ConvCRF}`` modules to evaluate (e.g. trained ones).
        scale: resize images (and labels, nearest) by this factor first.
        progress: draw a progress bar on stderr (``None``: when it is a terminal; see
            :mod:`convcrf_deploy.progress`).
        num_samples: length of ``samples`` for the progress bar when it has no ``len``.

    Returns:
        ``{"methods": {"unary": {...}, "conv5": {...}, ..., "fullcrf": {...}}, "notes": [...],
        "seeds", "num_images", "blur", "iterations", "scale"}``; each method holds
        ``accuracy``, ``miou_gt_classes``, ``miou`` (fractions), ``per_class_iou``,
        ``num_images`` (image x seed evaluations), ``time_ms`` (mean CRF time per image) and,
        when FullCRF ran, ``speedup_vs_fullcrf`` (FullCRF's mean time / this method's, both
        timed in this run; ``None`` for the unary).
    """
    import torch

    from .model import ConvCRF

    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    base = CRFConfig(num_classes=num_classes, blur=blur, iterations=iterations)
    modules: dict[str, Any] = {f"conv{k}": ConvCRF(base.replace(filter_size=k)).eval()
                               for k in filter_sizes}
    modules.update(crfs or {})
    methods = {"unary": _Method(num_classes), **{name: _Method(num_classes) for name in modules}}
    notes = []
    run_fullcrf = fullcrf and fullcrf_available()
    if fullcrf and not run_fullcrf:
        notes.append(f"FullCRF skipped: pydensecrf is not installed ({INSTALL_HINT})")
    if run_fullcrf:
        methods["fullcrf"] = _Method(num_classes)
    total = num_samples if num_samples is not None else (len(samples) if hasattr(samples, "__len__")
                                                         else 0)
    images = skipped = 0
    with torch.no_grad(), Progress("synthetic", total * seeds, enabled=progress) as bar:
        for index, sample in enumerate(samples):
            sample = sample.resized(scale)
            if _all_void(sample):       # nothing to score (issue 11): skipped and counted
                skipped += 1
                continue
            images += 1
            image = sample.image_tensor()
            for seed in range(seeds):
                logits = synthetic_logits(sample.labels, num_classes,
                                          rng=noise_rng(seed, index))
                methods["unary"].add(logits.argmax(0), sample.labels, None)
                z = torch.from_numpy(logits)[None]
                if images == 1 and seed == 0:
                    # Untimed first call: one-time costs (library loading, allocator warm-up)
                    # are not per-image costs.
                    for crf in modules.values():
                        crf(z, image)
                    if run_fullcrf:
                        fullcrf_inference(logits, sample.image, base)
                for name, crf in modules.items():
                    start = time.perf_counter()
                    q = crf(z, image)
                    seconds = time.perf_counter() - start
                    methods[name].add(q[0].argmax(0).numpy(), sample.labels, seconds)
                if run_fullcrf:
                    start = time.perf_counter()
                    q = fullcrf_inference(logits, sample.image, base)
                    methods["fullcrf"].add(q.argmax(0), sample.labels, time.perf_counter() - start)
                bar.advance(note=sample.name)
    if images == 0:
        raise ValueError("no images to evaluate" + _void_note(skipped, ": "))
    if skipped:
        notes.append(_void_note(skipped))
    results = {name: m.result() for name, m in methods.items()}
    if run_fullcrf:
        fullcrf_ms = results["fullcrf"]["time_ms"]
        for result in results.values():
            result["speedup_vs_fullcrf"] = (fullcrf_ms / result["time_ms"]
                                            if result["time_ms"] else None)
    return {"task": "synthetic", "methods": results,
            "notes": notes, "seeds": seeds, "num_images": images, "blur": blur,
            "iterations": iterations, "scale": scale, "num_threads": torch.get_num_threads()}


def evaluate_model(model, samples: Iterable[LabelledSample], *, scale: float = 1.0,
                   progress: bool | None = False, num_samples: int | None = None) -> dict[str, Any]:
    """A :class:`~convcrf_deploy.SegmentationModel` on labelled images, with and without CRF.

    Returns ``{"methods": {"unary": {...}, "crf": {...}}, ...}`` as :func:`evaluate_synthetic`
    (``"crf"`` only when the model has one). ``time_ms`` is the unary's time for ``"unary"``
    and the CRF's own time for ``"crf"``.

    Images of any size: a model whose metadata records no input constraints is probed for them
    first (:func:`~convcrf_deploy.model.with_probed_constraints`, as every backend does), so a
    network that needs sides in multiples of 32 sees its images padded as ``convcrf-run`` pads
    them, and scores come from the same input. ``model`` itself is not changed.

    Raises:
        ValueError: labels outside the model's classes, or no image to score.
        convcrf_deploy.model.constraints.ConstraintError: the unary runs at no probed size.
    """
    import torch

    from .model.constraints import with_probed_constraints

    model = with_probed_constraints(model.eval())
    num_classes = model.num_classes
    methods = {"unary": _Method(num_classes)}
    if model.crf is not None:
        methods["crf"] = _Method(num_classes)
    total = num_samples if num_samples is not None else (len(samples) if hasattr(samples, "__len__")
                                                         else 0)
    images = skipped = 0
    with torch.no_grad(), Progress("dataset", total, enabled=progress) as bar:
        for sample in samples:
            sample = sample.resized(scale)
            if _all_void(sample):       # nothing to score (issue 11): skipped and counted
                skipped += 1
                continue
            images += 1
            bad = sample.labels[(sample.labels >= num_classes) & (sample.labels != 255)]
            if bad.size:
                raise ValueError(f"{sample.name}: label {int(bad[0])} but the model has "
                                 f"{num_classes} classes ({model.metadata.class_names})")
            image = sample.image_tensor()
            if images == 1:  # untimed warm-up, as in evaluate_synthetic
                model(image)
            start = time.perf_counter()
            logits = model.forward_unary(image)
            methods["unary"].add(logits[0].argmax(0).numpy(), sample.labels,
                                 time.perf_counter() - start)
            if model.crf is not None:
                start = time.perf_counter()
                q = model.crf(logits, image)
                methods["crf"].add(q[0].argmax(0).numpy(), sample.labels,
                                   time.perf_counter() - start)
            bar.advance(note=sample.name)
    if images == 0:
        raise ValueError("no images to evaluate" + _void_note(skipped, ": "))
    return {"task": "dataset", "methods": {name: m.result() for name, m in methods.items()},
            "notes": [_void_note(skipped)] if skipped else [], "num_images": images, "scale": scale,
            "num_threads": torch.get_num_threads()}


def _all_void(sample: LabelledSample) -> bool:
    return bool((sample.labels == 255).all())


def _void_note(count: int, prefix: str = "") -> str:
    return (f"{prefix}skipped {count} image(s) whose pixels are all void (255)" if count
            else "")


def json_safe(value: Any) -> Any:
    """``value`` with NaN floats replaced by ``None`` (strict JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _percent(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def format_table(result: dict[str, Any]) -> str:
    """The methods of a result as a text table (percentages, time per image in ms, and the
    speed-up over FullCRF when it ran)."""
    speedups = any("speedup_vs_fullcrf" in m for m in result["methods"].values())
    rows = [("method", "time [ms]", "accuracy [%]", "mIoU GT classes [%]", "mIoU VOC [%]")
            + (("speed-up vs FullCRF",) if speedups else ())]
    for name, m in result["methods"].items():
        time_ms = "-" if m["time_ms"] is None else f"{m['time_ms']:.1f}"
        row = (name, time_ms, _percent(m["accuracy"]), _percent(m["miou_gt_classes"]),
               _percent(m["miou"]))
        if speedups:
            ratio = m.get("speedup_vs_fullcrf")
            row += ("-" if ratio is None else f"{ratio:.1f}x",)
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.extend(f"note: {note}" for note in result.get("notes", []))
    return "\n".join(lines)
