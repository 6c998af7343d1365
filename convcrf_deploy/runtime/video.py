"""The video loop behind ``convcrf-run``: read, segment, score, draw, show, record, measure.

:func:`run_video` works with any :class:`~.sources.FrameSource` and :class:`~.Segmenter`; it
is usable from Python (frame callbacks, no window) as well as from the CLI.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import cv2

from ..errors import describe_error
from ..metrics import MIOU_LEGEND
from .segmenter import SegmentationResult, Segmenter
from .streams import Frame, FrameSink, FrameSource, FrameWriter
from .stats import LatencyStats, SegmentationScore
from .visualize import Renderer, draw_hud

log = logging.getLogger(__name__)

WINDOW_NAME = "convcrf-run"


def display_available() -> bool:
    """Whether a window can be shown: on Linux a ``DISPLAY`` or ``WAYLAND_DISPLAY`` is needed."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


@dataclass
class RunReport:
    """What a :func:`run_video` run measured (``to_dict()`` is the ``--stats-json`` content)."""

    source: str
    frames: int = 0
    wall_time_s: float = 0.0
    dropped_frames: int = 0
    corrupt_frames: int = 0
    reconnects: int = 0
    interrupted: bool = False
    #: the signal that ended the run (``"SIGINT"``, ``"SIGTERM"``, ``"SIGHUP"``) or None.
    signal: str | None = None
    source_error: str | None = None
    latency: LatencyStats = field(default_factory=LatencyStats)
    scores: dict[str, SegmentationScore] = field(default_factory=dict)
    frames_written: int = 0
    #: outputs (the recording, sinks) that failed, each ``"<output>: <reason>"``; a failed
    #: output is dropped and the run and the other outputs go on.
    output_errors: list[str] = field(default_factory=list)
    #: the error that ended the run early (one line), or None; the frames before it are
    #: counted and timed here.
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames / self.wall_time_s if self.wall_time_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        stages = self.latency.to_dict()
        frame_age = stages.pop("frame_age", self.latency.summary("frame_age"))
        data = {**self.info, "source": self.source, "frames": self.frames,
                "fps": round(self.fps, 3), "wall_time_s": round(self.wall_time_s, 3),
                "dropped_frames": self.dropped_frames, "corrupt_frames": self.corrupt_frames,
                "reconnects": self.reconnects, "interrupted": self.interrupted,
                "signal": self.signal,
                "source_error": self.source_error, "frames_written": self.frames_written,
                "output_errors": list(self.output_errors), "error": self.error,
                "stages_ms": stages, "frame_age_ms": frame_age,
                "frame_split": self.latency.frame_split()}
        if self.scores:
            data["accuracy"] = {name: score.to_dict() for name, score in self.scores.items()}
        return data

    def summary_table(self) -> str:
        """A plain-text table of the run for the terminal."""
        setup = [f"{key} {self.info[key]}" for key in ("model", "backend", "threads", "crf")
                 if key in self.info]
        if self.info.get("crf_executor"):
            detail = self.info.get("crf_executor_detail")
            setup.append(f"CRF executor {self.info['crf_executor']}"
                         + (f" ({detail})" if detail else ""))
        lines = ([", ".join(setup)] if setup else []) + [
                 f"source {self.source}: {self.frames} frames in {self.wall_time_s:.2f} s "
                 f"= {self.fps:.1f} FPS; dropped {self.dropped_frames}, corrupt "
                 f"{self.corrupt_frames}" + (f", written {self.frames_written}"
                                             if self.frames_written else ""),
                 f"{'stage':<12}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}{'mean ms':>10}"]
        for name in self.latency.stages():
            s = self.latency.summary(name)
            lines.append(f"{name:<12}{s['p50']:>10.2f}{s['p95']:>10.2f}{s['max']:>10.2f}"
                         f"{s['mean']:>10.2f}")
        split = self.latency.frame_split()
        if split:
            lines.append(f"frame time {split['frame_ms']:.2f} ms: " + ", ".join(
                f"{part} {entry['percent']:.1f} %" for part, entry in split["parts"].items()))
        if "frame_age" in self.latency.stages():
            lines.append("frame_age: from capture to result, the latency a consumer of the "
                         "labels sees (live sources include the wait for the newest frame)")
        for name, score in self.scores.items():
            lines.append(f"{name + ' vs truth':<18} pixel accuracy {score.pixel_accuracy:.2%}"
                         f"  mIoU VOC {score.mean_iou:.2%}")
        if self.scores:
            lines.append(MIOU_LEGEND["miou"])
        for sink in self.info.get("sinks", ()):
            lines.append(sink["message"])
        if self.source_error:
            lines.append(f"source ended: {self.source_error}")
        if self.error:
            lines.append(f"run failed after {self.frames} frame(s): {self.error}")
        lines.extend(f"output failed: {error}" for error in self.output_errors)
        return "\n".join(lines)


