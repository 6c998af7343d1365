"""ROS data without ROS: bags as a frame source and a result sink, and the message conversions
that the bag path and the example ROS 2 node (``examples/ros2_segmenter_node.py``) share.

* :mod:`.conversions` - ``sensor_msgs`` Image/CompressedImage <-> numpy (no ROS, no rosbags);
* :class:`BagSource` - ``open_source("bag:PATH", topic=..., rate=...)``;
* :class:`BagSink` - labels, confidence, overlay and latency into a new rosbag2
  (``--save-bag``);
* :func:`write_image_bag` - frames of any source (a video, a folder, the demo scene) as an
  image bag, e.g. a bag to try ``bag:`` sources on.

Bags need the ``[ros]`` extra (``rosbags``), imported when a bag is opened; see
``docs/robotics.md``.
"""
from ._deps import MissingDependencyError
from .bag_sink import BagSink, check_output_bag
from .bag_source import BagFrame, BagSource, TopicSummary, list_topics
from .conversions import (COMPRESSED_IMAGE_TYPE, IMAGE_ENCODINGS, IMAGE_TYPE, IMAGE_TYPES,
                          ImageConversionError, Stamp, UnsupportedImageError, bgr_image_fields,
                          compressed_to_bgr, image_to_bgr, jpeg_fields, labels_fields,
                          message_to_bgr)
from .image_bag import write_image_bag

__all__ = ["BagFrame", "BagSink", "BagSource", "COMPRESSED_IMAGE_TYPE", "IMAGE_ENCODINGS",
           "IMAGE_TYPE", "IMAGE_TYPES", "ImageConversionError", "MissingDependencyError",
           "Stamp", "TopicSummary", "UnsupportedImageError", "bgr_image_fields",
           "check_output_bag", "compressed_to_bgr", "image_to_bgr", "jpeg_fields",
           "labels_fields", "list_topics", "message_to_bgr", "write_image_bag"]
