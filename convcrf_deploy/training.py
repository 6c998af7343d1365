"""Training ConvCRF parameters: the paper's decoupled protocol, and end-to-end helpers.

**Decoupled training** (the paper's Section 5.2, and ``convcrf-train crf``): the unary is
frozen — the synthetic noisy unary of :mod:`convcrf_deploy.data.synthetic`, or the
predictions of a trained unary network (:func:`model_examples`: a PyTorch model, or an ONNX
file run in ONNX Runtime, :func:`convcrf_deploy.model.onnx_unary.load_onnx_unary`) — and only
the CRF's parameters (kernel weights, bandwidths, message weights, and the +C compatibility /
+T features when enabled) are fitted with Adam to the negative log-likelihood of the CRF's
output probabilities, void pixels (255) ignored. Training runs on the differentiable path in float32, so gradients flow
through the custom ops::

    examples = synthetic_examples(folder, num_classes=21, scale=0.5)
    train, held_out = split_holdout(examples, 0.3)
    crf = ConvCRF(CRFConfig(filter_size=7, compatibility="learned"))
    history = train_crf(crf, train, epochs=3, lr=0.02)
    print(evaluate_crf(crf, held_out))
    save_crf(crf, "crf.pt")                      # CRF-only checkpoint; load_crf() reads it

    # the unary an ONNX file (convcrf-train crf --unary unary.onnx); attach the result with
    # convcrf-export --unary unary.onnx --crf crf.pt
    unary = load_onnx_unary("unary.onnx", UnarySettings(metadata={"mean": [...], "std": [...]}))
    examples = model_examples(unary, LabelledFolder("data/", num_classes=unary.num_classes))

**End-to-end training** in your own loop (the paper's protocol for Table 2: pre-train the
unary alone, then train unary and CRF jointly with an auxiliary loss on the unary, which keeps
the unary's logits meaningful on their own)::

    model = SegmentationModel(unary, ConvCRF(CRFConfig(num_classes=21)), metadata)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    for image, labels in loader:          # (N, 3, H, W) RGB 0..255, (N, H, W) int64
        optimizer.zero_grad()
        loss = joint_loss(model, image, labels, aux_weight=0.5)
        loss.backward()
        optimizer.step()
    save_model(model, "model.pt")
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .config import CRFConfig
from .data.folder import LabelledSample
from .data.synthetic import noise_rng, synthetic_logits
from .metrics import IGNORE_INDEX, SegmentationMetrics
from .model import ConvCRF
# CRF-only checkpoints live with the other checkpoint formats; re-exported for this API.
from .model.checkpoint import CRF_FORMAT, load_crf, save_crf  # noqa: F401

#: Probabilities are clamped to this before the log of the NLL loss (log(0) = -inf).
_PROBABILITY_FLOOR = 1e-8


# ---- data -------------------------------------------------------------------------------------

@dataclass
class CRFExample:
    """One training/evaluation image for a CRF with a frozen unary.

    Attributes:
        name: image name.
        image: ``(1, 3, H, W)`` float32 RGB 0..255.
        unary_logits: ``(1, C, H, W)`` float32 logits (fixed: no gradient).
        labels: ``(1, H, W)`` int64 class indices, 255 = void.
    """

    name: str
    image: torch.Tensor
    unary_logits: torch.Tensor
    labels: torch.Tensor


def synthetic_examples(samples: Iterable[LabelledSample], *, num_classes: int = 21,
                       scale: float = 1.0, seed: int = 0) -> list[CRFExample]:
    """Examples whose unary is the paper's synthetic noisy unary (image ``i`` uses
    ``numpy.random.default_rng([seed, i])``), images resized by ``scale`` first."""
    examples = []
    for index, sample in enumerate(samples):
        sample = sample.resized(scale)
        logits = synthetic_logits(sample.labels, num_classes,
                                  rng=noise_rng(seed, index))
        examples.append(CRFExample(sample.name, sample.image_tensor(), torch.from_numpy(logits)[None],
                                   torch.from_numpy(sample.labels)[None]))
    return examples


def model_examples(model, samples: Iterable[LabelledSample], *,
                   scale: float = 1.0) -> list[CRFExample]:
    """Examples whose unary is ``model.forward_unary`` (a :class:`SegmentationModel`; its
    unary may be an ONNX file run in ONNX Runtime, :func:`~convcrf_deploy.model.onnx_unary.
    load_onnx_unary`, whose fixed size, if any, the samples must have), computed once without
    gradients. A model whose metadata records no input constraints is probed for them first
    (:func:`~convcrf_deploy.model.with_probed_constraints`), so that images of any size are
    padded as every backend pads them; ``model`` itself is not changed.

    Raises:
        convcrf_deploy.model.constraints.ConstraintError: the unary runs at no probed size.
    """
    from .model.constraints import with_probed_constraints

    examples = []
    model = with_probed_constraints(model.eval())
    with torch.no_grad():
        for sample in samples:
            sample = sample.resized(scale)
            image = sample.image_tensor()
            examples.append(CRFExample(sample.name, image, model.forward_unary(image).float(),
                                       torch.from_numpy(sample.labels)[None]))
    return examples


def is_all_void(example: CRFExample) -> bool:
    """True when every pixel of the example is void (255): it has nothing to learn from or
    score, and its NLL would be NaN (a mean over no pixels)."""
    return bool((example.labels == IGNORE_INDEX).all())


def split_holdout(items: Sequence, fraction: float, seed: int = 0) -> tuple[list, list]:
    """Shuffle ``items`` (seeded) and split off ``round(len * fraction)`` of them, at least one
    when ``fraction > 0`` and at least one left to train on. Returns ``(train, held_out)``."""
    if not 0 <= fraction < 1:
        raise ValueError(f"the hold-out fraction must be in [0, 1), got {fraction}")
    count = len(items)
    held = 0 if fraction == 0 else max(1, round(count * fraction))
    if held and count - held < 1:
        raise ValueError(f"cannot hold out {fraction:.0%} of {count} image(s) and still train "
                         "on one; add images or use --holdout 0")
    order = np.random.default_rng(seed).permutation(count)
    train = [items[i] for i in sorted(order[:count - held])]
    held_out = [items[i] for i in sorted(order[count - held:])]
    return train, held_out


# ---- losses -----------------------------------------------------------------------------------

def crf_nll_loss(probabilities: torch.Tensor, labels: torch.Tensor,
                 ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean negative log-likelihood of ``labels (N, H, W)`` under ``probabilities
    (N, C, H, W)`` (a CRF's output), skipping ``ignore_index`` pixels."""
    log_q = torch.log(probabilities.float().clamp_min(_PROBABILITY_FLOOR))
    return F.nll_loss(log_q, labels, ignore_index=ignore_index)


