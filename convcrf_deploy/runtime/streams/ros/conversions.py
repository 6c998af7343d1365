"""ROS image messages <-> numpy, shared by the bag source, the bag sink and the example node.

The functions read messages by attribute only (``msg.height``, ``msg.data``, ...), so they take
``rosbags`` messages and ``rclpy`` messages alike; the ``*_fields`` functions return the fields
of a message to build (``Image(header=..., **fields)``), with ``data`` as a uint8 numpy array
(``rosbags`` takes it as is; ``rclpy`` wants ``bytes``: ``data.tobytes()``). Nothing here imports
ROS or ``rosbags``.

Layouts (ROS 2 ``sensor_msgs``, REP 118 for ``step``):

* ``sensor_msgs/msg/Image``: ``height`` x ``width`` pixels, ``encoding`` names the pixel format,
  ``step`` is the row length in bytes (>= ``width`` x bytes per pixel: rows may be padded),
  ``data`` holds exactly ``step`` x ``height`` bytes; ``is_bigendian`` applies to 16-bit pixels.
* ``sensor_msgs/msg/CompressedImage``: ``format`` is ``"jpeg"``/``"png"`` or image_transport's
  ``"<encoding>; jpeg compressed bgr8"`` form; ``data`` is the encoded file.
"""
from __future__ import annotations

import array
from typing import Any, NamedTuple

import cv2
import numpy as np

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_IMAGE_TYPE)

#: encoding -> (channels, numpy dtype, OpenCV conversion to BGR or None)
IMAGE_ENCODINGS: dict[str, tuple[int, type, int | None]] = {
    "bgr8": (3, np.uint8, None),
    "rgb8": (3, np.uint8, cv2.COLOR_RGB2BGR),
    "bgra8": (4, np.uint8, cv2.COLOR_BGRA2BGR),
    "rgba8": (4, np.uint8, cv2.COLOR_RGBA2BGR),
    "mono8": (1, np.uint8, cv2.COLOR_GRAY2BGR),
    "mono16": (1, np.uint16, cv2.COLOR_GRAY2BGR),
}
COMPRESSED_FORMATS = ("jpeg", "png")


class ImageConversionError(ValueError):
    """A message that cannot be converted (damaged: sizes disagree, undecodable data)."""


class UnsupportedImageError(ImageConversionError):
    """A message type, ``encoding`` or ``format`` this module does not convert; the text lists
    what is supported."""


class Stamp(NamedTuple):
    """A ROS time (``builtin_interfaces/msg/Time``): ``sec`` and ``nanosec`` (0..999999999).

    Field names match ROS messages, so code reading ``stamp.sec``/``stamp.nanosec`` works on
    either."""

    sec: int
    nanosec: int

    @classmethod
    def of(cls, stamp: Any) -> "Stamp":
        """From any object with ``sec`` and ``nanosec`` (ROS 1 ``nsecs``/``secs`` too)."""
        sec = getattr(stamp, "sec", getattr(stamp, "secs", None))
        nanosec = getattr(stamp, "nanosec", getattr(stamp, "nsecs", None))
        return cls(int(sec), int(nanosec))

    @classmethod
    def from_ns(cls, nanoseconds: int) -> "Stamp":
        return cls(*divmod(int(nanoseconds), 1_000_000_000))

    @property
    def nanoseconds(self) -> int:
        return self.sec * 1_000_000_000 + self.nanosec


def supported_message_types() -> str:
    return (f"{IMAGE_TYPE} ({', '.join(IMAGE_ENCODINGS)}) or {COMPRESSED_IMAGE_TYPE} "
            f"({', '.join(COMPRESSED_FORMATS)})")


def image_to_bgr(msg: Any) -> np.ndarray:
    """A ``sensor_msgs/msg/Image`` -> BGR uint8 ``[height, width, 3]`` (a new array).

    16-bit ``mono16`` keeps its 8 most significant bits. Raises :class:`ImageConversionError`
    for an unsupported ``encoding`` or when ``step``/``data`` disagree with ``width`` x
    ``height``.
    """
    encoding = str(msg.encoding)
    if encoding not in IMAGE_ENCODINGS:
        raise UnsupportedImageError(f"unsupported Image encoding {encoding!r}; supported: "
                                   f"{', '.join(IMAGE_ENCODINGS)}")
    channels, dtype, conversion = IMAGE_ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    pixel_bytes = channels * np.dtype(dtype).itemsize
    data = np.frombuffer(memoryview(msg.data).cast("B"), np.uint8)
    if height < 1 or width < 1:
        raise ImageConversionError(f"empty Image {width}x{height}")
    if step < width * pixel_bytes:
        raise ImageConversionError(f"Image step {step} < width {width} x {pixel_bytes} bytes "
                                   f"per {encoding} pixel")
    if data.size != step * height:
        raise ImageConversionError(f"Image data has {data.size} bytes, step {step} x height "
                                   f"{height} = {step * height} expected")
    rows = data.reshape(height, step)[:, :width * pixel_bytes]
    if np.dtype(dtype).itemsize == 2:
        order = ">" if int(getattr(msg, "is_bigendian", 0)) else "<"
        pixels = np.ascontiguousarray(rows).view(np.dtype(dtype).newbyteorder(order))
        image = (pixels.reshape(height, width) >> 8).astype(np.uint8)
    else:
        image = rows.reshape(height, width, channels) if channels > 1 else rows
    if conversion is None:
        return np.ascontiguousarray(image)
    return cv2.cvtColor(np.ascontiguousarray(image), conversion)


