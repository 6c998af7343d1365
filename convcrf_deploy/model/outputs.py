"""What a unary network returns -> class logits ``[N, C, H, W]`` at the input size.

Segmentation networks return their logits in several conventions; :func:`unary_logits` accepts
all of them, so that a user's network works unchanged in :class:`SegmentationModel`, training,
every export flavour and the runtime (the conversion is traced into the exported graph):

* a tensor ``[N, C, h, w]`` (our built-in unaries, segmentation-models-pytorch);
* a tuple or list whose first element is the logits (smp with an auxiliary classification
  head: ``(masks, labels)``; Hugging Face models with ``return_dict=False``);
* a mapping: the entry named ``output_key`` when given, else ``"out"`` (torchvision's
  segmentation models return ``{"out": ..., "aux": ...}``), else ``"logits"``;
* an object with a ``.logits`` attribute (Hugging Face ``SemanticSegmenterOutput``).

Logits at another resolution than the input (1/4 for Segformer and DeepLabV3+ without its
final upsampling, 1/8, ...) are resized to the input size bilinearly (``align_corners=False``,
ONNX ``Resize`` with ``half_pixel`` coordinates), in PyTorch and in the exported graph alike.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

#: Mapping keys tried, in order, when no ``output_key`` is given.
LOGITS_KEYS = ("out", "logits")


class UnaryOutputError(ValueError):
    """The unary's output is not logits in a known convention (or has the wrong shape); the
    message names what was returned and how to fix it."""


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, Mapping):
        return f"a {type(value).__name__} with keys {list(value)[:8]}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def select_logits(output: Any, output_key: str | None = None) -> torch.Tensor:
    """The logits tensor inside ``output`` (see the module docstring for the conventions).

    Raises:
        UnaryOutputError: ``output_key`` is missing from a mapping, a mapping has neither
            ``"out"`` nor ``"logits"``, or the selected value is not a tensor.
    """
    selected, where = output, "the unary's output"
    if output_key is not None:
        if isinstance(output, Mapping):
            if output_key not in output:
                raise UnaryOutputError(
                    f"the unary returned {_describe(output)}, without the output key "
                    f"{output_key!r}; choose one of them (SegmentationModel(output_key=...), "
                    "convcrf-export --output-key KEY)")
            selected = output[output_key]
        elif hasattr(output, output_key):
            selected = getattr(output, output_key)
        else:
            raise UnaryOutputError(
                f"the unary returned {_describe(output)}, which has no entry or attribute "
                f"{output_key!r} (the output key given)")
        where = f"the unary's output[{output_key!r}]"
    elif isinstance(output, torch.Tensor):
        return output
    elif isinstance(output, Mapping):
        key = next((k for k in LOGITS_KEYS if k in output), None)
        if key is None:
            raise UnaryOutputError(
                f"the unary returned {_describe(output)}, none of which is named "
                f"{' or '.join(map(repr, LOGITS_KEYS))}: name the logits with "
                "SegmentationModel(output_key=KEY) or convcrf-export --output-key KEY")
        selected, where = output[key], f"the unary's output[{key!r}]"
    elif isinstance(getattr(output, "logits", None), torch.Tensor):
        selected, where = output.logits, "the unary's output.logits"
    elif isinstance(output, (tuple, list)) and output:
        selected, where = output[0], "the first element of the unary's output"
    if not isinstance(selected, torch.Tensor):
        raise UnaryOutputError(
            f"{where} is {_describe(selected)}, not a logits tensor [N, C, h, w]; a unary "
            "returns a tensor, a tuple/list starting with the logits, a dict with 'out' or "
            "'logits' (or SegmentationModel(output_key=...) / convcrf-export --output-key), "
            "or an object with .logits")
    return selected


def unary_logits(output: Any, input_shape: tuple[int, ...] | torch.Size, num_classes: int,
                 output_key: str | None = None) -> torch.Tensor:
    """Logits ``[N, num_classes, H, W]`` from a unary's ``output`` for an input of
    ``input_shape = (N, 3, H, W)``.

    Args:
        output: what the unary returned (any convention of the module docstring); its logits
            ``[N, C, h, w]`` may have any ``h, w``.
        input_shape: the shape of the unary's input.
        num_classes: the expected ``C``.
        output_key: the mapping key or attribute that holds the logits, if not the default.

    Returns:
        the logits, bilinearly resized (``align_corners=False``) when ``(h, w) != (H, W)``;
        same dtype as the unary's.

    Raises:
        UnaryOutputError: see :func:`select_logits`, or the logits are not ``[N, C, h, w]``
            with ``C == num_classes``.
    """
    logits = select_logits(output, output_key)
    batch, size = input_shape[0], tuple(input_shape[-2:])
    if logits.dim() != 4 or logits.shape[0] != batch or logits.shape[1] != num_classes:
        raise UnaryOutputError(f"the unary returned logits of shape {tuple(logits.shape)}; "
                               f"expected ({batch}, {num_classes}, h, w): one channel per "
                               "class")
    if tuple(logits.shape[-2:]) != size:
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits
