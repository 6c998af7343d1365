"""Segmenter: resize policies, colour order, label mapping, timings and timestamps."""
from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest

from convcrf_deploy.metadata import ModelMetadata
from convcrf_deploy.runtime import Backend, Segmenter
from convcrf_deploy.runtime.testing import write_toy_onnx
from convcrf_deploy.runtime.visualize import Renderer, colorize, overlay, palette_lut

PAD_LABEL = 2


class RedBackend(Backend):
    """Labels 1 where red > 127, 2 where the pixel is pure black (letterbox padding), else 0;
    remembers the last input."""

    name = "red"

    def __init__(self, input_size=(60, 80), resize="stretch"):
        super().__init__(ModelMetadata(["other", "red", "pad"], input_size=input_size,
                                       resize=resize))
        self.last_input = None

    def _activate(self):
        pass

    def _deactivate(self):
        pass

    def _infer(self, image):
        self.last_input = image.copy()
        labels = (image[:, 0] > 127).astype(np.int64)
        labels[(image == 0).all(axis=1)] = PAD_LABEL
        probabilities = np.eye(3, dtype=np.float32)[labels].transpose(0, 3, 1, 2)
        return {"probabilities": probabilities, "labels": labels, "unary_labels": 1 - labels}


def red_left_frame(h, w):
    """BGR frame: left half red, right half grey (no black pixels)."""
    frame = np.full((h, w, 3), 90, np.uint8)
    frame[:, : w // 2] = (20, 30, 220)  # BGR red
    return frame


@pytest.mark.parametrize("resize, input_shape", [("none", (50, 120)), ("stretch", (60, 80)),
                                                  ("letterbox", (60, 80))])
def test_resize_policy_sets_the_model_input_and_labels_come_back_at_frame_size(resize,
                                                                                 input_shape):
    backend = RedBackend(resize=resize)
    segmenter = Segmenter(backend)
    frame = red_left_frame(50, 120)
    result = segmenter(frame)
    assert backend.last_input.shape == (1, 3, *input_shape)
    assert result.labels.shape == (50, 120) and result.labels.dtype == np.uint8
    # Left half red, right half not; no padding label survives the letterbox removal.
    assert (result.labels[:, :58] == 1).all() and (result.labels[:, 62:] == 0).all()
    assert not (result.labels == PAD_LABEL).any()


def test_letterbox_keeps_the_aspect_ratio_and_pads_with_zeros():
    backend = RedBackend(input_size=(60, 80), resize="letterbox")
    Segmenter(backend)(red_left_frame(30, 80))  # 30x80 -> fits as 30x80 in 60x80, 15 rows pad
    image = backend.last_input[0]
    assert (image[:, :15] == 0).all() and (image[:, 45:] == 0).all()
    assert (image[:, 15:45] > 0).all()


def test_frame_is_converted_from_bgr_to_rgb_float():
    backend = RedBackend(resize="none")
    frame = np.zeros((4, 5, 3), np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 10, 20, 30  # B, G, R
    Segmenter(backend)(frame)
    image = backend.last_input
    assert image.dtype == np.float32
    assert (image[0, 0] == 30).all() and (image[0, 1] == 20).all() and (image[0, 2] == 10).all()


def test_resize_override_and_validation():
    assert Segmenter(RedBackend(resize="stretch"), resize="none").resize == "none"
    with pytest.raises(ValueError, match="resize must be one of"):
        Segmenter(RedBackend(), resize="crop")


def test_timestamp_timings_and_probabilities_are_returned():
    segmenter = Segmenter(RedBackend(), return_probabilities=True)
    stamp = object()
    result = segmenter(red_left_frame(30, 40), timestamp=stamp)
    assert result.timestamp is stamp
    assert set(result.timings) == {"preprocess", "inference", "postprocess"}
    assert all(v >= 0 for v in result.timings.values())
    assert result.probabilities.shape == (3, 30, 40)
    np.testing.assert_array_equal(result.probabilities.argmax(0), result.labels)
    np.testing.assert_array_equal(result.unary_labels, 1 - result.labels)


class StagedRedBackend(RedBackend):
    """RedBackend that runs (sleeps) a "unary" and a "crf" part, longer for wider frames."""

    def _infer(self, image):
        wide = image.shape[3] > 60
        with self._timed("unary"):
            time.sleep(0.030 if wide else 0.002)
        with self._timed("crf"):
            time.sleep(0.002 if wide else 0.030)
        return super()._infer(image)


def test_timings_split_unary_and_crf_where_the_backend_times_them():
    result = Segmenter(StagedRedBackend(resize="none"))(red_left_frame(30, 40))
    assert list(result.timings) == ["preprocess", "inference", "unary", "crf", "postprocess"]
    assert result.timings["crf"] > 25 > result.timings["unary"]
    assert result.timings["inference"] >= result.timings["unary"] + result.timings["crf"]
    # A backend that runs the model in one piece reports no split.
    assert set(Segmenter(RedBackend())(red_left_frame(30, 40)).timings) == {
        "preprocess", "inference", "postprocess"}


def test_stage_times_are_per_thread():
    segmenter = Segmenter(StagedRedBackend(resize="none"))
    frames = [red_left_frame(30, 40), red_left_frame(30, 80)] * 3
    results = [None] * len(frames)

    def work(index):
        results[index] = segmenter(frames[index])
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(frames))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for frame, result in zip(frames, results):
        wide = frame.shape[1] > 60
        assert (result.timings["unary"] > result.timings["crf"]) == wide


def test_frames_of_changing_size_are_handled():
    segmenter = Segmenter(RedBackend(resize="letterbox"))
    for shape in ((30, 40), (100, 60), (30, 40)):
        assert segmenter(red_left_frame(*shape)).labels.shape == shape


@pytest.mark.parametrize("frame", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32),
                                   np.zeros((0, 10, 3), np.uint8), "frame"])
