"""examples/ros2_segmenter_node.py against stand-in rclpy/sensor_msgs modules (ROS 2 cannot
be installed here): it subscribes with the latest-frame QoS, and publishes labels equal to
Segmenter's and an overlay, with the input header, through the shared conversions."""
from __future__ import annotations

import array
import importlib.util
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from convcrf_deploy.runtime import Segmenter
from convcrf_deploy.runtime.streams.ros.testing import image_fields, scene_frames
from convcrf_deploy.runtime.testing import write_toy_onnx

NODE = Path(__file__).resolve().parents[3] / "examples" / "ros2_segmenter_node.py"


class FakeMessage:
    """Like an rclpy message: keyword fields; uint8[] ``data`` must be array.array('B')."""

    def __init__(self, **fields):
        if "data" in fields:
            assert isinstance(fields["data"], array.array) and fields["data"].typecode == "B"
        self.__dict__.update(fields)


class FakeNode:
    def __init__(self, name):
        self.name, self.subscriptions, self.publishers = name, [], {}

    def declare_parameter(self, name, default):
        return SimpleNamespace(value=self.parameters_given.get(name, default))

    def create_subscription(self, cls, topic, callback, qos):
        self.subscriptions.append((cls, topic, callback, qos))

    def create_publisher(self, cls, topic, qos):
        publisher = SimpleNamespace(cls=cls, qos=qos, sent=[],
                                    get_subscription_count=lambda: 1)
        publisher.publish = publisher.sent.append
        self.publishers[topic] = publisher
        return publisher

    def get_logger(self):
        return SimpleNamespace(warning=lambda text, **kw: self.warnings.append(text))


@pytest.fixture
def node_module(monkeypatch, tmp_path):
    qos = types.ModuleType("rclpy.qos")
    qos.HistoryPolicy = SimpleNamespace(KEEP_LAST="keep_last")
    qos.ReliabilityPolicy = SimpleNamespace(BEST_EFFORT="best_effort", RELIABLE="reliable")
    qos.QoSProfile = lambda **kw: SimpleNamespace(**kw)
    node = types.ModuleType("rclpy.node")
    node.Node = FakeNode
    msg = types.ModuleType("sensor_msgs.msg")
    msg.Image = type("Image", (FakeMessage,), {})
    msg.CompressedImage = type("CompressedImage", (FakeMessage,), {})
    for name, module in {"rclpy": types.ModuleType("rclpy"), "rclpy.node": node,
                         "rclpy.qos": qos, "sensor_msgs": types.ModuleType("sensor_msgs"),
                         "sensor_msgs.msg": msg}.items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("ros2_segmenter_node", NODE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, msg


@pytest.mark.parametrize("compressed", [False, True])
def test_node_publishes_labels_and_overlay_with_the_input_header(node_module, tmp_path,
                                                                 compressed):
    module, msg = node_module
    model = str(write_toy_onnx(tmp_path / "toy.onnx", input_size=(60, 80), resize="stretch"))
    FakeNode.parameters_given = {"model": model, "image_topic": "/cam",
                                 "compressed": compressed}
    node = module.SegmenterNode()
    node.warnings = []
    (cls, topic, callback, qos), = node.subscriptions
    assert topic == "/cam" and cls is (msg.CompressedImage if compressed else msg.Image)
    assert (qos.depth, qos.reliability, qos.history) == (1, "best_effort", "keep_last")
    assert set(node.publishers) == {"/cam/convcrf/labels", "/cam/convcrf/overlay/compressed"}

    bgr = scene_frames(1)[0]
    header = SimpleNamespace(stamp=SimpleNamespace(sec=12, nanosec=34), frame_id="cam")
    if compressed:
        data = cv2.imencode(".png", bgr)[1]
        incoming = SimpleNamespace(header=header, format="png",
                                   data=array.array("B", data.tobytes()))
    else:
        fields, _ = image_fields(bgr, "rgb8", pad=4)
        incoming = SimpleNamespace(header=header, **{**fields, "data": array.array(
            "B", fields["data"].tobytes())})
    callback(incoming)
    labels, = node.publishers["/cam/convcrf/labels"].sent
    overlay, = node.publishers["/cam/convcrf/overlay/compressed"].sent
    assert labels.header is header and overlay.header is header
    want = Segmenter(model)(bgr).labels
    assert (labels.encoding, labels.height, labels.width) == ("mono8", *want.shape)
    np.testing.assert_array_equal(np.frombuffer(labels.data, np.uint8).reshape(want.shape), want)
    assert overlay.format == "jpeg"
    assert cv2.imdecode(np.frombuffer(overlay.data, np.uint8), cv2.IMREAD_COLOR).shape == bgr.shape

    callback(SimpleNamespace(header=header, height=2, width=2, encoding="32FC1", step=8,
                             is_bigendian=0, format="?", data=array.array("B", bytes(16))))
    assert len(node.publishers["/cam/convcrf/labels"].sent) == 1  # skipped, with a warning
    assert len(node.warnings) == 1 and "supported" in node.warnings[0]
