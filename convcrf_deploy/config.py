"""`CRFConfig`: every hyper-parameter of a ConvCRF, typed and validated.

This module imports nothing heavy (no torch), so the runtime can read a CRF configuration
from ONNX metadata on a machine with only numpy and ONNX Runtime.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

#: Parameter groups that can be marked trainable (``CRFConfig.trainable``).
TRAINABLE_GROUPS = ("kernel_weights", "bandwidths", "message_weight", "compatibility", "features")

#: Largest filter size the native kernels accept (``kMaxFilterSize`` in convcrf_math.h).
MAX_FILTER_SIZE = 31


def validate_filter_size(filter_size: int) -> None:
    """Raise ``ValueError`` unless ``filter_size`` is an odd int in 1..MAX_FILTER_SIZE."""
    if isinstance(filter_size, bool) or not isinstance(filter_size, int):
        raise ValueError(f"filter_size must be an int, got {filter_size!r}")
    if filter_size % 2 == 0 or not 1 <= filter_size <= MAX_FILTER_SIZE:
        raise ValueError(f"filter_size must be odd and in 1..{MAX_FILTER_SIZE} (the window is "
                         f"centred on the pixel), got {filter_size}; use e.g. 5, 7, 11 or 13")


@dataclass(frozen=True)
class CRFConfig:
    """Configuration of a :class:`convcrf_deploy.ConvCRF`.

    Defaults follow the ConvCRF paper (Teichmann & Cipolla) and Krähenbühl & Koltun's
    hand-set FullCRF parameters: filter size 11 (the paper's trained model), blur 4,
    5 mean-field iterations, appearance kernel theta_alpha=80, theta_beta=13, weight 10,
    smoothness kernel theta_gamma=3, weight 3, Potts compatibility.

    Mean-field update (the reference implementation's weighted form)::

        Q = softmax((unary_weight - w_c) * log_softmax(z) + w_c * compat(M))

    with ``w_c`` a per-class weight initialised to ``message_weight``.

    Attributes:
        num_classes: number of classes C of the unary logits, >= 2 (a single-foreground
            model passes two: logits ``[0, f]``).
        filter_size: odd window size k of the message passing (1..31), in blurred pixels.
        blur: average-pooling factor applied before message passing (1 disables it).
        iterations: mean-field iterations (0 returns softmax of the unary).
        appearance_position_bandwidth: theta_alpha, in full-resolution pixels.
        appearance_color_bandwidth: theta_beta, in RGB units (image in 0..255).
        appearance_weight: w of the appearance (bilateral) kernel.
        smoothness_bandwidth: theta_gamma, in full-resolution pixels.
        smoothness_weight: w of the smoothness (spatial) kernel.
        compatibility: ``"potts"`` or ``"learned"`` (a 1x1 convolution over classes, the
            paper's +C, initialised to Potts).
        learned_features: the paper's +T: the smoothness kernel's features come from a
            learnable 1x1 map of (position, colour), initialised to the hand-crafted ones.
        unary_weight: weight of the log-softmax unary in the update.
        message_weight: initial per-class weight w_c of the messages.
        trainable: parameter groups that receive gradients, out of
            ``TRAINABLE_GROUPS``; groups whose feature is disabled are ignored.
        intermediate_resolution: where the softmax of the intermediate iterations runs.
            ``"full"`` (default, the paper's and the reference implementation's algorithm):
            every iteration upsamples its messages and normalises at full resolution.
            ``"blurred"`` (opt-in fast mode): all but the last iteration stay on the blurred
            grid with the pooled unary term; only the last one runs at full resolution. This
            removes most of the full-resolution work (about 3x faster CRF on the CPU at
            blur 4); its quality is measured in the README.
    """

    num_classes: int = 21
    filter_size: int = 11
    blur: int = 4
    iterations: int = 5
    appearance_position_bandwidth: float = 80.0
    appearance_color_bandwidth: float = 13.0
    appearance_weight: float = 10.0
    smoothness_bandwidth: float = 3.0
    smoothness_weight: float = 3.0
    compatibility: Literal["potts", "learned"] = "potts"
    learned_features: bool = False
    unary_weight: float = 1.0
    message_weight: float = 0.2
    trainable: tuple[str, ...] = field(default=TRAINABLE_GROUPS)
    intermediate_resolution: Literal["full", "blurred"] = "full"

    def __post_init__(self) -> None:
        def fail(name: str, message: str) -> None:
            raise ValueError(f"CRFConfig.{name}: {message}")

        for name in ("num_classes", "filter_size", "blur", "iterations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                fail(name, f"must be an int, got {value!r}")
        if self.num_classes < 2:
            fail("num_classes", f"must be >= 2, got {self.num_classes}: the CRF compares "
                 "classes, so with one class every probability is 1. For a single-foreground "
                 "model use 2 classes with logits [0, f] (background 0, foreground logit f), "
                 "e.g. torch.cat([torch.zeros_like(f), f], dim=1)")
        try:
            validate_filter_size(self.filter_size)
        except ValueError as exc:
            fail("filter_size", str(exc).removeprefix("filter_size "))
        if self.blur < 1:
            fail("blur", f"must be >= 1 (1 disables blurring), got {self.blur}")
        if self.iterations < 0:
            fail("iterations", f"must be >= 0, got {self.iterations}")
        for name in ("appearance_position_bandwidth", "appearance_color_bandwidth",
                     "smoothness_bandwidth"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0 or value != value:
                fail(name, f"must be a positive number, got {value!r}")
        for name in ("appearance_weight", "smoothness_weight", "unary_weight", "message_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
                fail(name, f"must be a finite number, got {value!r}")
        if self.compatibility not in ("potts", "learned"):
            fail("compatibility", f"must be 'potts' or 'learned', got {self.compatibility!r}")
        if self.intermediate_resolution not in ("full", "blurred"):
            fail("intermediate_resolution", f"must be 'full' or 'blurred', got "
                 f"{self.intermediate_resolution!r}")
        if not isinstance(self.learned_features, bool):
            fail("learned_features", f"must be a bool, got {self.learned_features!r}")
        if isinstance(self.trainable, str):
            fail("trainable", "must be a tuple of group names, not a string")
        object.__setattr__(self, "trainable", tuple(self.trainable))
        unknown = [g for g in self.trainable if g not in TRAINABLE_GROUPS]
        if unknown:
            fail("trainable", f"unknown group(s) {unknown}; choose from {list(TRAINABLE_GROUPS)}")

    def replace(self, **changes: Any) -> "CRFConfig":
        """A copy with some fields changed (validated like the constructor)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dictionary (used in checkpoints and ONNX metadata)."""
        data = dataclasses.asdict(self)
        data["trainable"] = list(self.trainable)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CRFConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"CRFConfig: unknown field(s) {unknown}")
        data = dict(data)
        if "trainable" in data:
            data["trainable"] = tuple(data["trainable"])
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "CRFConfig":
        return cls.from_dict(json.loads(text))
