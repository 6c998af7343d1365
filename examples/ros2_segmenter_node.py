#!/usr/bin/env python3
"""A ROS 2 node that segments an image topic with convcrf-deploy (docs/robotics.md).

Subscribes to ``image_topic`` (``sensor_msgs/msg/Image``, or ``CompressedImage`` with
``compressed:=true``) with a "latest frame" QoS (keep last 1, best effort: a slow model
always gets the newest image, never a queue of stale ones) and publishes, with the input's
header (stamp and frame_id):

* ``<image_topic>/convcrf/labels``: ``sensor_msgs/msg/Image`` ``mono8``, one class index per pixel;
* ``<image_topic>/convcrf/overlay/compressed``: JPEG colour overlay, only while someone listens.

Run (ROS 2 Humble or newer, ``pip install convcrf-deploy`` in the same Python)::

    python3 examples/ros2_segmenter_node.py --ros-args -p model:=model.onnx \\
        -p image_topic:=/camera/image_raw -p providers:=cuda,cpu

The node is deliberately thin: converting messages is
:mod:`convcrf_deploy.runtime.streams.ros.conversions` (the functions the bag source and sink use,
tested in CI), segmenting is :class:`~convcrf_deploy.runtime.Segmenter`. ROS 2 cannot be
installed on the project's machines, so this file itself is only exercised against stand-in
``rclpy`` modules (tests/runtime/streams/test_bags_ros2_node.py), never against a real ROS 2.
"""
from __future__ import annotations

import rclpy
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

from convcrf_deploy.runtime import Segmenter
from convcrf_deploy.runtime.streams.ros.conversions import (COMPRESSED_IMAGE_TYPE, IMAGE_TYPE,
                                                    ImageConversionError, jpeg_fields,
                                                    labels_fields, message_to_bgr,
                                                    rclpy_message)
from convcrf_deploy.runtime.visualize import Renderer

#: keep only the newest frame; best effort also matches camera drivers' sensor-data QoS.
LATEST_FRAME = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                          reliability=ReliabilityPolicy.BEST_EFFORT)
#: reliable publishers are compatible with both reliable and best-effort subscribers.
RESULTS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                     reliability=ReliabilityPolicy.RELIABLE)


class SegmenterNode(Node):
    """Segment each received image; the single-threaded executor runs one callback at a
    time, which ``Segmenter`` (not thread-safe) needs."""

    def __init__(self) -> None:
        super().__init__("convcrf_segmenter")
        model = self.declare_parameter("model", "model.onnx").value
        topic = self.declare_parameter("image_topic", "/camera/image_raw").value
        compressed = self.declare_parameter("compressed", False).value
        providers = self.declare_parameter("providers", "cpu").value  # ONNX models
        options = {"providers": tuple(providers.split(","))} if model.endswith(".onnx") else {}
        self.segmenter = Segmenter(model, **options)
        self.renderer = Renderer(self.segmenter.metadata.palette, "overlay", 0.5)
        self.msgtype = COMPRESSED_IMAGE_TYPE if compressed else IMAGE_TYPE
        self.create_subscription(CompressedImage if compressed else Image, topic,
                                 self.on_image, LATEST_FRAME)
        self.labels = self.create_publisher(Image, f"{topic}/convcrf/labels", RESULTS)
        self.overlay = self.create_publisher(CompressedImage,
                                             f"{topic}/convcrf/overlay/compressed", RESULTS)

    def on_image(self, msg) -> None:
        try:
            bgr = message_to_bgr(msg, self.msgtype)
        except ImageConversionError as exc:
            self.get_logger().warning(f"skipping a message: {exc}", throttle_duration_sec=5.0)
            return
        result = self.segmenter(bgr, timestamp=msg.header.stamp)
        self.labels.publish(rclpy_message(Image, msg.header, labels_fields(result.labels)))
        if self.overlay.get_subscription_count() > 0:
            image = self.renderer.render(bgr, result.labels)
            self.overlay.publish(rclpy_message(CompressedImage, msg.header, jpeg_fields(image)))


def main() -> None:
    rclpy.init()
    node = SegmenterNode()
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        node.segmenter.close()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    main()