def test_bad_frames_are_rejected_with_the_expected_format(frame):
    with pytest.raises(ValueError, match=r"BGR uint8 array \[H, W, 3\]"):
        Segmenter(RedBackend())(frame)


def test_crf_off_on_an_exported_graph_reports_the_unary_labels(tmp_path):
    path = write_toy_onnx(tmp_path / "toy.onnx", input_size=(24, 32), resize="stretch")
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    with_crf = Segmenter(str(path))(frame)
    without = Segmenter(str(path), crf=False)(frame)
    assert with_crf.crf and not without.crf
    np.testing.assert_array_equal(without.labels, with_crf.unary_labels)
    assert not np.array_equal(with_crf.labels, with_crf.unary_labels)


def test_colorize_and_overlay():
    lut = palette_lut([[255, 0, 0], [0, 255, 0]])
    labels = np.array([[0, 1]], np.uint8)
    colors = colorize(labels, lut)
    np.testing.assert_array_equal(colors, [[[0, 0, 255], [0, 255, 0]]])  # BGR
    frame = np.full((1, 2, 3), 100, np.uint8)
    np.testing.assert_array_equal(overlay(frame, colors, 0.0), frame)
    np.testing.assert_array_equal(overlay(frame, colors, 1.0), colors)
    renderer = Renderer([[255, 0, 0], [0, 255, 0]], view="side-by-side")
    assert renderer.render(frame, labels, labels).shape == (1, 4, 3)
    assert renderer.next_view() == "overlay"
    with pytest.raises(ValueError, match="alpha"):
        Renderer([[0, 0, 0]], alpha=1.5)


# -- several threads sharing one Segmenter (issue 11) ----------------------------------------------

def thread_frames(count: int = 20):
    """Frames of different content and sizes, so that a mix-up shows in labels or shape."""
    rng = np.random.default_rng(1)
    shapes = ((30, 40), (44, 52), (26, 70), (50, 36))
    return [rng.integers(0, 256, (*shapes[i % 4], 3), dtype=np.uint8) for i in range(count)]


def run_in_threads(segmenter, frames, threads: int = 4):
    """Each thread segments every frame (in its own order); results by (thread, frame)."""
    import threading

    results, errors = {}, []
    barrier = threading.Barrier(threads)

    def work(index):
        try:
            barrier.wait(timeout=30)
            order = list(range(len(frames)))[index::1] if index % 2 == 0 else \
                list(reversed(range(len(frames))))
            for i in order:
                results[index, i] = segmenter(frames[i])
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert not any(w.is_alive() for w in workers), "a thread hung"
    assert not errors, errors
    return results


def check_same_as_sequential(segmenter, reference, frames):
    expected = [reference(frame) for frame in frames]
    results = run_in_threads(segmenter, frames)
    wrong = [(t, i) for (t, i), result in results.items()
             if result.labels.shape != expected[i].labels.shape
             or not np.array_equal(result.labels, expected[i].labels)
             or not np.array_equal(result.probabilities, expected[i].probabilities)]
    assert not wrong, f"{len(wrong)} of {len(results)} results belong to another frame"


