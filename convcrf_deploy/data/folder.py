"""`LabelledFolder`: image / label-map pairs on disk, for evaluation and training.

Two layouts are recognised:

* the ConvCRF sample layout: ``NAME_0img.png`` (or ``.jpg``) next to ``NAME_5labels.png``, a
  single-channel PNG of class indices (255 = void);
* PASCAL VOC 2012: ``JPEGImages/NAME.jpg`` and ``SegmentationClass/NAME.png``, palette PNGs.
  OpenCV expands palettes to colours, so the colours are mapped back to class indices with
  VOC's colour map (:func:`convcrf_deploy.metadata.default_palette`); VOC's void colour
  (224, 224, 192) becomes 255. With ``split="val"`` (or another name) only the images listed
  in ``ImageSets/Segmentation/val.txt`` are used. Single-channel index PNGs (e.g.
  ``SegmentationClassAug``) are read as they are.

Example:
    >>> folder = LabelledFolder("VOCdevkit/VOC2012", split="val")
    >>> sample = folder[0]
    >>> sample.image.shape, sample.labels.shape      # (H, W, 3) RGB uint8, (H, W) int64
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..metadata import default_palette
from ..metrics import IGNORE_INDEX

#: PASCAL VOC's colour for void pixels (object borders) in SegmentationClass PNGs.
VOC_VOID_COLOUR = (224, 224, 192)

_SAMPLE_IMAGE = re.compile(r"^(?P<name>.+)_0img\.(png|jpg|jpeg)$", re.IGNORECASE)
_SAMPLE_LABEL_SUFFIX = "_5labels.png"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class DatasetError(ValueError):
    """A labelled folder is missing, empty, inconsistent or unreadable (message says which)."""


@dataclass
class LabelledPair:
    """Paths of one image and its label map."""

    name: str
    image_path: Path
    label_path: Path


@dataclass
class LabelledSample:
    """One loaded pair: ``image`` RGB uint8 ``[H, W, 3]``, ``labels`` int64 ``[H, W]``."""

    name: str
    image: np.ndarray
    labels: np.ndarray

    def resized(self, scale: float) -> "LabelledSample":
        """A copy scaled by ``scale`` (image: area/bilinear, labels: nearest neighbour)."""
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        if scale == 1:
            return self
        cv2 = _cv2()
        height, width = self.labels.shape
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(self.image, size,
                           interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        labels = cv2.resize(self.labels.astype(np.uint8 if self.labels.max() < 256 else np.int32),
                            size, interpolation=cv2.INTER_NEAREST).astype(np.int64)
        return LabelledSample(self.name, image, labels)

    def image_tensor(self):
        """The image as the CRF and models take it: float32 torch tensor ``[1, 3, H, W]``,
        RGB 0..255 (imports torch)."""
        return rgb_to_tensor(self.image)


def rgb_to_tensor(rgb: np.ndarray):
    """``[H, W, 3]`` uint8/float RGB -> float32 torch tensor ``[1, 3, H, W]`` (imports torch)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()


def _cv2():
    try:
        import cv2
    except ImportError as error:  # pragma: no cover - opencv is a declared dependency
        raise ImportError("reading images needs OpenCV: pip install opencv-python") from error
    return cv2


def voc_colour_to_index(label_rgb: np.ndarray, num_classes: int = 21) -> np.ndarray:
    """``[H, W, 3]`` RGB uint8 label colours -> ``[H, W]`` int64 class indices.

    Colours are those of VOC's colour map for classes ``0..num_classes-1``; the void colour
    becomes 255. Any other colour raises :class:`DatasetError` naming it.
    """
    if label_rgb.ndim != 3 or label_rgb.shape[2] != 3:
        raise DatasetError(f"expected an [H, W, 3] colour label image, got {label_rgb.shape}")
    code = ((label_rgb[..., 0].astype(np.int64) << 16) | (label_rgb[..., 1].astype(np.int64) << 8)
            | label_rgb[..., 2].astype(np.int64))
    lookup = {((r << 16) | (g << 8) | b): index
              for index, (r, g, b) in enumerate(default_palette(num_classes))}
    r, g, b = VOC_VOID_COLOUR
    lookup[(r << 16) | (g << 8) | b] = IGNORE_INDEX
    keys = np.array(sorted(lookup), dtype=np.int64)
    values = np.array([lookup[k] for k in keys], dtype=np.int64)
    position = np.clip(np.searchsorted(keys, code), 0, len(keys) - 1)
    known = keys[position] == code
    if not known.all():
        unknown = int(code[~known][0])
        colour = ((unknown >> 16) & 255, (unknown >> 8) & 255, unknown & 255)
        raise DatasetError(f"label colour RGB{colour} is not in the VOC colour map of "
                           f"{num_classes} classes (nor the void colour {VOC_VOID_COLOUR})")
    return values[position]


def read_image(path: str | Path) -> np.ndarray:
    """``[H, W, 3]`` RGB uint8 image; :class:`DatasetError` if it cannot be read."""
    cv2 = _cv2()
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"cannot read image {path} (missing, unreadable or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_labels(path: str | Path, num_classes: int = 21) -> np.ndarray:
    """``[H, W]`` int64 class indices from an index PNG or a VOC colour/palette PNG."""
    cv2 = _cv2()
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise DatasetError(f"cannot read label map {path} (missing, unreadable or not an image)")
    if raw.ndim == 2:
        return raw.astype(np.int64)
    if raw.ndim == 3 and raw.shape[2] in (3, 4):
        try:
            return voc_colour_to_index(cv2.cvtColor(raw[:, :, :3], cv2.COLOR_BGR2RGB), num_classes)
        except DatasetError as error:
            raise DatasetError(f"{path}: {error}") from None
    raise DatasetError(f"label map {path} has shape {raw.shape}; expected a single-channel index "
                       "PNG or a VOC colour PNG")


