"""Message conversions shared by the bag path and the ROS 2 node: layouts built independently
(runtime.streams.ros.testing.image_fields), rclpy-like messages (plain objects, bytes/array data)."""
from __future__ import annotations

import array
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from convcrf_deploy.runtime.streams.ros.conversions import (
    IMAGE_ENCODINGS, ImageConversionError, Stamp, UnsupportedImageError, bgr_image_fields,
    compressed_to_bgr, image_to_bgr, jpeg_fields, labels_fields, message_to_bgr)
from convcrf_deploy.runtime.streams.ros.testing import image_fields, scene_frames


@pytest.fixture(scope="module")
def bgr():
    return scene_frames(1, 39, 45)[0][13:26, 11:28].copy()  # 13 x 17: odd sizes


@pytest.mark.parametrize("encoding", list(IMAGE_ENCODINGS))
@pytest.mark.parametrize("pad", [0, 3])
def test_every_encoding_with_and_without_row_padding(bgr, encoding, pad):
    fields, expected = image_fields(bgr, encoding, pad)
    got = image_to_bgr(SimpleNamespace(**fields))
    assert got.dtype == np.uint8 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, expected)


def test_rclpy_style_data_bytes_and_array(bgr):
    fields, expected = image_fields(bgr, "rgb8", 2)
    for data in (fields["data"].tobytes(), array.array("B", fields["data"].tobytes())):
        msg = SimpleNamespace(**{**fields, "data": data})
        np.testing.assert_array_equal(image_to_bgr(msg), expected)


def test_big_endian_mono16(bgr):
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    data = ((gray.astype(np.uint16) << 8) | 7).astype(">u2").view(np.uint8).reshape(-1)
    msg = SimpleNamespace(height=13, width=17, encoding="mono16", is_bigendian=1, step=34,
                          data=data)
    np.testing.assert_array_equal(image_to_bgr(msg), cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))


@pytest.mark.parametrize("change,message", [
    ({"encoding": "yuv422"}, "unsupported Image encoding 'yuv422'; supported: bgr8"),
    ({"step": 50}, "step 50 < width 17 x 3 bytes"),
    ({"height": 14}, "step 51 x height 14 = 714 expected"),
    ({"width": 0}, "empty Image"),
])
def test_bad_images_say_what_is_wrong(bgr, change, message):
    fields, _ = image_fields(bgr, "bgr8")
    with pytest.raises(ImageConversionError) as info:
        image_to_bgr(SimpleNamespace(**{**fields, **change}))
    assert message in str(info.value)
    assert isinstance(info.value, UnsupportedImageError) == ("encoding" in change)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "rgb8; jpeg compressed bgr8",
                                 "bgr8; png compressed bgr8"])
def test_compressed_formats(bgr, fmt):
    ext = ".png" if "png" in fmt else ".jpg"
    data = cv2.imencode(ext, bgr)[1].reshape(-1)
    got = compressed_to_bgr(SimpleNamespace(format=fmt, data=data))
    np.testing.assert_array_equal(got, cv2.imdecode(data, cv2.IMREAD_COLOR))


def test_compressed_grey_png_becomes_bgr(bgr):
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    data = cv2.imencode(".png", gray)[1].tobytes()
    got = compressed_to_bgr(SimpleNamespace(format="png", data=data))
    np.testing.assert_array_equal(got, cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))


def test_bad_compressed_images():
    with pytest.raises(UnsupportedImageError, match="supported: jpeg, png"):
        compressed_to_bgr(SimpleNamespace(format="16UC1; compressedDepth", data=b"x"))
    with pytest.raises(ImageConversionError, match="not a readable jpeg"):
        compressed_to_bgr(SimpleNamespace(format="jpeg", data=b"\xff\xd8 not really"))
    with pytest.raises(UnsupportedImageError, match="not an image"):
        message_to_bgr(SimpleNamespace(), "std_msgs/msg/String")


def test_outputs_round_trip(bgr):
    labels = (np.arange(13 * 17) % 5).astype(np.uint8).reshape(13, 17)
    fields = labels_fields(labels)
    assert (fields["encoding"], fields["step"]) == ("mono8", 17)
    np.testing.assert_array_equal(image_to_bgr(SimpleNamespace(**fields))[:, :, 0], labels)
    many = (np.arange(13 * 17) * 3).astype(np.int32).reshape(13, 17)  # > 256 classes
    fields = labels_fields(many)
    assert (fields["encoding"], fields["step"], fields["is_bigendian"]) == ("mono16", 34, 0)
    np.testing.assert_array_equal(fields["data"].view("<u2").reshape(13, 17), many)
    np.testing.assert_array_equal(image_to_bgr(SimpleNamespace(**bgr_image_fields(bgr))), bgr)
    jpeg = jpeg_fields(bgr, quality=95)
    assert jpeg["format"] == "jpeg"
    assert np.abs(compressed_to_bgr(SimpleNamespace(**jpeg)).astype(int) - bgr).mean() < 8


def test_stamps():
    stamp = Stamp.from_ns(1_700_000_000_123_456_789)
    assert stamp == (1_700_000_000, 123_456_789)
    assert stamp.nanoseconds == 1_700_000_000_123_456_789
    assert Stamp.of(SimpleNamespace(sec=3, nanosec=4)) == (3, 4)
    assert Stamp.of(SimpleNamespace(secs=3, nsecs=4)) == (3, 4)  # ROS 1 (rospy) names