@pytest.mark.parametrize("resize", ["none", "letterbox"])
def test_one_segmenter_shared_by_four_threads_onnxruntime(tmp_path, resize):
    path = write_toy_onnx(tmp_path / "toy.onnx", input_size=(40, 48), resize=resize)
    frames = thread_frames()
    check_same_as_sequential(Segmenter(str(path), return_probabilities=True),
                             Segmenter(str(path), return_probabilities=True), frames)


class SlowRedBackend(RedBackend):
    """RedBackend that yields the CPU mid-inference, as real backends do (they release the
    GIL), and checks that no other call runs inside it when it is not thread-safe."""

    def __init__(self, thread_safe=True, **kwargs):
        super().__init__(**kwargs)
        self.thread_safe = thread_safe
        self.inside = 0
        self.overlaps = 0

    def _infer(self, image):
        import time

        self.inside += 1
        self.overlaps += self.inside > 1
        time.sleep(0.002)
        outputs = super()._infer(image)
        self.inside -= 1
        return outputs


@pytest.mark.parametrize("resize", ["none", "stretch", "letterbox"])
def test_one_segmenter_shared_by_four_threads_any_backend(resize):
    frames = [red_left_frame(*shape) for shape in ((30, 40), (64, 52), (26, 70), (50, 36))] * 5
    for i, frame in enumerate(frames):
        frame[: 1 + i % 7] = 255  # white rows: distinct labels per frame
    check_same_as_sequential(Segmenter(SlowRedBackend(resize=resize), return_probabilities=True),
                             Segmenter(RedBackend(resize=resize), return_probabilities=True),
                             frames)


def test_backends_that_are_not_thread_safe_run_one_call_at_a_time():
    backend = SlowRedBackend(thread_safe=False)
    run_in_threads(Segmenter(backend), [red_left_frame(30, 40)] * 8)
    assert backend.overlaps == 0
    concurrent = SlowRedBackend(thread_safe=True)
    run_in_threads(Segmenter(concurrent), [red_left_frame(30, 40)] * 8)
    assert concurrent.overlaps > 0  # the check above can fail


def test_one_segmenter_shared_by_four_threads_torch():
    torch = pytest.importorskip("torch")
    from convcrf_deploy import CRFConfig
    from convcrf_deploy.model import ConvCRF, FastFCN, SegmentationModel

    torch.manual_seed(0)
    model = SegmentationModel(FastFCN(5, width=8), ConvCRF(CRFConfig(num_classes=5, filter_size=3,
                                                                     iterations=2)),
                              ModelMetadata.for_classes("abcde", input_size=(40, 48),
                                                        resize="none")).eval()
    frames = thread_frames(12)
    check_same_as_sequential(Segmenter(model, "torch", return_probabilities=True),
                             Segmenter(model, "torch", return_probabilities=True), frames)


def test_torch_timings_split_unary_and_crf_and_drop_the_crf_when_it_is_off():
    torch = pytest.importorskip("torch")
    from convcrf_deploy import CRFConfig
    from convcrf_deploy.model import ConvCRF, FastFCN, SegmentationModel

    torch.manual_seed(0)
    model = SegmentationModel(FastFCN(5, width=8), ConvCRF(CRFConfig(num_classes=5, filter_size=3,
                                                                     iterations=2)),
                              ModelMetadata.for_classes("abcde", resize="none")).eval()
    segmenter = Segmenter(model, "torch")
    timings = segmenter(red_left_frame(40, 48)).timings
    assert {"unary", "crf"} <= set(timings)
    assert timings["inference"] >= timings["unary"] + timings["crf"] > 0
    segmenter.crf = False
    assert "crf" not in segmenter(red_left_frame(40, 48)).timings


def test_confidence_is_the_largest_probability_scaled_to_255(tmp_path):
    # Issue 21: a per-pixel confidence image beside labels and overlay (bags, Foxglove).
    onnx_path = write_toy_onnx(tmp_path / "toy.onnx", input_size=(24, 32), resize="none")
    segmenter = Segmenter(str(onnx_path), return_confidence=True, return_probabilities=True)
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 255, (24, 32, 3), np.uint8)
    result = segmenter(frame)
    expected = np.rint(result.probabilities.max(axis=0) * 255).astype(np.uint8)
    assert result.confidence.dtype == np.uint8 and result.confidence.shape == (24, 32)
    np.testing.assert_array_equal(result.confidence, expected)
    assert result.confidence.min() >= 255 // result.probabilities.shape[0]   # >= 1/C
    # At another frame size it comes back at the frame's size; off by default.
    stretched = Segmenter(str(onnx_path), return_confidence=True, resize="stretch")
    assert stretched(rng.integers(0, 255, (50, 70, 3), np.uint8)).confidence.shape == (50, 70)
    assert Segmenter(str(onnx_path))(frame).confidence is None


