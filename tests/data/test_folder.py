"""LabelledFolder: the sample layout, the VOC 2012 layout (palette PNGs) and clear errors."""
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from convcrf_deploy.data.folder import DatasetError, LabelledFolder, voc_colour_to_index
from convcrf_deploy.metadata import default_palette



def write_palette_png(path: Path, indices: np.ndarray, palette: list) -> None:
    """An 8-bit palette PNG as VOC ships them (colour type 3), written byte by byte."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    height, width = indices.shape
    raw = b"".join(b"\x00" + bytes(row) for row in indices.astype(np.uint8))
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0))
                     + chunk(b"PLTE", bytes(v for colour in palette for v in colour))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def write_sample_pair(folder: Path, name: str, labels: np.ndarray, colour=(10, 200, 30)):
    image = np.zeros(labels.shape + (3,), np.uint8)
    image[...] = colour  # RGB
    cv2.imwrite(str(folder / f"{name}_0img.png"), image[:, :, ::-1])
    cv2.imwrite(str(folder / f"{name}_5labels.png"), labels.astype(np.uint8))


def test_sample_layout_pairs_images_and_labels_in_name_order(tmp_path):
    labels = np.array([[0, 1], [2, 255]])
    write_sample_pair(tmp_path, "b", labels)
    write_sample_pair(tmp_path, "a", np.zeros((2, 2), int))
    folder = LabelledFolder(tmp_path)
    assert folder.layout == "sample" and len(folder) == 2
    first, second = list(folder)
    assert (first.name, second.name) == ("a", "b")
    assert second.image.dtype == np.uint8 and second.image.shape == (2, 2, 3)
    np.testing.assert_array_equal(second.image[0, 0], [10, 200, 30])  # RGB, not BGR
    assert second.labels.dtype == np.int64
    np.testing.assert_array_equal(second.labels, labels)


def test_voc_layout_reads_palette_pngs_back_to_class_indices(tmp_path):
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "SegmentationClass").mkdir()
    (tmp_path / "ImageSets/Segmentation").mkdir(parents=True)
    palette = default_palette(256)
    palette[255] = [224, 224, 192]  # VOC's void colour
    indices = np.array([[0, 15, 15], [255, 1, 20]])
    for name in ("2007_000001", "2007_000002"):
        cv2.imwrite(str(tmp_path / "JPEGImages" / f"{name}.jpg"), np.zeros((2, 3, 3), np.uint8))
        write_palette_png(tmp_path / "SegmentationClass" / f"{name}.png", indices, palette)
    cv2.imwrite(str(tmp_path / "JPEGImages" / "unlabelled.jpg"), np.zeros((2, 3, 3), np.uint8))
    (tmp_path / "ImageSets/Segmentation/val.txt").write_text("2007_000002\n")

    everything = LabelledFolder(tmp_path)
    assert everything.layout == "voc"
    assert [p.name for p in everything.pairs] == ["2007_000001", "2007_000002"]
    np.testing.assert_array_equal(everything[0].labels, indices)
    val = LabelledFolder(tmp_path, split="val")
    assert [p.name for p in val.pairs] == ["2007_000002"]
    with pytest.raises(DatasetError, match="train.txt does not exist"):
        LabelledFolder(tmp_path, split="train")


def test_voc_colours_map_to_indices_and_unknown_colours_are_named():
    rgb = np.array([[[0, 0, 0], [128, 0, 0], [224, 224, 192]]], np.uint8)
    np.testing.assert_array_equal(voc_colour_to_index(rgb), [[0, 1, 255]])
    with pytest.raises(DatasetError, match=r"RGB\(1, 2, 3\)"):
        voc_colour_to_index(np.array([[[1, 2, 3]]], np.uint8))


def test_missing_folder_empty_folder_and_unmatched_names_are_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        LabelledFolder(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no labelled images"):
        LabelledFolder(tmp_path)
    write_sample_pair(tmp_path, "ok", np.zeros((2, 2), int))
    cv2.imwrite(str(tmp_path / "lonely_0img.png"), np.zeros((2, 2, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "orphan_5labels.png"), np.zeros((2, 2), np.uint8))
    with pytest.raises(DatasetError, match="without a NAME_5labels.png: lonely.*"
                                           "without a NAME_0img.png: orphan"):
        LabelledFolder(tmp_path)


def test_size_mismatch_bad_class_and_unreadable_file_fail_on_load(tmp_path):
    write_sample_pair(tmp_path, "a", np.zeros((2, 2), int))
    cv2.imwrite(str(tmp_path / "a_5labels.png"), np.zeros((3, 2), np.uint8))
    with pytest.raises(DatasetError, match="2x2 but label map a_5labels.png is 2x3"):
        LabelledFolder(tmp_path)[0]
    cv2.imwrite(str(tmp_path / "a_5labels.png"), np.full((2, 2), 40, np.uint8))
    with pytest.raises(DatasetError, match="class 40 outside 0..20"):
        LabelledFolder(tmp_path)[0]
    (tmp_path / "a_0img.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="cannot read image"):
        LabelledFolder(tmp_path)[0]


def test_the_pascal_voc_sample_loads(voc_sample):
    folder = LabelledFolder(voc_sample)
    assert len(folder) == 7
    sample = folder[0]
    assert sample.image.shape[:2] == sample.labels.shape
    assert set(np.unique(sample.labels)) <= set(range(21)) | {255}


# ---- issue 11: label files as users have them, one EXIF policy -------------------------------

def test_palette_png_is_read_by_index_whatever_the_palette(tmp_path):
    # Field report: a PASCAL-style PNG with only the class colours in its palette turned void
    # (255) into class 0, and a PNG with a custom palette was rejected.
    from convcrf_deploy.data.folder import read_labels
    indices = np.array([[0, 1, 2, 255], [2, 255, 1, 0]])
    write_palette_png(tmp_path / "short.png", indices, default_palette(3))
    custom = [(7 * i % 256, 13 * i % 256, 101 * i % 256) for i in range(256)]
    write_palette_png(tmp_path / "custom.png", indices, custom)
    for name in ("short.png", "custom.png"):
        np.testing.assert_array_equal(read_labels(tmp_path / name, num_classes=3), indices)


def write_oriented_pair(folder: Path, orientation: int):
    """A JPEG whose EXIF orientation is ``orientation`` and its label PNG on the stored grid:
    class 1 where the stored image is bright."""
    from PIL import Image
    labels = np.zeros((32, 32), np.uint8)
    labels[:12, :20] = 1                                   # not symmetric under rotation
    image = Image.fromarray(np.where(labels[..., None] == 1, 230, 20).astype(np.uint8)
                            .repeat(3, axis=2))
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(folder / "photo_0img.jpg", exif=exif, quality=95)
    cv2.imwrite(str(folder / "photo_5labels.png"), labels)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_applies_to_the_image_and_its_label(tmp_path, orientation):
    # Field report: LabelledFolder rotated the photo but not its label (50 % agreement).
    write_oriented_pair(tmp_path, orientation)
    sample = LabelledFolder(tmp_path, num_classes=2)[0]
    bright = sample.image.mean(axis=2) > 128
    assert (bright == (sample.labels == 1)).mean() > 0.98
    from PIL import Image, ImageOps
    viewed = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "photo_0img.jpg")))
    np.testing.assert_array_equal(sample.image, viewed)


def test_orientation_transforms_match_pillow():
    from PIL import Image, ImageOps
    from convcrf_deploy.data.folder import apply_orientation
    array = np.arange(3 * 5, dtype=np.uint8).reshape(3, 5)
    for orientation in range(1, 9):
        image = Image.fromarray(array)
        exif = image.getexif()
        exif[0x0112] = orientation
        image.info["exif"] = exif.tobytes()
        expected = np.asarray(ImageOps.exif_transpose(image))
        np.testing.assert_array_equal(apply_orientation(array, orientation), expected,
                                      err_msg=f"orientation {orientation}")


def test_convcrf_run_image_sources_apply_the_same_orientation(tmp_path):
    # Field report: convcrf-run did not rotate.
    from convcrf_deploy.runtime.streams import open_source
    write_oriented_pair(tmp_path, 6)
    frame = open_source(str(tmp_path / "photo_0img.jpg")).read()
    from convcrf_deploy.data.folder import read_image
    viewed = read_image(tmp_path / "photo_0img.jpg")
    assert np.abs(frame.image[:, :, ::-1].astype(int) - viewed).max() <= 8   # JPEG decoders


def test_voc_sample_folder_can_be_given_by_environment_variable(tmp_path):
    import importlib.util
    from pathlib import Path

    # tests/conftest.py by path: `import conftest` may find a sub-folder's conftest.
    spec = importlib.util.spec_from_file_location(
        "root_conftest", Path(__file__).resolve().parents[1] / "conftest.py")
    root = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(root)
    VOC_SAMPLE_ENV, voc_sample_path = root.VOC_SAMPLE_ENV, root.voc_sample_path
    assert voc_sample_path({VOC_SAMPLE_ENV: str(tmp_path)}) == tmp_path
    assert voc_sample_path({}).parts[-3:] == ("shared", "data", "pascal-voc-sample")
