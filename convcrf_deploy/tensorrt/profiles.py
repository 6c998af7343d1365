"""Optimisation profiles of an engine's ``image`` input: ``"NxCxHxW"`` shapes and the
``min``/``opt``/``max`` triple TensorRT builds for (no tensorrt needed)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

Shape = tuple[int, int, int, int]
_SHAPE_PATTERN = re.compile(r"^\s*(\d+)\s*[xX*,]\s*(\d+)\s*[xX*,]\s*(\d+)\s*[xX*,]\s*(\d+)\s*$")

def parse_shape(text: str | Sequence[int]) -> Shape:
    """``"1x3x480x640"`` (or ``"1,3,480,640"``, or a 4-sequence) -> ``(1, 3, 480, 640)``.

    Raises ``ValueError`` unless there are four positive integers with 3 channels.
    """
    if isinstance(text, str):
        match = _SHAPE_PATTERN.match(text)
        if not match:
            raise ValueError(f"shape {text!r} must be NxCxHxW with four positive integers, "
                             "e.g. 1x3x480x640")
        dims = tuple(int(v) for v in match.groups())
    else:
        dims = tuple(int(v) for v in text)
        if len(dims) != 4:
            raise ValueError(f"shape {tuple(text)!r} must have four dimensions N, C, H, W")
    if min(dims) < 1:
        raise ValueError(f"shape {'x'.join(map(str, dims))}: every dimension must be >= 1")
    if dims[1] != 3:
        raise ValueError(f"shape {'x'.join(map(str, dims))}: the image input has 3 (RGB) channels, "
                         f"got C={dims[1]}")
    return dims  # type: ignore[return-value]

@dataclass(frozen=True)
class Profile:
    """Optimisation profile of the ``image`` input: ``min <= opt <= max`` per dimension."""

    min: Shape
    opt: Shape
    max: Shape

    def __post_init__(self) -> None:
        for lo, mid, hi in zip(self.min, self.opt, self.max):
            if not lo <= mid <= hi:
                raise ValueError(f"profile needs min <= opt <= max in every dimension, got "
                                 f"min={_fmt(self.min)} opt={_fmt(self.opt)} max={_fmt(self.max)}")

    @classmethod
    def resolve(cls, min_shape=None, opt_shape=None, max_shape=None,
                input_size: Sequence[int] | None = None) -> "Profile":
        """Fill in missing shapes: ``opt`` defaults to ``1x3xHxW`` of the model's nominal
        ``input_size`` (else the given min/max), missing ``min``/``max`` default to ``opt``
        (a static engine is the fastest)."""
        given = {k: parse_shape(v) for k, v in
                 (("min", min_shape), ("opt", opt_shape), ("max", max_shape)) if v is not None}
        opt = given.get("opt")
        if opt is None and input_size is not None:
            opt = (1, 3, int(input_size[0]), int(input_size[1]))
            lo, hi = given.get("min"), given.get("max")
            if lo is not None or hi is not None:
                # Clamp the nominal size into the given range.
                opt = tuple(max(lo[i] if lo else 0, min(hi[i] if hi else 1 << 30, opt[i]))
                            for i in range(4))
        if opt is None:
            opt = given.get("min") or given.get("max")
        if opt is None:
            raise ValueError("no input shape: pass --opt NxCxHxW (and --min/--max for dynamic "
                             "shapes), or use an ONNX file exported by convcrf-export")
        return cls(given.get("min", opt), opt, given.get("max", opt))

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

def _fmt(shape: Sequence[int]) -> str:
    return "x".join(str(v) for v in shape)
