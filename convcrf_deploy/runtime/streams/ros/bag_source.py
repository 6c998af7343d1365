"""ROS bags as a frame source: ``open_source("bag:PATH", topic=...)`` / ``convcrf-run --video
bag:PATH --topic /camera/image_raw``.

Reads ``sensor_msgs/msg/Image`` and ``sensor_msgs/msg/CompressedImage`` from rosbag2 folders,
``.mcap``/``.db3`` files and ROS 1 ``.bag`` files with ``rosbags`` (pure Python; no ROS needed).
Frames carry the message's header ``stamp`` (:class:`Frame.stamp`, passed on to
``Segmenter(timestamp=)``), ``frame_id``, topic and bag (log) time, which the bag sink copies.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..base import MAX_CONSECUTIVE_CORRUPT, Frame, FrameSource, SourceError
from ._deps import MissingDependencyError, require
from .conversions import IMAGE_TYPES, ImageConversionError, Stamp, UnsupportedImageError, \
    message_to_bgr, supported_message_types

log = logging.getLogger(__name__)

BAG_KINDS = ("a rosbag2 folder (with metadata.yaml)", "a .mcap or .db3 file", "a ROS 1 .bag file")


@dataclass
class BagFrame(Frame):
    """A :class:`Frame` read from a bag.

    Attributes:
        topic: the input topic.
        frame_id: the message's ``header.frame_id``.
        log_time_ns: when the message was recorded (bag time, ns since the epoch).
    """

    topic: str = ""
    frame_id: str = ""
    log_time_ns: int = 0


@dataclass(frozen=True)
class TopicSummary:
    """One topic of a bag: name, message type, message count, whether it holds images."""

    name: str
    msgtype: str
    count: int

    @property
    def is_image(self) -> bool:
        return self.msgtype in IMAGE_TYPES


def _bag_paths(path: Path) -> list[Path]:
    if not path.exists():
        raise SourceError(f"bag {str(path)!r} does not exist: expected {', '.join(BAG_KINDS)}")
    if path.is_dir() and not (path / "metadata.yaml").exists():
        raise SourceError(f"folder {str(path)!r} is not a rosbag2 (no metadata.yaml); expected "
                          f"{', '.join(BAG_KINDS)}")
    if path.is_file() and path.suffix not in (".mcap", ".db3", ".bag"):
        raise SourceError(f"{str(path)!r} is not a bag: expected {', '.join(BAG_KINDS)}")
    return [path]


def _open_reader(path: Path) -> Any:
    """An opened ``rosbags.highlevel.AnyReader``; :class:`SourceError` for missing or damaged
    bags."""
    try:
        highlevel = require("rosbags.highlevel", "rosbags", "ros")
        typesys = require("rosbags.typesys", "rosbags", "ros")
    except MissingDependencyError as exc:
        raise SourceError(f"cannot read bags: {exc}") from None
    paths = _bag_paths(path)
    # Bags without embedded message definitions (older rosbag2 SQLite3) decode with Humble's.
    humble = typesys.get_typestore(typesys.Stores.ROS2_HUMBLE)
    reader = highlevel.AnyReader(paths, default_typestore=humble)
    try:
        reader.open()
    except Exception as exc:  # rosbags raises many kinds (ReaderError, sqlite, mcap, yaml, ...)
        hint = (" (an MCAP recording cut short can be repaired with the mcap CLI: mcap recover)"
                if path.suffix == ".mcap" or any(path.glob("*.mcap")) else "")
        raise SourceError(f"cannot read bag {str(path)!r} ({_one_line(exc)}): the file is "
                          f"damaged or truncated, or not a bag{hint}") from None
    return reader


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def _topics(reader: Any) -> list[TopicSummary]:
    return [TopicSummary(name, info.msgtype or "?", int(info.msgcount))
            for name, info in sorted(reader.topics.items())]


def list_topics(path: str | Path) -> list[TopicSummary]:
    """All topics of the bag at ``path`` with their types and message counts.

    Raises:
        SourceError: the bag does not exist or cannot be read.
    """
    reader = _open_reader(Path(path).expanduser())
    try:
        return _topics(reader)
    finally:
        reader.close()


def _describe_images(topics: list[TopicSummary]) -> str:
    images = [f"{t.name} ({t.msgtype.rsplit('/', 1)[-1]}, {t.count} messages)"
              for t in topics if t.is_image]
    return "image topics in the bag: " + (", ".join(images) if images else "none")


class BagSource(FrameSource):
    """Images of one topic of a bag, in recording order.

    Args:
        path: rosbag2 folder, ``.mcap``/``.db3`` file or ROS 1 ``.bag``.
        topic: image topic; may be omitted when the bag has exactly one.
        rate: ``None``: as fast as the consumer reads; ``r > 0``: in real time at ``r`` x the
            recorded rate (by bag time), like a live camera: a frame whose successor is already
            due when the consumer asks is skipped and counted in ``dropped_frames``.

    Frames are :class:`BagFrame`; ``stamp`` is the header stamp as a :class:`Stamp`,
    ``capture_time`` the ``time.monotonic()`` when the frame was (due to be) delivered. A
    message that cannot be decoded (size disagreeing with ``step``, damaged JPEG) is skipped with
    a warning and counted in ``corrupt_frames``; an unsupported encoding, a damaged bag or
    :data:`MAX_CONSECUTIVE_CORRUPT` bad messages in a row end the source with ``error`` set.
    Not thread-safe: read from one thread.

    Raises:
        SourceError: the bag does not exist or cannot be read, the topic is missing or not an
            image topic (the message lists the image topics), or ``rate`` is not positive.
    """

    def __init__(self, path: str | Path, topic: str | None = None, rate: float | None = None):
        path = Path(path).expanduser()
        super().__init__(f"bag {path}")
        if rate is not None and not rate > 0:
            raise SourceError(f"--rate must be > 0 (1.0: recorded rate), got {rate}")
        self.path, self.rate = path, rate
        self.live = rate is not None
        self._reader = _open_reader(path)
        try:
            topics = _topics(self._reader)
            self.topic = self._choose_topic(topics, topic)
            summary = next(t for t in topics if t.name == self.topic)
            self.msgtype, self.message_count = summary.msgtype, summary.count
            connections = [c for c in self._reader.connections if c.topic == self.topic]
            self._messages: Iterator[tuple[Any, int, bytes]] = self._reader.messages(
                connections=connections)
            duration_s = self._reader.duration / 1e9
        except BaseException:
            self._reader.close()
            raise
        self.description = f"bag {path} {self.topic}"
        # For recordings (--save): approximate, the bag's duration spans all its topics.
        self.fps = (self.message_count - 1) / duration_s if duration_s > 0 and \
            self.message_count > 1 else None
        self._index = 0
        self._pending: tuple[Any, int, bytes] | None = None
        self._clock: tuple[float, int] | None = None  # (monotonic, bag time) of the first frame
        self._closed = False

    def _choose_topic(self, topics: list[TopicSummary], topic: str | None) -> str:
        images = [t for t in topics if t.is_image]
        if topic is None:
            if len(images) == 1:
                return images[0].name
            raise SourceError(f"{self.description}: pass --topic; {_describe_images(topics)}")
        found = next((t for t in topics if t.name == topic), None)
        if found is None:
            raise SourceError(f"topic {topic} is not in {self.description}; "
                              f"{_describe_images(topics)}")
        if not found.is_image:
            raise SourceError(f"topic {topic} is {found.msgtype}, not an image; supported: "
                              f"{supported_message_types()}; {_describe_images(topics)}")
        return topic

    def _next_message(self) -> tuple[Any, int, bytes] | None:
        if self._pending is not None:
            item, self._pending = self._pending, None
            return item
        return next(self._messages, None)

    def _due(self, log_time_ns: int) -> float:
        start_wall, start_bag = self._clock
        return start_wall + (log_time_ns - start_bag) / 1e9 / self.rate

    def _next_in_time(self) -> tuple[tuple[Any, int, bytes] | None, float]:
        """The next message to deliver at ``rate`` and when it is due (skipping late ones)."""
        item = self._next_message()
        if item is None:
            return None, 0.0
        if self._clock is None:
            self._clock = (time.monotonic(), item[1])
        while True:
            following = self._next_message()
            if following is None or self._due(following[1]) > time.monotonic():
                self._pending = following
                break
            self.dropped_frames += 1  # its successor is already due: a live reader misses it
            self._index += 1
            item = following
        due = self._due(item[1])
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return item, due

    def read(self) -> BagFrame | None:
        failures = 0
        while not self._closed:
            try:
                if self.rate is None:
                    item, due = self._next_message(), None
                else:
                    item, due = self._next_in_time()
                if item is None:
                    return None
                connection, log_time_ns, raw = item
                msg = self._reader.deserialize(raw, connection.msgtype)
            except Exception as exc:  # damaged chunk, truncated file, undecodable message
                self.error = (f"{self.description}: cannot read message {self._index} "
                              f"({_one_line(exc)}); the bag is damaged or truncated")
                return None
            index = self._index
            self._index += 1
            try:
                image = message_to_bgr(msg, connection.msgtype)
            except ImageConversionError as exc:
                where = (f"{self.description} message {index} (stamp "
                         f"{_stamp_text(msg)}): {exc}")
                if isinstance(exc, UnsupportedImageError):
                    self.error = where
                    return None
                self.corrupt_frames += 1
                failures += 1
                log.warning("skipping %s", where)
                if failures >= MAX_CONSECUTIVE_CORRUPT:
                    self.error = f"{failures} bad messages in a row, the last: {where}"
                    return None
                continue
            header = msg.header
            return BagFrame(image, index, due if due is not None else time.monotonic(),
                            stamp=Stamp.of(header.stamp), topic=self.topic,
                            frame_id=str(header.frame_id), log_time_ns=int(log_time_ns))
        return None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._reader.close()


def _stamp_text(msg: Any) -> str:
    try:
        stamp = Stamp.of(msg.header.stamp)
        return f"{stamp.sec}.{stamp.nanosec:09d}"
    except Exception:
        return "?"