def _hud_lines(report: RunReport, segmenter: Segmenter, renderer: Renderer,
               live: bool) -> list[str]:
    recent = {stage: report.latency.recent_mean(stage)
              for stage in ("read", "preprocess", "inference", "postprocess", "render")}
    frame_ms = sum(recent.values())
    fps = 1e3 / frame_ms if frame_ms > 0 else 0.0
    if "unary" in report.latency.stages():  # the backend times unary and CRF apart
        crf = report.latency.recent_mean("crf") if segmenter.crf else 0.0
        inference = (f"unary {report.latency.recent_mean('unary'):.1f} crf {crf:.1f}")
    else:
        inference = f"inf {recent['inference']:.1f}"
    lines = [f"{fps:.1f} FPS  pre {recent['preprocess']:.1f} {inference} post "
             f"{recent['postprocess']:.1f} draw {recent['render']:.0f} ms",
             f"CRF {'on' if segmenter.crf else 'off'} ({segmenter.backend.crf_executor})  "
             f"view {renderer.view}  {segmenter.backend.name}"]
    if live:
        age = report.latency.recent_mean("frame_age")
        lines.append(f"dropped {report.dropped_frames}  frame age {age:.1f} ms")
    for name, score in report.scores.items():
        lines.append(f"{name}: accuracy {score.pixel_accuracy:.1%}  mIoU VOC "
                     f"{score.mean_iou:.1%}")
    return lines


