"""Live view: a Foxglove WebSocket server fed by run_video, checked with a WebSocket client
(the protocol's JSON control messages and binary message frames), bounded in time."""
from __future__ import annotations

import json
import socket
import struct
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("foxglove")
websockets_sync = pytest.importorskip("websockets.sync.client")

from convcrf_deploy.cli.run import main
from convcrf_deploy.runtime import Segmenter, run_video
from convcrf_deploy.runtime.streams.foxglove import FoxgloveSink, parse_address
from convcrf_deploy.runtime.streams.ros import Stamp
from convcrf_deploy.runtime.streams import DemoSource, Frame, FrameSource

# foxglove-sdk 0.30 speaks "foxglove.sdk.v1"; older servers "foxglove.websocket.v1".
SUBPROTOCOLS = ["foxglove.sdk.v1", "foxglove.websocket.v1"]
PREFIX = "/camera/image_raw/convcrf"
STAMP0 = 1_700_000_000 * 10**9


#: the toy model's input size (conftest.toy_onnx)
TOY_INPUT_SIZE = (60, 80)


class PacedDemo(FrameSource):
    """Demo frames every 20 ms with ROS-like stamps, until ``stop`` is set (at most 500)."""

    def __init__(self, stop: threading.Event):
        super().__init__("paced demo")
        self.demo, self.stop = DemoSource(48, 64, num_frames=500), stop

    def read(self) -> Frame | None:
        if self.stop.wait(0.02):
            return None
        frame = self.demo.read()
        if frame is not None:
            frame.stamp = Stamp.from_ns(STAMP0 + frame.index * 33_000_000)
        return frame


def test_overlay_labels_and_stats_reach_a_websocket_client(toy_onnx):
    segmenter = Segmenter(toy_onnx, return_confidence=True)
    sink = FoxgloveSink(segmenter.metadata, "127.0.0.1", 0, topic_prefix=PREFIX)
    stop = threading.Event()
    outcome: dict = {}
    labels_sent: list[bytes] = []
    confidence_sent: list[bytes] = []

    def produce():
        try:
            outcome["report"] = run_video(
                PacedDemo(stop), segmenter, sinks=[sink],
                on_frame=lambda frame, result: (labels_sent.append(result.labels.tobytes()),
                                                confidence_sent.append(
                                                    result.confidence.tobytes())))
        except BaseException as exc:  # reported by the main thread
            outcome["error"] = exc
    thread = threading.Thread(target=produce, daemon=True)
    try:
        with websockets_sync.connect(sink.url, subprotocols=SUBPROTOCOLS, open_timeout=10,
                                     max_size=None) as ws:
            channels: dict[str, dict] = {}
            deadline = time.monotonic() + 20
            while len(channels) < 4 and time.monotonic() < deadline:
                message = json.loads(ws.recv(timeout=10))
                if message["op"] == "advertise":
                    channels.update({c["topic"]: c for c in message["channels"]})
            assert set(channels) == {f"{PREFIX}/overlay", f"{PREFIX}/labels",
                                     f"{PREFIX}/confidence", f"{PREFIX}/stats"}
            assert channels[f"{PREFIX}/labels"]["schemaName"] == "foxglove.RawImage"
            topics = dict(enumerate(sorted(channels)))
            ws.send(json.dumps({"op": "subscribe", "subscriptions": [
                {"id": sub_id, "channelId": channels[topic]["id"]}
                for sub_id, topic in topics.items()]}))
            thread.start()
            received: dict[str, bytes] = {}
            while len(received) < 4 and time.monotonic() < deadline:
                message = ws.recv(timeout=10)
                if isinstance(message, bytes) and message[0] == 0x01:
                    sub_id, _log_time = struct.unpack_from("<IQ", message, 1)
                    received.setdefault(topics[sub_id], message[13:])
            assert set(received) == set(channels), "not every channel delivered a message"
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(timeout=10)
        sink.close()  # run_video closed it already; idempotent
    assert "error" not in outcome, outcome.get("error")
    assert outcome["report"].frames >= 1
    stats = json.loads(received[f"{PREFIX}/stats"])
    assert stats["stamp_ns"] == STAMP0 + stats["frame"] * 33_000_000
    assert stats["total_ms"] >= stats["inference_ms"] > 0 and stats["crf"] is True
    assert stats["total_ms"] == pytest.approx(sum(            # unary, crf: parts of inference
        stats[f"{s}_ms"] for s in ("preprocess", "inference", "postprocess")), abs=2e-3)
    # The payloads are protobuf-encoded foxglove messages: the JPEG and the raw label bytes
    # of the frame appear in them verbatim.
    assert b"\xff\xd8\xff" in received[f"{PREFIX}/overlay"]
    assert b"mono8" in received[f"{PREFIX}/labels"]
    assert any(sent in received[f"{PREFIX}/labels"] for sent in labels_sent)
    assert b"mono8" in received[f"{PREFIX}/confidence"]
    assert any(sent in received[f"{PREFIX}/confidence"] for sent in confidence_sent)
    # Stopped: no WebSocket session can be opened any more (the socket may still take a TCP
    # connection for a moment and then drop it).
    from websockets.exceptions import WebSocketException
    with pytest.raises((OSError, WebSocketException)):
        with websockets_sync.connect(sink.url, subprotocols=SUBPROTOCOLS, open_timeout=2):
            pass


