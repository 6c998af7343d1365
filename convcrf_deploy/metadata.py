"""`ModelMetadata`: what a deployed model needs besides its weights (no torch needed).

The same record travels in checkpoints (``save_model``), in ONNX ``metadata_props`` (under the
keys of :data:`ONNX_KEYS`) and into the runtime, which uses it for pre- and post-processing.
"""
from __future__ import annotations

import json
import typing
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Sequence

#: ONNX metadata_props keys written by the export and read by the runtime.
ONNX_KEYS = {
    "classes": "convcrf.classes",            # JSON list of class names
    "palette": "convcrf.palette",            # JSON list of [r, g, b] (0..255), one per class
    "normalization": "convcrf.normalization",  # JSON {"mean": [3], "std": [3]} (in-graph)
    "input_size": "convcrf.input_size",      # JSON [height, width]: nominal input size
    "resize": "convcrf.resize",              # "none" | "stretch" | "letterbox"
    "crf_config": "convcrf.crf_config",      # CRFConfig.to_json()
    "crf_state": "convcrf.crf_state",        # JSON {name: values} of the CRF's state_dict
    "version": "convcrf.version",            # toolkit version that exported the file
    "flavor": "convcrf.flavor",              # export flavour
    "pad_multiple": "convcrf.pad_multiple",  # int: H and W must be multiples of it (absent: 1)
    "min_size": "convcrf.min_size",          # int: H and W must be at least this (absent: 1)
    "quantization": "convcrf.quantization",  # JSON: how the unary was quantised (INT8 only)
}

ResizePolicy = Literal["none", "stretch", "letterbox"]
#: Largest ``pad_multiple`` / ``min_size`` accepted (larger values are typos, not networks).
MAX_CONSTRAINT = 1024
RESIZE_POLICIES: tuple[str, ...] = typing.get_args(ResizePolicy)


def default_palette(num_classes: int) -> list[list[int]]:
    """PASCAL VOC's colour map (bit-interleaved class index), extended to any class count."""
    palette = []
    for index in range(num_classes):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.append([r, g, b])
    return palette


#: Largest image side anything here accepts (16K video): beyond it one frame alone needs
#: gigabytes, and the failure would be an allocation error deep inside a run.
MAX_IMAGE_SIDE = 16384


def checked_size(size: Any, what: str = "input_size") -> tuple[int, int]:
    """``size`` as ``(height, width)`` ints in 1..:data:`MAX_IMAGE_SIDE`; ``ValueError`` (one
    line naming ``what``, the value and the form expected) otherwise."""
    try:
        if isinstance(size, (str, bytes)) or len(size) != 2:
            raise TypeError
        height, width = (int(v) for v in size)
        if any(float(v) != int(v) for v in size):
            raise TypeError
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be (height, width), two ints, got {size!r}") from None
    if not (1 <= height <= MAX_IMAGE_SIDE and 1 <= width <= MAX_IMAGE_SIDE):
        raise ValueError(f"{what} must be (height, width) in 1..{MAX_IMAGE_SIDE} px, got "
                         f"{(height, width)}")
    return height, width