def _names(paths: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


class LabelledFolder(Sequence[LabelledSample]):
    """Image / label pairs of a folder, in name order; indexing loads one pair.

    Args:
        path: a folder in the sample layout, or a VOC 2012 root (holding ``JPEGImages`` and
            ``SegmentationClass``).
        split: VOC only: a name in ``ImageSets/Segmentation`` (``"train"``, ``"val"``) to
            restrict the images; ``None`` uses every labelled image.
        num_classes: classes of the labels (checked on load; 255 is always allowed).
        max_images: keep only the first N pairs.

    Raises:
        DatasetError: folder missing, no pairs found, images without labels (or, for a split
            list, listed names without files), with the offending names.
    """

    def __init__(self, path: str | Path, *, split: str | None = None, num_classes: int = 21,
                 max_images: int | None = None):
        self.path = Path(path)
        self.num_classes = num_classes
        if not self.path.exists():
            raise DatasetError(f"data folder {self.path} does not exist")
        if not self.path.is_dir():
            raise DatasetError(f"{self.path} is not a folder; pass the folder holding the "
                               "images and labels")
        if (self.path / "JPEGImages").is_dir() and (self.path / "SegmentationClass").is_dir():
            self.layout = "voc"
            pairs = self._voc_pairs(split)
        else:
            if split is not None:
                raise DatasetError(f"split={split!r} needs the VOC layout (JPEGImages/, "
                                   f"SegmentationClass/, ImageSets/Segmentation/) in {self.path}")
            self.layout = "sample"
            pairs = self._sample_pairs()
        if max_images is not None:
            if max_images < 1:
                raise DatasetError(f"max_images must be >= 1, got {max_images}")
            pairs = pairs[:max_images]
        self.pairs: list[LabelledPair] = pairs

    def _sample_pairs(self) -> list[LabelledPair]:
        images, labels = {}, {}
        for file in sorted(self.path.iterdir()):
            match = _SAMPLE_IMAGE.match(file.name)
            if match:
                images[match.group("name")] = file
            elif file.name.endswith(_SAMPLE_LABEL_SUFFIX):
                labels[file.name[:-len(_SAMPLE_LABEL_SUFFIX)]] = file
        if not images and not labels:
            raise DatasetError(
                f"no labelled images in {self.path}: expected NAME_0img.png with "
                "NAME_5labels.png, or a VOC 2012 root with JPEGImages/ and SegmentationClass/")
        self._raise_unmatched([
            ("images without a NAME_5labels.png:", sorted(set(images) - set(labels))),
            ("labels without a NAME_0img.png:", sorted(set(labels) - set(images)))])
        return [LabelledPair(name, images[name], labels[name]) for name in sorted(images)]

    def _voc_pairs(self, split: str | None) -> list[LabelledPair]:
        image_dir, label_dir = self.path / "JPEGImages", self.path / "SegmentationClass"
        if split is not None:
            list_file = self.path / "ImageSets" / "Segmentation" / f"{split}.txt"
            if not list_file.is_file():
                raise DatasetError(f"split list {list_file} does not exist; available: "
                                   f"{sorted(p.stem for p in list_file.parent.glob('*.txt'))}")
            names = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        else:
            names = sorted(p.stem for p in label_dir.glob("*.png"))
        if not names:
            raise DatasetError(f"no labelled images in {self.path} (SegmentationClass/ is empty"
                               + (f" or {split}.txt lists none)" if split else ")"))
        pairs, missing_images, missing_labels = [], [], []
        for name in names:
            image = next((image_dir / (name + s) for s in _IMAGE_SUFFIXES
                          if (image_dir / (name + s)).is_file()), None)
            label = label_dir / f"{name}.png"
            if image is None:
                missing_images.append(name)
            if not label.is_file():
                missing_labels.append(name)
            if image is not None and label.is_file():
                pairs.append(LabelledPair(name, image, label))
        self._raise_unmatched([("no JPEGImages/NAME.jpg for", missing_images),
                               ("no SegmentationClass/NAME.png for", missing_labels)])
        return pairs

    def _raise_unmatched(self, problems: list[tuple[str, list[str]]]) -> None:
        """DatasetError listing every ``(what, names)`` with names, if there is any."""
        found = [f"{what} {_names(names)}" for what, names in problems if names]
        if found:
            raise DatasetError(f"unmatched files in {self.path}: " + "; ".join(found))

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> LabelledSample:  # type: ignore[override]
        if isinstance(index, slice):
            raise TypeError("LabelledFolder supports integer indices; use .pairs for slicing")
        pair = self.pairs[index]
        image = read_image(pair.image_path)
        labels = read_labels(pair.label_path, self.num_classes)
        if image.shape[:2] != labels.shape:
            raise DatasetError(f"{pair.name}: image {pair.image_path.name} is "
                               f"{image.shape[1]}x{image.shape[0]} but label map "
                               f"{pair.label_path.name} is {labels.shape[1]}x{labels.shape[0]} "
                               "(width x height); they must match pixel for pixel")
        bad = labels[(labels >= self.num_classes) & (labels != IGNORE_INDEX)]
        if bad.size:
            raise DatasetError(f"{pair.label_path}: class {int(bad[0])} outside "
                               f"0..{self.num_classes - 1} (255 = void); check num_classes")
        return LabelledSample(pair.name, image, labels)

    def __iter__(self) -> Iterator[LabelledSample]:
        for index in range(len(self)):
            yield self[index]

    def __repr__(self) -> str:
        return f"LabelledFolder({str(self.path)!r}, layout={self.layout!r}, images={len(self)})"