def test_address_parsing():
    assert parse_address("8765") == ("127.0.0.1", 8765)
    assert parse_address("0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert parse_address("[::1]:0") == ("::1", 0)
    for bad in ("", "host:", "70000", "x:y"):
        with pytest.raises(ValueError, match=r"\[HOST:\]PORT"):
            parse_address(bad)


def test_cli_refuses_a_bad_address_and_a_busy_port(toy_onnx, capsys):
    args = ["--video", "demo", "--size", "64x48", "--max-frames", "2", "--model", toy_onnx,
            "--headless"]
    assert main(args + ["--foxglove", "localhost"]) == 2
    assert "[HOST:]PORT" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(args + ["--foxglove", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert "cannot listen" in err and "Traceback" not in err


def test_missing_foxglove_sdk_gives_the_install_command(toy_onnx, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "foxglove", None)  # import fails
    assert main(["--video", "demo", "--max-frames", "1", "--model", toy_onnx, "--headless",
                 "--foxglove", "0"]) == 2
    err = capsys.readouterr().err
    from convcrf_deploy.install import install_hint
    assert install_hint("foxglove") in err and "Traceback" not in err


# ---- issue 21: slow clients and shutdown -------------------------------------------------------

def subscribe_all(ws) -> None:
    """Subscribe the WebSocket client ``ws`` to every channel the server advertises."""
    channels: dict[str, dict] = {}
    deadline = time.monotonic() + 10
    while len(channels) < 4 and time.monotonic() < deadline:
        message = json.loads(ws.recv(timeout=10))
        if message["op"] == "advertise":
            channels.update({c["topic"]: c for c in message["channels"]})
    ws.send(json.dumps({"op": "subscribe", "subscriptions": [
        {"id": i, "channelId": c["id"]} for i, c in enumerate(channels.values())]}))


def test_a_client_that_stops_reading_does_not_hold_the_shutdown(toy_onnx):
    # Field report: with a Foxglove client that stopped reading, shutdown took 28-41 s.
    segmenter = Segmenter(toy_onnx, return_confidence=True)
    sink = FoxgloveSink(segmenter.metadata, "127.0.0.1", 0, topic_prefix=PREFIX,
                        queue_frames=2)
    demo = DemoSource(240, 320, num_frames=10)
    frame = demo.read()
    result = segmenter(frame.image)
    frame.image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)
    result.labels = np.zeros((480, 640), np.uint8)
    result.confidence = np.full((480, 640), 200, np.uint8)
    # A client that never reads after subscribing (max_queue=1: the client library stops
    # reading from the socket at once): its socket buffers and the server's outbox fill.
    with websockets_sync.connect(sink.url, subprotocols=SUBPROTOCOLS, open_timeout=10,
                                 close_timeout=0.5, max_size=None, max_queue=1) as ws:
        subscribe_all(ws)
        time.sleep(0.2)
        deadline = time.monotonic() + 2.0
        written = 0
        while time.monotonic() < deadline:          # much more than the socket can hold
            sink.write(frame, result)
            written += 1
            assert len(sink._pending) <= 2          # bounded, whatever the client does
            time.sleep(0.002)
        assert sink.frames_published > 0
        start = time.monotonic()
        sink.close()
        took = time.monotonic() - start
    assert took < 2.0, f"close took {took:.1f} s"
    summary = sink.summary()
    assert summary["frames_published"] + summary["dropped_frames"] <= written
    assert summary["queue_frames"] == 2 and "published" in summary["message"]


def test_frames_the_publisher_cannot_keep_up_with_are_dropped_oldest_first_and_counted(
        toy_onnx, monkeypatch):
    segmenter = Segmenter(toy_onnx)
    sink = FoxgloveSink(segmenter.metadata, "127.0.0.1", 0, queue_frames=3)
    published: list[int] = []
    gate = threading.Event()

    def slow_publish(frame, result, stats):
        gate.wait(10)                                # the first frame blocks the publisher
        published.append(frame.index)
    monkeypatch.setattr(sink, "_publish", slow_publish)
    monkeypatch.setattr(sink, "_subscribed", lambda: True)
    demo = DemoSource(48, 64, num_frames=20)
    first = demo.read()
    sink.write(first, segmenter(first.image))
    time.sleep(0.2)                                  # the publisher took frame 0 and waits
    for _ in range(10):
        frame = demo.read()
        sink.write(frame, segmenter(frame.image))
    assert sink.dropped_frames == 10 - 3             # frames 1..7 dropped, 8..10 wait
    gate.set()
    deadline = time.monotonic() + 10
    while len(published) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    sink.close()
    assert published == [0, 8, 9, 10]                # the newest frames survive
    summary = sink.summary()
    assert summary["frames_published"] == 4 and summary["dropped_frames"] == 7
    assert "dropped 7" in summary["message"]