def compressed_to_bgr(msg: Any) -> np.ndarray:
    """A ``sensor_msgs/msg/CompressedImage`` (JPEG or PNG) -> BGR uint8 ``[H, W, 3]``.

    image_transport compresses colour images as BGR whatever their raw encoding, so the decoded
    file is BGR. Raises :class:`ImageConversionError` for other formats (e.g.
    ``compressedDepth``) or undecodable data.
    """
    fmt = str(msg.format).lower()
    if "compresseddepth" in fmt or not any(name in fmt for name in ("jpeg", "jpg", "png")):
        raise UnsupportedImageError(f"unsupported CompressedImage format {msg.format!r}; "
                                   f"supported: {', '.join(COMPRESSED_FORMATS)}")
    data = np.frombuffer(memoryview(msg.data).cast("B"), np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise ImageConversionError(f"CompressedImage data ({data.size} bytes) is not a "
                                   f"readable {fmt} file")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


def message_to_bgr(msg: Any, msgtype: str) -> np.ndarray:
    """Dispatch on ``msgtype`` (:data:`IMAGE_TYPES`) to the functions above."""
    if msgtype == IMAGE_TYPE:
        return image_to_bgr(msg)
    if msgtype == COMPRESSED_IMAGE_TYPE:
        return compressed_to_bgr(msg)
    raise UnsupportedImageError(f"{msgtype} is not an image; supported: "
                               f"{supported_message_types()}")


def labels_fields(labels: np.ndarray) -> dict[str, Any]:
    """``[H, W]`` class indices -> ``sensor_msgs/msg/Image`` fields: ``mono8`` (up to 256
    classes) or ``mono16`` (little-endian), one class index per pixel."""
    if labels.ndim != 2:
        raise ValueError(f"labels must be [H, W], got shape {labels.shape}")
    if labels.dtype == np.uint8:
        encoding, pixels = "mono8", labels
    elif labels.size == 0 or (labels.min() >= 0 and labels.max() < 65536):
        encoding, pixels = "mono16", labels.astype("<u2")
    else:
        raise ValueError("labels outside 0..65535 cannot be stored as an Image")
    height, width = labels.shape
    return {"height": height, "width": width, "encoding": encoding, "is_bigendian": 0,
            "step": width * pixels.itemsize,
            "data": np.ascontiguousarray(pixels).view(np.uint8).reshape(-1)}


def bgr_image_fields(image: np.ndarray) -> dict[str, Any]:
    """BGR uint8 ``[H, W, 3]`` -> ``sensor_msgs/msg/Image`` ``bgr8`` fields (unpadded rows)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be BGR uint8 [H, W, 3], got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    return {"height": height, "width": width, "encoding": "bgr8", "is_bigendian": 0,
            "step": width * 3, "data": np.ascontiguousarray(image).reshape(-1)}


def jpeg_fields(image: np.ndarray, quality: int = 90) -> dict[str, Any]:
    """BGR uint8 ``[H, W, 3]`` -> ``sensor_msgs/msg/CompressedImage`` fields (``format``
    ``"jpeg"``, quality 0..100)."""
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"cannot JPEG-encode an image of shape {image.shape}")
    return {"format": "jpeg", "data": encoded.reshape(-1)}


def rclpy_message(message_class: Any, header: Any, fields: dict[str, Any]) -> Any:
    """Build an rclpy message (e.g. ``sensor_msgs.msg.Image``) from ``header`` and the fields
    of :func:`labels_fields`/:func:`bgr_image_fields`/:func:`jpeg_fields`; ``data`` is passed
    as ``array.array("B")``, the type rclpy stores ``uint8[]`` in (no per-element check)."""
    return message_class(header=header, **{**fields,
                                           "data": array.array("B", fields["data"].tobytes())})