def joint_loss(model, image: torch.Tensor, labels: torch.Tensor, aux_weight: float = 0.5,
               ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """End-to-end loss of a :class:`SegmentationModel` with a CRF: the CRF output's NLL plus
    ``aux_weight`` times the unary's cross-entropy (the paper's auxiliary unary loss).

    Args:
        model: a ``SegmentationModel`` whose ``crf`` is not ``None``.
        image: ``(N, 3, H, W)`` float RGB 0..255.
        labels: ``(N, H, W)`` int64 class indices, ``ignore_index`` = void.
        aux_weight: weight of the unary's own loss (0 trains through the CRF only).

    Returns:
        scalar loss tensor; call ``.backward()`` on it. See the module docstring for a loop.
    """
    if model.crf is None:
        raise ValueError("joint_loss needs a model with a CRF; train a unary alone with "
                         "F.cross_entropy(model.forward_unary(image), labels)")
    if labels.dim() != 3 or labels.shape[0] != image.shape[0] or labels.shape[1:] != image.shape[2:]:
        raise ValueError(f"labels must be (N, H, W) matching image {tuple(image.shape)}, got "
                         f"{tuple(labels.shape)}")
    logits = model.forward_unary(image)
    loss = crf_nll_loss(model.crf(logits, image), labels, ignore_index)
    if aux_weight:
        loss = loss + aux_weight * F.cross_entropy(logits.float(), labels, ignore_index=ignore_index)
    return loss


# ---- decoupled training -----------------------------------------------------------------------

Examples = Sequence[CRFExample] | Callable[[int], Sequence[CRFExample]]


def train_crf(crf: ConvCRF, examples: Examples, *, epochs: int = 3, lr: float = 0.02,
              seed: int = 0,
              on_step: Callable[[int, int, float], None] | None = None) -> list[float]:
    """Fit ``crf``'s trainable parameters to ``examples`` (frozen unaries) with Adam.

    One optimiser step per image (images differ in size), images shuffled each epoch (seeded).

    Args:
        examples: the training examples, or a function ``epoch -> examples`` that draws new
            ones each epoch (e.g. fresh synthetic noise: :func:`synthetic_examples` with
            ``seed=epoch``).
        on_step: called as ``on_step(epoch, step, loss)`` after every step (progress).

    Examples whose pixels are all void (255) are skipped (:func:`is_all_void`; count them
    with :func:`count_all_void`): they carry no label and their loss would be NaN.

    Returns:
        mean loss per epoch over the labelled examples, computed during the epoch (as the
        parameters change).

    Raises:
        ValueError: no examples, or every example is all void; no trainable parameters.
        FloatingPointError: the loss became NaN or infinite (the learning rate is too high).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    draw = examples if callable(examples) else (lambda epoch: examples)
    if not draw(0):
        raise ValueError("no training examples")
    parameters = [p for p in crf.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("the CRF has no trainable parameters: CRFConfig.trainable is empty")
    optimizer = torch.optim.Adam(parameters, lr=lr)
    rng = np.random.default_rng(seed)
    history = []
    crf.train()
    for epoch in range(epochs):
        losses = []
        epoch_examples = draw(epoch)
        for step, index in enumerate(rng.permutation(len(epoch_examples))):
            example = epoch_examples[index]
            if is_all_void(example):
                continue
            optimizer.zero_grad()
            loss = crf_nll_loss(crf(example.unary_logits, example.image), example.labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the loss became {loss.item()} at epoch {epoch + 1} "
                                         f"on {example.name}; lower the learning rate")
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if on_step is not None:
                on_step(epoch, step, loss.item())
        if not losses:
            raise ValueError("every training image is all void (255): there are no labelled "
                             "pixels to train on; check the label files")
        history.append(float(np.mean(losses)))
    crf.eval()
    return history


def count_all_void(examples: Sequence[CRFExample]) -> int:
    """How many of ``examples`` have only void pixels (skipped by training and evaluation)."""
    return sum(is_all_void(example) for example in examples)


def evaluate_crf(crf: ConvCRF | None, examples: Sequence[CRFExample]) -> dict[str, Any]:
    """Metrics of ``crf`` (or the unary alone when ``None``) on ``examples``: ``accuracy``,
    ``miou_gt_classes``, ``miou`` (fractions), ``loss`` (mean NLL), ``num_images`` (images
    evaluated) and ``skipped_all_void`` (images skipped because every pixel is void, 255).

    Raises:
        ValueError: no examples, or every example is all void.
    """
    if not examples:
        raise ValueError("no examples to evaluate")
    num_classes = examples[0].unary_logits.shape[1]
    metrics = SegmentationMetrics(num_classes)
    losses = []
    labelled = [example for example in examples if not is_all_void(example)]
    if not labelled:
        raise ValueError(f"all {len(examples)} image(s) to evaluate are all void (255): "
                         "there are no labelled pixels to score; check the label files")
    with torch.no_grad():
        for example in labelled:
            q = (torch.softmax(example.unary_logits, dim=1) if crf is None
                 else crf(example.unary_logits, example.image))
            losses.append(crf_nll_loss(q, example.labels).item())
            metrics.update(q[0].argmax(0).numpy(), example.labels[0].numpy())
    result = metrics.result()
    return {"accuracy": result["accuracy"], "miou_gt_classes": result["miou_gt_classes"],
            "miou": result["miou"], "loss": float(np.mean(losses)),
            "num_images": result["num_images"],
            "skipped_all_void": len(examples) - len(labelled)}


def trained_parameters(crf: ConvCRF) -> dict[str, Any]:
    """Human-readable current values: bandwidths (not their logs), weights, message weights."""
    return {
        "appearance_position_bandwidth": math.exp(crf.log_appearance_position_bandwidth.item()),
        "appearance_color_bandwidth": math.exp(crf.log_appearance_color_bandwidth.item()),
        "smoothness_bandwidth": math.exp(crf.log_smoothness_bandwidth.item()),
        "appearance_weight": crf.appearance_weight.item(),
        "smoothness_weight": crf.smoothness_weight.item(),
        "message_weight": [round(v, 5) for v in crf.message_weight.tolist()],
    }


def run_decoupled_training(train: Examples, held_out: Sequence[CRFExample],
                           config: CRFConfig, *, epochs: int = 3, lr: float = 0.02,
                           seed: int = 0, initial_state: dict | None = None,
                           on_step: Callable[[int, int, float], None] | None = None
                           ) -> tuple[ConvCRF, dict[str, Any]]:
    """Train a ConvCRF on ``train`` and compare it with the untrained (hand-set) one on
    ``held_out``. Returns ``(trained_crf, report)`` where ``report`` holds ``loss_history``,
    ``initial``/``trained`` parameters and ``held_out`` metrics for ``unary``, ``before``
    (the CRF before training) and ``after`` (absent when ``held_out`` is empty), and
    ``skipped_all_void`` (``train``/``held_out`` images skipped because all their pixels are
    void)."""
    crf = ConvCRF(config)
    if initial_state is not None:
        missing, unexpected = crf.load_state_dict(initial_state, strict=False)
        if unexpected:
            raise ValueError(f"the initial CRF state has parameters {unexpected} that "
                             f"{config} does not")
    first = train(0) if callable(train) else train
    report: dict[str, Any] = {"crf_config": config.to_dict(), "epochs": epochs, "lr": lr,
                              "num_train": len(first), "num_held_out": len(held_out),
                              "skipped_all_void": {"train": count_all_void(first),
                                                   "held_out": count_all_void(held_out)},
                              "train_images": [e.name for e in first],
                              "held_out_images": [e.name for e in held_out],
                              "initial_parameters": trained_parameters(crf)}
    held = {}
    # Held-out images that are all void are skipped by evaluate_crf; with only those, there
    # is nothing to evaluate.
    evaluate = bool(held_out) and count_all_void(held_out) < len(held_out)
    if evaluate:
        held["unary"] = evaluate_crf(None, held_out)
        held["before"] = evaluate_crf(crf, held_out)
    start = time.perf_counter()
    report["loss_history"] = train_crf(crf, train, epochs=epochs, lr=lr, seed=seed,
                                       on_step=on_step)
    report["train_seconds"] = time.perf_counter() - start
    report["trained_parameters"] = trained_parameters(crf)
    if evaluate:
        held["after"] = evaluate_crf(crf, held_out)
        report["held_out"] = held
    return crf, report
