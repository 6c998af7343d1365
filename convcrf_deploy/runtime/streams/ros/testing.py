"""Small ROS bags of the demo scene with known stamps, for tests and benchmarks (like
:mod:`convcrf_deploy.runtime.testing` for models); needs ``rosbags``.

Message ``i`` has header stamp ``STAMP0 + i * spacing_ns`` and bag time ``LOG0 + i *
spacing_ns``. The raw layouts are built here with plain numpy/OpenCV, independently of
:mod:`.conversions`, so tests can check the conversions against them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from ....data.scenes import SyntheticScene

TOPIC = "/camera/image_raw"
FRAME_ID = "camera_optical"
STAMP0 = 1_700_000_000 * 10**9 + 123_456_789
LOG0 = STAMP0 + 5_000_000  # recorded 5 ms after capture


def scene_frames(count: int = 4, height: int = 48, width: int = 64, seed: int = 1) -> list:
    """``count`` BGR uint8 frames of the demo scene."""
    scene = SyntheticScene(height=height, width=width, seed=seed)
    return [cv2.cvtColor(scene.render(t)[0], cv2.COLOR_RGB2BGR) for t in range(count)]


def image_fields(bgr: np.ndarray, encoding: str, pad: int = 0) -> dict:
    """Independent of the code under test: the raw layout of ``bgr`` in ``encoding``, each
    row followed by ``pad`` junk bytes, and the BGR image a correct reader must return."""
    if encoding in ("bgr8", "rgb8", "bgra8", "rgba8"):
        code = {"bgr8": None, "rgb8": cv2.COLOR_BGR2RGB, "bgra8": cv2.COLOR_BGR2BGRA,
                "rgba8": cv2.COLOR_BGR2RGBA}[encoding]
        pixels = bgr if code is None else cv2.cvtColor(bgr, code)
        expected = bgr
    elif encoding == "mono8":
        pixels = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        expected = cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    elif encoding == "mono16":
        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        pixels = ((gray.astype(np.uint16) << 8) | 0x5A).astype("<u2")  # low byte: noise to drop
        expected = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    else:
        raise ValueError(encoding)
    height, width = bgr.shape[:2]
    rows = np.ascontiguousarray(pixels).view(np.uint8).reshape(height, -1)
    rows = np.concatenate([rows, np.full((height, pad), 0xEE, np.uint8)], axis=1)
    return {"height": height, "width": width, "encoding": encoding, "is_bigendian": 0,
            "step": rows.shape[1], "data": rows.reshape(-1)}, expected


def write_bag(path: Path, frames: Sequence[np.ndarray], kind: str = "mcap",
              encoding: str = "bgr8", pad: int = 0, topic: str = TOPIC,
              spacing_ns: int = 50_000_000, extra_string_topic: bool = True,
              mutate=None) -> list[np.ndarray]:
    """Write ``frames`` to a bag and return the BGR images a reader must produce.

    kind: ``mcap`` / ``sqlite3`` (rosbag2 folders) or ``ros1`` (``path`` ends in .bag);
    encoding: an Image encoding, or ``jpeg``/``png`` for CompressedImage;
    mutate(i, fields): may change message fields (bad-input tests).
    """
    from rosbags.typesys import Stores, get_typestore

    ros1 = kind == "ros1"
    ts = get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_HUMBLE)
    T = ts.types
    compressed = encoding in ("jpeg", "png")
    msgtype = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    messages, expected = [], []
    for i, bgr in enumerate(frames):
        sec, nanosec = divmod(STAMP0 + i * spacing_ns, 10**9)
        stamp = T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)
        header = (T["std_msgs/msg/Header"](seq=i, stamp=stamp, frame_id=FRAME_ID) if ros1
                  else T["std_msgs/msg/Header"](stamp=stamp, frame_id=FRAME_ID))
        if compressed:
            ok, data = cv2.imencode(".jpg" if encoding == "jpeg" else ".png", bgr)
            fields = {"format": encoding, "data": data.reshape(-1)}
            image = cv2.imdecode(data, cv2.IMREAD_COLOR)
        else:
            fields, image = image_fields(bgr, encoding, pad)
        if mutate is not None:
            mutate(i, fields)
        messages.append(T[msgtype](header=header, **fields))
        expected.append(image)
    serialize = ts.serialize_ros1 if ros1 else ts.serialize_cdr
    string = T["std_msgs/msg/String"](data="hello")
    if ros1:
        from rosbags.rosbag1 import Writer
        writer = Writer(path)
    else:
        from rosbags.rosbag2 import StoragePlugin, Writer
        writer = Writer(path, version=8, storage_plugin=getattr(StoragePlugin, kind.upper()))
    with writer:
        connection = writer.add_connection(topic, msgtype, typestore=ts)
        other = (writer.add_connection("/chatter", "std_msgs/msg/String", typestore=ts)
                 if extra_string_topic else None)
        for i, msg in enumerate(messages):
            writer.write(connection, LOG0 + i * spacing_ns, serialize(msg, msgtype))
            if other is not None:
                writer.write(other, LOG0 + i * spacing_ns + 1, serialize(string,
                                                                         "std_msgs/msg/String"))
    return expected


def read_bag(path: Path) -> dict[str, list]:
    """``{topic: [(msgtype, bag time ns, message), ...]}`` of any bag."""
    from rosbags.highlevel import AnyReader

    out: dict[str, list] = {}
    with AnyReader([Path(path)]) as reader:
        for connection, log_time, raw in reader.messages():
            out.setdefault(connection.topic, []).append(
                (connection.msgtype, log_time, reader.deserialize(raw, connection.msgtype)))
    return out
