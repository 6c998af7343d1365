"""`LabelledFolder`: image / label-map pairs on disk, for evaluation and training.

Two layouts are recognised:

* the ConvCRF sample layout: ``NAME_0img.png`` (or ``.jpg``) next to ``NAME_5labels.png``, a
  single-channel PNG of class indices (255 = void);
* PASCAL VOC 2012: ``JPEGImages/NAME.jpg`` and ``SegmentationClass/NAME.png``, palette PNGs.
  With ``split="val"`` (or another name) only the images listed in
  ``ImageSets/Segmentation/val.txt`` are used.

Label maps (:func:`read_labels`, with Pillow): palette PNGs are read by their *indices*,
whatever colours the palette holds (VOC's, only the classes' colours, or a custom one), so void
(255) stays 255; single-channel PNGs (e.g. ``SegmentationClassAug``) are read as they are;
RGB colour PNGs are mapped back to classes with VOC's colour map
(:func:`convcrf_deploy.metadata.default_palette`, void colour (224, 224, 192) -> 255).

EXIF orientation, one policy for every reader of the toolkit: an image is used as viewers
show it (its EXIF orientation applied: :func:`read_image` here, the image sources of
``convcrf-run``), and a label map is given *its image's* orientation, so the two always agree
pixel for pixel (label PNGs are drawn on the image's stored pixel grid; their own EXIF, which
annotation tools do not write, is ignored).

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
#: folders of label maps in PASCAL VOC and its augmented set.
_LABEL_FOLDERS = ("SegmentationClass", "SegmentationObject", "SegmentationClassAug")


def is_label_map(path: str | Path) -> bool:
    """Whether :class:`LabelledFolder` would read ``path`` as a label map rather than an
    image: ``NAME_5labels.png`` (the sample layout) or a file in a VOC label folder
    (``SegmentationClass/``, ``SegmentationObject/``, ``SegmentationClassAug/``). The video
    sources of ``convcrf-run`` skip these."""
    path = Path(path)
    return path.name.lower().endswith(_SAMPLE_LABEL_SUFFIX) or path.parent.name in _LABEL_FOLDERS


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


def _open(path: str | Path, what: str, decode: bool = True):
    """The Pillow image of ``path`` (decoded unless ``decode`` is False: header only);
    :class:`DatasetError` if it cannot be read."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as error:  # pragma: no cover - pillow is a declared dependency
        raise ImportError("reading labelled images needs Pillow: pip install pillow") from error
    try:
        image = Image.open(path)
        if decode:
            image.load()
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DatasetError(f"cannot read {what} {path} (missing, unreadable or not an image: "
                           f"{error})") from None
    return image


#: EXIF orientation tag -> how to turn the stored pixels into the viewed image.
_EXIF_ORIENTATION = 0x0112


def exif_orientation(path: str | Path) -> int:
    """The EXIF orientation (1..8; 1 = as stored) of an image file, 1 when it has none."""
    value = _open(path, "image", decode=False).getexif().get(_EXIF_ORIENTATION, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """``array`` (``[H, W, ...]``) as EXIF ``orientation`` says it is viewed (the same
    transform as ``PIL.ImageOps.exif_transpose``)."""
    transforms = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1],
                  4: lambda a: a[::-1], 5: lambda a: a.swapaxes(0, 1),
                  6: lambda a: np.rot90(a, -1), 7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
                  8: lambda a: np.rot90(a, 1)}
    return np.ascontiguousarray(transforms.get(orientation, transforms[1])(array))


def read_image(path: str | Path) -> np.ndarray:
    """``[H, W, 3]`` RGB uint8 image, EXIF orientation applied (the module's policy);
    :class:`DatasetError` if it cannot be read."""
    image = _open(path, "image")
    orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    rgb = np.array(image.convert("RGB"))       # a writable copy (torch.from_numpy)
    return apply_orientation(rgb, orientation if isinstance(orientation, int) else 1)


def read_labels(path: str | Path, num_classes: int = 21) -> np.ndarray:
    """``[H, W]`` int64 class indices (255 = void) from a label PNG, in its stored pixel
    order: palette PNGs by index whatever their palette, single-channel PNGs as they are,
    RGB PNGs through VOC's colour map. :class:`DatasetError` for anything else."""
    image = _open(path, "label map")
    if image.mode == "P":
        return np.asarray(image, dtype=np.uint8).astype(np.int64)
    if image.mode in ("L", "I", "I;16", "I;16B", "I;16L", "1"):
        return np.asarray(image).astype(np.int64)
    if image.mode in ("RGB", "RGBA"):
        try:
            return voc_colour_to_index(np.asarray(image.convert("RGB")), num_classes)
        except DatasetError as error:
            raise DatasetError(f"{path}: {error}") from None
    raise DatasetError(f"label map {path} is a {image.mode!r} image; expected a palette or "
                       "single-channel index PNG, or a VOC colour PNG")


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
        # The label map takes its image's EXIF orientation (the module's policy).
        labels = apply_orientation(read_labels(pair.label_path, self.num_classes),
                                   exif_orientation(pair.image_path))
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