@dataclass
class ModelMetadata:
    """Description of a segmentation model's classes and input convention.

    Attributes:
        class_names: one name per output class, in channel order: a list of distinct,
            non-empty names (a string, an empty or a repeated name is a ValueError).
        palette: one ``[r, g, b]`` colour (0..255) per class, for overlays.
        mean, std: the unary's input normalisation, applied to RGB scaled to 0..1:
            ``(image / 255 - mean) / std``. Exported graphs apply it themselves.
        input_size: nominal ``(height, width)`` the model was trained at.
        resize: how the runtime maps a frame to the model: ``"none"`` (feed the frame as is),
            ``"stretch"`` (resize to ``input_size``) or ``"letterbox"`` (fit inside, pad).
        pad_multiple, min_size: the unary's input constraints: image height and width must be
            multiples of ``pad_multiple`` (e.g. 32 for a U-Net with output stride 32) and at
            least ``min_size`` pixels (e.g. 32 for a Segformer, whose first attention stage
            reduces 8x8 blocks of a 1/4-resolution map). 1 means no constraint.
            ``convcrf-export`` detects them by probing (or takes ``--pad-multiple`` /
            ``--min-size``). An image that does not satisfy them is padded at the bottom and
            right by repeating its edge pixels to :meth:`padded_size`, the whole model (unary
            and CRF) runs on the padded image, and the outputs are cropped back: in
            ``SegmentationModel.forward``, in every runtime backend's ``infer`` and in the
            ``Segmenter``.
    """

    class_names: list[str]
    palette: list[list[int]] = field(default_factory=list)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    input_size: tuple[int, int] = (240, 320)
    resize: ResizePolicy = "stretch"
    pad_multiple: int = 1
    min_size: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.class_names, (str, bytes)):
            # list("abcd") would be four one-letter classes (new-user trial: JSON metadata
            # with "class_names": "abcd" exported silently).
            raise ValueError(f"ModelMetadata.class_names: a list of names, got the string "
                             f"{self.class_names!r} (JSON: [\"road\", \"car\"]; command "
                             "line: --class-names road,car)")
        self.class_names = [str(name) for name in self.class_names]
        if not self.class_names:
            raise ValueError("ModelMetadata.class_names: at least one class is needed")
        blank = [i for i, name in enumerate(self.class_names) if not name.strip()]
        if blank:
            raise ValueError(f"ModelMetadata.class_names: class {blank[0]} has an empty name "
                             f"(names: {self.class_names!r}); give every class a name")
        seen: dict[str, int] = {}
        for i, name in enumerate(self.class_names):
            if name in seen:
                raise ValueError(f"ModelMetadata.class_names: {name!r} names classes "
                                 f"{seen[name]} and {i}; give each class its own name")
            seen[name] = i
        if not self.palette:
            self.palette = default_palette(len(self.class_names))
        self.palette = [[int(v) for v in colour] for colour in self.palette]
        if len(self.palette) != len(self.class_names) or any(
                len(colour) != 3 or not all(0 <= v <= 255 for v in colour) for colour in self.palette):
            raise ValueError("ModelMetadata.palette: need one [r, g, b] in 0..255 per class "
                             f"({len(self.class_names)}), got {self.palette!r}")
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        if len(self.mean) != 3 or len(self.std) != 3 or any(v <= 0 for v in self.std):
            raise ValueError("ModelMetadata.mean/std: three values each, std > 0")
        self.input_size = checked_size(self.input_size, "ModelMetadata.input_size")
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"ModelMetadata.resize: 'none', 'stretch' or 'letterbox', got "
                             f"{self.resize!r}")
        for name in ("pad_multiple", "min_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not \
                    1 <= value <= MAX_CONSTRAINT:
                raise ValueError(f"ModelMetadata.{name}: an int in 1..{MAX_CONSTRAINT}, got "
                                 f"{value!r}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # -- input constraints ---------------------------------------------------------------------
    @property
    def constrained(self) -> bool:
        """Whether the unary has input constraints (:attr:`pad_multiple` or :attr:`min_size`)."""
        return self.pad_multiple > 1 or self.min_size > 1

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The smallest ``(H, W) >= (height, width)`` that satisfies the input constraints:
        each side raised to :attr:`min_size`, then rounded up to a multiple of
        :attr:`pad_multiple`. ``(height, width)`` itself when it satisfies them."""
        def side(n: int) -> int:
            n = max(int(n), self.min_size)
            return -(-n // self.pad_multiple) * self.pad_multiple
        return side(height), side(width)

    def satisfied_by(self, height: int, width: int) -> bool:
        """Whether an image of ``height x width`` meets the input constraints as it is."""
        return self.padded_size(height, width) == (height, width)

    def describe_constraints(self) -> str:
        """The constraints in words with the flags that set them, e.g. ``"height and width
        multiples of 32 (--pad-multiple 32)"``; ``"none"`` without constraints."""
        parts = []
        if self.pad_multiple > 1:
            parts.append(f"multiples of {self.pad_multiple} (--pad-multiple {self.pad_multiple})")
        if self.min_size > 1:
            parts.append(f"at least {self.min_size} px (--min-size {self.min_size})")
        return "height and width " + " and ".join(parts) if parts else "none"

    @classmethod
    def for_classes(cls, names: Sequence[str], **kwargs: Any) -> "ModelMetadata":
        return cls(class_names=list(names), **kwargs)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        data["input_size"] = list(self.input_size)
        for name in ("pad_multiple", "min_size"):   # omitted when 1: older readers load the
            if data[name] == 1:                     # file unchanged
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelMetadata":
        known = {"class_names", "palette", "mean", "std", "input_size", "resize",
                 "pad_multiple", "min_size"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"ModelMetadata: unknown field(s) {unknown}")
        return cls(**data)

    def to_onnx_props(self) -> dict[str, str]:
        """The metadata_props entries (strings) describing this model."""
        return {
            ONNX_KEYS["classes"]: json.dumps(self.class_names),
            ONNX_KEYS["palette"]: json.dumps(self.palette),
            ONNX_KEYS["normalization"]: json.dumps({"mean": list(self.mean), "std": list(self.std)}),
            ONNX_KEYS["input_size"]: json.dumps(list(self.input_size)),
            ONNX_KEYS["resize"]: self.resize,
            ONNX_KEYS["pad_multiple"]: str(self.pad_multiple),
            ONNX_KEYS["min_size"]: str(self.min_size),
        }

    @classmethod
    def from_onnx_props(cls, props: dict[str, str]) -> "ModelMetadata":
        """Inverse of :meth:`to_onnx_props`; raises ``ValueError`` naming a missing key."""
        try:
            norm = json.loads(props[ONNX_KEYS["normalization"]])
            return cls(class_names=json.loads(props[ONNX_KEYS["classes"]]),
                       palette=json.loads(props[ONNX_KEYS["palette"]]),
                       mean=norm["mean"], std=norm["std"],
                       input_size=json.loads(props[ONNX_KEYS["input_size"]]),
                       resize=props.get(ONNX_KEYS["resize"], "stretch"),
                       # absent in files exported before input constraints were recorded
                       pad_multiple=_int_prop(props, "pad_multiple"),
                       min_size=_int_prop(props, "min_size"))
        except KeyError as exc:
            raise ValueError(f"ONNX file lacks metadata {exc.args[0]!r}: was it exported by "
                             "convcrf-export?") from exc
        except (json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"ONNX file has malformed convcrf metadata: {exc}") from exc


def _int_prop(props: dict[str, str], name: str) -> int:
    """An integer metadata_prop (1 when absent: files exported before it existed)."""
    text = props.get(ONNX_KEYS[name], "1")
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"ONNX file has malformed convcrf metadata: {ONNX_KEYS[name]} is "
                         f"{text[:40]!r}, not an integer") from None