def _small_torch_model():
    torch = pytest.importorskip("torch")
    from convcrf_deploy import CRFConfig
    from convcrf_deploy.model import ConvCRF, FastFCN, SegmentationModel

    torch.manual_seed(0)
    return SegmentationModel(FastFCN(5, width=8), ConvCRF(CRFConfig(num_classes=5, filter_size=3,
                                                                    iterations=2)),
                             ModelMetadata.for_classes("abcde", input_size=(40, 48),
                                                       resize="none")).eval()


def test_a_warm_started_segmenter_called_from_a_second_thread_warns_once():
    """Second new-user trial: two cameras on one warm-started Segmenter mixed their streams
    without a word (labels 5.9 % off a single-stream run)."""
    segmenter = Segmenter(_small_torch_model(), "torch", warm_start=True,
                          warm_start_iterations=1)
    frame = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    segmenter(frame)
    segmenter(frame)                                   # the same thread: one stream, silent
    caught = []

    def second_camera():
        import warnings
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            segmenter(frame)
            segmenter(frame)
        caught.extend(records)
    thread = threading.Thread(target=second_camera)
    thread.start()
    thread.join()
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "give each camera its own Segmenter" in messages[0]


def test_result_crf_says_what_each_call_ran_while_another_thread_switches_it():
    """Second new-user trial: with a thread switching ``crf`` every millisecond, 72 of 150
    results reported the opposite of the labels they carried."""
    pytest.importorskip("torch")
    import cv2

    from convcrf_deploy.data.scenes import SyntheticScene
    segmenter = Segmenter("demo")                      # a CRF that changes the unary's labels
    image, _ = SyntheticScene(96, 128, seed=3).render(0)
    frame = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    with_crf = segmenter(frame).labels
    segmenter.crf = False
    without_crf = segmenter(frame).labels
    assert not np.array_equal(with_crf, without_crf)      # the check below can tell them apart
    stop = threading.Event()

    def switch():
        while not stop.is_set():
            segmenter.crf = not segmenter.crf
            time.sleep(0.0005)
    switcher = threading.Thread(target=switch)
    switcher.start()
    try:
        results = [segmenter(frame) for _ in range(60)]
    finally:
        stop.set()
        switcher.join()
    assert {r.crf for r in results} == {True, False}      # both settings were met
    for result in results:
        assert np.array_equal(result.labels, with_crf if result.crf else without_crf)


@pytest.mark.parametrize("size, message", [
    # second new-user trial: cv2.error at the first call, "invalid literal for int()", a
    # TypeError, a MemoryError of 112 GiB at the first call
    ((0, 0), r"in 1..16384 px, got \(0, 0\)"), ((-4, 5), r"in 1..16384 px"),
    ("320x240", "two ints, got '320x240'"), ((1, 2, 3), "two ints"),
    ((100000, 100000), r"in 1..16384 px"), ((240.5, 320), "two ints"),
])
def test_input_size_is_checked_when_the_segmenter_is_made(tmp_path, size, message):
    with pytest.raises(ValueError, match=r"Segmenter\(input_size=\.\.\.\) must be \(height, "
                                         r"width\)" + ".*" + message):
        Segmenter(str(write_toy_onnx(tmp_path / "toy.onnx")), input_size=size)


@pytest.mark.parametrize("frame, fix", [
    # second new-user trial: the errors named the problem but not the fix
    (np.zeros((48, 64), np.uint8), "cv2.COLOR_GRAY2BGR"),
    (np.zeros((48, 64, 4), np.uint8), "cv2.COLOR_BGRA2BGR"),
    (np.zeros((48, 64, 3), np.float32), "scale it to 0..255"),
    (np.zeros((3, 48, 64), np.uint8), "frame.transpose(1, 2, 0)"),
    ([[0]], "pass the image as a numpy array"),
])
def test_a_frame_of_another_kind_says_how_to_convert_it(tmp_path, frame, fix):
    segmenter = Segmenter(str(write_toy_onnx(tmp_path / "toy.onnx")))
    with pytest.raises(ValueError, match=r"frame must be a BGR uint8 array .*" + re.escape(fix)):
        segmenter(frame)