def run_video(source: FrameSource, segmenter: Segmenter, *, display: bool = False,
              save: str | None = None, max_frames: int | None = None, view: str = "overlay",
              alpha: float = 0.5, fps: float | None = None, hud: bool = True,
              on_frame: Callable[[Frame, SegmentationResult], None] | None = None,
              sinks: Sequence[FrameSink] = (),
              on_end: Callable[[RunReport], None] | None = None) -> RunReport:
    """Segment every frame of ``source`` (live sources: the newest one) until it ends,
    ``max_frames`` frames were processed, the user quits (``q``/Esc) or Ctrl-C.

    Args:
        source: where frames come from; closed when the run ends.
        segmenter: the model.
        display: show a window (keys: q quit, space pause, c toggle CRF, v cycle view).
        save: record the rendered frames (``.mp4``/``.avi`` or an image pattern).
        max_frames: stop after this many processed frames.
        view, alpha: rendering (see :class:`Renderer`).
        fps: frame rate of the recording (default: the source's, else 30).
        hud: draw FPS, latency and scores onto displayed and recorded frames.
        on_frame: called with each frame and its result (e.g. to publish labels).
        sinks: :class:`FrameSink` objects fed every frame and closed when the run ends.
        on_end: called with the report once the run has ended (also when interrupted) and the
            recording, source and sinks are closed, before this returns: write statistics
            here, so that an interrupt during the shutdown cannot lose them (see below).

    Outputs fail alone: when the recording or a sink raises (a writer that cannot open, a
    full disk, a viewer that rejects a message), that output is dropped (a recording is
    discarded, a previous file at ``save`` stays; a sink is closed with ``completed=False``),
    the failure is logged and listed in ``RunReport.output_errors``, and the run and the other
    outputs go on.

    Returns:
        the :class:`RunReport`; Ctrl-C, and SIGTERM or SIGHUP (a service manager or a closed
        terminal) when called from the main thread, end the run cleanly with
        ``interrupted=True`` and ``signal`` naming the signal: the recording is finalised
        and playable. From the end of the loop until ``on_end`` has returned, further
        interrupts (a second Ctrl-C) are noted, not raised (main thread only), so the
        recording, the sinks' outputs and ``on_end`` always complete; the shutdown itself is
        bounded (live sources and the Foxglove server get about a second each). Any other
        exception discards the recording (a previous file at ``save`` stays as it was), sets
        ``report.error`` (one line), calls ``on_end`` (so that the statistics of the frames
        before it are written) and propagates.
    """
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    report = RunReport(source=source.description)
    meta = segmenter.metadata
    renderer = Renderer(meta.palette, view, alpha)
    score_classes = None
    if source.has_ground_truth:
        names = tuple(getattr(source, "class_names", ()))
        if names and tuple(meta.class_names[:len(names)]) != names:
            log.warning("the model's classes %s do not match the source's %s: not scoring",
                        meta.class_names, names)
        else:
            score_classes = meta.num_classes
    writer = FrameWriter(save, fps or getattr(source, "fps", None)) if save else None
    sinks = list(sinks)
    paused = False
    completed = False
    start = time.perf_counter()
    restore_signals = _interrupt_on_termination(report)
    try:
        while max_frames is None or report.frames < max_frames:
            if paused:
                paused = _handle_key(cv2.waitKey(30) & 0xFF, segmenter, renderer, paused)
                if paused is None:
                    break
                continue
            t_read = time.perf_counter()
            frame = source.read()
            if frame is None:
                break
            # Live sources: time waiting for a new frame; recorded ones: decoding/rendering it.
            report.latency.add("read", (time.perf_counter() - t_read) * 1e3)
            # The source's own time (a bag's header stamp) when it has one, else the capture time.
            result = segmenter(frame.image, timestamp=frame.capture_time if frame.stamp is None
                               else frame.stamp)
            report.latency.add_all(result.timings)
            # Age = capture to result: what a consumer of the labels sees as latency.
            report.latency.add("frame_age", (time.monotonic() - frame.capture_time) * 1e3)
            if score_classes is not None and frame.ground_truth is not None:
                if result.unary_labels is not None:
                    report.scores.setdefault("unary", SegmentationScore(score_classes)).update(
                        result.unary_labels, frame.ground_truth)
                if result.crf:
                    report.scores.setdefault("crf", SegmentationScore(score_classes)).update(
                        result.labels, frame.ground_truth)
            if on_frame is not None:
                on_frame(frame, result)
            for sink in list(sinks):
                try:
                    sink.write(frame, result)
                except Exception as exc:
                    sinks.remove(sink)
                    _drop_sink(report, sink, exc)
            report.frames += 1
            report.dropped_frames = source.dropped_frames
            if display or writer is not None:
                t0 = time.perf_counter()
                image = renderer.render(frame.image, result.labels, result.unary_labels)
                if hud:
                    draw_hud(image, _hud_lines(report, segmenter, renderer, source.live))
                if writer is not None:
                    try:
                        writer.write(image)
                    except Exception as exc:
                        _output_failed(report, f"recording {save}", exc)
                        writer.abort()
                        writer = None
                if display:
                    try:
                        cv2.imshow(WINDOW_NAME, image)
                    except cv2.error as exc:  # e.g. opencv-python-headless: no GUI backend
                        print("convcrf-run: " + describe_error(
                            exc, "cannot open a window", "continuing headless"), file=sys.stderr)
                        display = False
                    else:
                        paused = _handle_key(cv2.waitKey(1) & 0xFF, segmenter, renderer, paused)
                        if paused is None:
                            break
                report.latency.add("render", (time.perf_counter() - t0) * 1e3)
        completed = True
    except KeyboardInterrupt:
        report.interrupted = completed = True
        report.signal = report.signal or "SIGINT"
    except BaseException as exc:
        if writer is not None:
            writer.abort()
            writer = None
        if isinstance(exc, Exception):
            report.error = describe_error(exc)
        raise
    finally:
        restore_signals()
        restore_signals = _defer_interrupts(report)  # a second Ctrl-C must not lose outputs
        try:
            report.wall_time_s = time.perf_counter() - start
            if writer is not None:
                try:
                    writer.close()
                    report.frames_written = writer.frames_written
                except Exception as exc:
                    _output_failed(report, f"recording {save}", exc)
            source.close()
            report.dropped_frames = source.dropped_frames
            report.corrupt_frames = source.corrupt_frames
            report.reconnects = source.reconnects
            report.source_error = source.error
            if display:
                cv2.destroyAllWindows()
            _close_sinks(sinks, completed, report)
            if (completed or report.error) and on_end is not None:
                on_end(report)
        finally:
            restore_signals()
    return report


