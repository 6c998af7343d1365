"""ROS bags as a frame source: ``open_source("bag:PATH", topic=...)`` / ``convcrf-run --video
bag:PATH --topic /camera/image_raw``.

Reads ``sensor_msgs/msg/Image`` and ``sensor_msgs/msg/CompressedImage`` from rosbag2 folders,
``.mcap``/``.db3`` files and ROS 1 ``.bag`` files with ``rosbags`` (pure Python; no ROS needed).
Frames carry the message's header ``stamp`` (:class:`Frame.stamp`, passed on to
``Segmenter(timestamp=)``), ``frame_id``, topic and bag (log) time, which the bag sink copies.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from ....errors import describe_error
from ..base import MAX_CONSECUTIVE_CORRUPT, Frame, FrameSource, SourceError
from ._deps import MissingDependencyError, require
from .conversions import IMAGE_TYPES, ImageConversionError, Stamp, UnsupportedImageError, \
    message_to_bgr, supported_message_types

log = logging.getLogger(__name__)

BAG_KINDS = ("a rosbag2 folder (with metadata.yaml)", "a .mcap or .db3 file", "a ROS 1 .bag file")

#: longest pause (seconds of wall time, after ``rate``) a real-time replay waits between two
#: messages. A longer gap in bag time (a message logged at time 0, a common "unset" value, or a
#: recording paused for hours) or a step backwards is replayed without a pause, with a warning.
MAX_REPLAY_GAP_S = 5.0
#: recording rates outside this range (frames/s) come from odd bag times, not from a camera:
#: such a bag's ``fps`` is unknown (``None``).
PLAUSIBLE_FPS = (0.1, 1000.0)


class _Message(NamedTuple):
    """A message read from the bag, with when a real-time replay delivers it."""

    connection: Any
    log_time_ns: int
    raw: bytes
    due: float | None = None     # time.monotonic() it is due at (``rate`` given), else None
    jumped: bool = False         # its bag time was irregular: due without the recorded pause


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
        raise SourceError(describe_error(exc, f"cannot read bag {str(path)!r}", "the file is "
                                         f"damaged or truncated, or not a bag{hint}")) from None
    return reader


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
            due when the consumer asks is skipped and counted in ``dropped_frames``. Bag times
            that step backwards or leap by more than ``max_gap_s`` (after ``rate``) are
            replayed without waiting (one warning; counted in ``time_jumps``), so the replay
            never waits longer than ``max_gap_s`` for a message.
        max_gap_s: the longest wait between two messages at ``rate`` (default
            :data:`MAX_REPLAY_GAP_S`).

    Frames are :class:`BagFrame`; ``stamp`` is the header stamp as a :class:`Stamp` (a
    ``nanosec`` past 999999999 carried into ``sec``; a message without a usable header stamp
    gets its bag time, with one warning),
    ``capture_time`` the ``time.monotonic()`` when the frame was (due to be) delivered. A
    message that cannot be decoded (size disagreeing with ``step``, damaged JPEG) is skipped with
    a warning and counted in ``corrupt_frames``; an unsupported encoding, a damaged bag or
    :data:`MAX_CONSECUTIVE_CORRUPT` bad messages in a row end the source with ``error`` set.
    Not thread-safe: read from one thread.

    Raises:
        SourceError: the bag does not exist or cannot be read, the topic is missing or not an
            image topic (the message lists the image topics), or ``rate`` is not positive.
        ValueError: ``max_gap_s`` is negative.
    """

    def __init__(self, path: str | Path, topic: str | None = None, rate: float | None = None,
                 max_gap_s: float = MAX_REPLAY_GAP_S):
        path = Path(path).expanduser()
        super().__init__(f"bag {path}")
        if rate is not None and not (rate > 0 and math.isfinite(rate)):
            raise SourceError(f"--rate must be > 0 (1.0: recorded rate), got {rate}")
        if not max_gap_s >= 0:
            raise ValueError(f"max_gap_s must be >= 0, got {max_gap_s}")
        self.path, self.rate, self.max_gap_s = path, rate, float(max_gap_s)
        self.live = rate is not None
        self._reader = _open_reader(path)
        try:
            topics = _topics(self._reader)
            self.topic = self._choose_topic(topics, topic)
            summary = next(t for t in topics if t.name == self.topic)
            self.msgtype, self.message_count = summary.msgtype, summary.count
            if summary.count == 0:
                # Nothing to segment: refused like a missing topic, before any output is
                # made (new-user trial: exit 0 with 0 frames and --save-bag dropped).
                raise SourceError(f"bag {path}: topic {self.topic} has no messages; "
                                  f"{_describe_images(topics)}")
            connections = [c for c in self._reader.connections if c.topic == self.topic]
            self._messages: Iterator[tuple[Any, int, bytes]] = self._reader.messages(
                connections=connections)
            duration_s = self._reader.duration / 1e9
        except BaseException:
            self._reader.close()
            raise
        self.description = f"bag {path} {self.topic}"
        # For recordings (--save): approximate, the bag's duration spans all its topics; a
        # rate no camera has (a bag time of 0 among real ones spans 54 years) is unknown.
        fps = (self.message_count - 1) / duration_s if duration_s > 0 and \
            self.message_count > 1 else None
        self.fps = fps if fps is not None and PLAUSIBLE_FPS[0] <= fps <= PLAUSIBLE_FPS[1] \
            else None
        #: bag-time steps replayed without their recorded pause (backwards, or > max_gap_s).
        self.time_jumps = 0
        self._notices: set[str] = set()
        self._index = 0
        self._pending: _Message | None = None
        self._clock: tuple[float, int] | None = None  # (due, bag time) of the last message
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

    def _next_message(self) -> _Message | None:
        if self._pending is not None:
            item, self._pending = self._pending, None
            return item
        item = next(self._messages, None)
        if item is None:
            return None
        message = _Message(*item)
        return message if self.rate is None else self._timed(message)

    def _timed(self, message: _Message) -> _Message:
        """``message`` with when it is due: the previous message's due plus the bag-time step
        at ``rate``; a step backwards or longer than ``max_gap_s`` is replayed as no pause."""
        log_time = message.log_time_ns
        if self._clock is None:
            self._clock = (time.monotonic(), log_time)
            return message._replace(due=self._clock[0])
        last_due, last_log = self._clock
        step = (log_time - last_log) / 1e9 / self.rate
        jumped = not 0 <= step <= self.max_gap_s
        if jumped:
            self.time_jumps += 1
            kind = "steps back" if step < 0 else "leaps"
            self._notice(kind, "%s: the bag time %s by %s between two messages (%d -> %d ns; "
                         "a time of 0 is a common 'unset' value): replayed without that pause, "
                         "as every such step; a replay never waits more than %g s for a "
                         "message", self.description, kind, _duration_text(step * self.rate),
                         last_log, log_time, self.max_gap_s)
            step = 0.0
        due = last_due + step
        self._clock = (due, log_time)
        return message._replace(due=due, jumped=jumped)

    def _next_in_time(self) -> _Message | None:
        """The next message to deliver at ``rate``, once it is due (skipping late ones)."""
        item = self._next_message()
        if item is None:
            return None
        while True:
            following = self._next_message()
            # A successor that is due only because the bag time jumped does not make this one
            # late: a live reader would have seen it.
            if following is None or following.jumped or following.due > time.monotonic():
                self._pending = following
                break
            self.dropped_frames += 1  # its successor is already due: a live reader misses it
            self._index += 1
            item = following
        delay = item.due - time.monotonic()
        if delay > 0:
            time.sleep(min(delay, self.max_gap_s))
        return item

    def _notice(self, key: str, message: str, *args: Any) -> None:
        if key not in self._notices:
            self._notices.add(key)
            log.warning(message, *args)

    def _stamp(self, msg: Any, index: int, log_time_ns: int) -> Stamp:
        """The header stamp of ``msg`` (normalised), else its bag time (with one warning)."""
        raw = getattr(getattr(msg, "header", None), "stamp", None)
        try:
            stamp = Stamp.of(raw)
        except ValueError:
            self._notice("no stamp", "%s message %d has no header stamp: using its bag time "
                         "(as for every such message)", self.description, index)
            return Stamp.from_ns(log_time_ns)
        nanosec = getattr(raw, "nanosec", getattr(raw, "nsecs", 0))
        if not 0 <= int(nanosec) < 1_000_000_000:
            self._notice("nanosec", "%s message %d: header stamp nanosec %d is not in "
                         "0..999999999; carried into the seconds (%s), as for every such "
                         "message", self.description, index, int(nanosec), stamp)
        return stamp

    def read(self) -> BagFrame | None:
        failures = 0
        while not self._closed:
            try:
                item = self._next_message() if self.rate is None else self._next_in_time()
                if item is None:
                    return None
                connection, log_time_ns, raw, due, _ = item
                msg = self._reader.deserialize(raw, connection.msgtype)
            except Exception as exc:  # damaged chunk, truncated file, undecodable message
                self.error = describe_error(
                    exc, f"{self.description}: cannot read message {self._index}",
                    "the bag is damaged or truncated")
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
            return BagFrame(image, index, due if due is not None else time.monotonic(),
                            stamp=self._stamp(msg, index, log_time_ns), topic=self.topic,
                            frame_id=str(getattr(getattr(msg, "header", None), "frame_id", "")),
                            log_time_ns=int(log_time_ns))
        return None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._reader.close()


def _stamp_text(msg: Any) -> str:
    try:
        return str(Stamp.of(msg.header.stamp))
    except (AttributeError, ValueError):
        return "?"


def _duration_text(seconds: float) -> str:
    """``seconds`` (may be negative) in the unit a person reads: s, hours, days or years."""
    size = abs(seconds)
    for unit, length in (("years", 365.25 * 86400), ("days", 86400), ("hours", 3600)):
        if size >= 2 * length:
            return f"{size / length:.3g} {unit}"
    return f"{size:.3g} s"