#: signals that end a run like Ctrl-C (SIGHUP does not exist on Windows).
TERMINATION_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP")
                            if hasattr(signal, name))


def _interrupt_on_termination(report: RunReport) -> Callable[[], None]:
    """Make SIGTERM/SIGHUP raise KeyboardInterrupt (as SIGINT does) so that the run ends
    through the same clean path; returns the function restoring the previous handlers.
    Signal handlers can only be set from the main thread: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, _frame):
        report.signal = signal.Signals(signum).name
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, handler) for signum in TERMINATION_SIGNALS}

    def restore() -> None:
        for signum, old in previous.items():
            signal.signal(signum, old)
    return restore


def _defer_interrupts(report: RunReport) -> Callable[[], None]:
    """While a run shuts down: SIGINT, SIGTERM and SIGHUP are noted in ``report`` (and said
    once on stderr) instead of raising, so that the recording and statistics are completed;
    returns the function restoring the previous handlers. Main thread only (elsewhere it does
    nothing: signals are delivered to the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    said = []

    def handler(signum, _frame):
        report.interrupted = True
        report.signal = report.signal or signal.Signals(signum).name
        if not said:
            said.append(True)
            print(f"{signal.Signals(signum).name} again: finishing the recording and "
                  "statistics first (a few seconds at most)...", file=sys.stderr, flush=True)

    signals = (signal.SIGINT, *TERMINATION_SIGNALS)
    previous = {signum: signal.signal(signum, handler) for signum in signals}

    def restore() -> None:
        for signum, old in previous.items():
            signal.signal(signum, old)
    return restore


def _output_name(sink: FrameSink) -> str:
    return str(getattr(sink, "description", "") or type(sink).__name__)


def _output_failed(report: RunReport, name: str, exc: BaseException) -> None:
    """Record that an output failed (the run goes on without it)."""
    message = f"{name}: {describe_error(exc)}"
    report.output_errors.append(message)
    log.error("%s; going on without it", message)


def _drop_sink(report: RunReport, sink: FrameSink, exc: BaseException) -> None:
    """A sink failed during the run: report it and close it as failed (discarding a partial
    output); the run goes on without it."""
    _output_failed(report, _output_name(sink), exc)
    try:
        sink.close(completed=False)
    except Exception as close_exc:
        log.warning("%s: closing it failed too: %s", _output_name(sink),
                    describe_error(close_exc))


def _close_sinks(sinks: Sequence[FrameSink], completed: bool, report: RunReport) -> None:
    """Close every sink even when one fails (a failure is an output error of ``report``, as is
    an ``error`` a sink recorded on its own thread, e.g. Foxglove publishing); their
    ``summary()`` lines go into ``report.info["sinks"]``."""
    for sink in sinks:
        try:
            sink.close(completed=completed)
        except Exception as exc:
            _output_failed(report, _output_name(sink), exc)
            continue
        if getattr(sink, "error", None):
            report.output_errors.append(f"{_output_name(sink)}: {sink.error}")
        describe = getattr(sink, "summary", None)
        if callable(describe):
            summary = describe()
            if summary:
                report.info.setdefault("sinks", []).append(summary)


def _handle_key(key: int, segmenter: Segmenter, renderer: Renderer, paused: bool) -> bool | None:
    """Apply a key press; returns the new paused state, or ``None`` to quit."""
    if key in (ord("q"), 27):
        return None
    if key == ord(" "):
        return not paused
    if key == ord("c"):
        segmenter.crf = not segmenter.crf
    elif key == ord("v"):
        renderer.next_view()
    return paused
