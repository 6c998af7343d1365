"""Progress for steps that take a while: a status line on a terminal, nothing in a pipe
(no torch). The one progress helper of the toolkit: exports, verification, engine builds,
Triton repositories, evaluation and training use it.

    with Progress("export: verifying against PyTorch"):           # a step of unknown length
        verify(...)
    with Progress("dataset", total=len(images)) as bar:             # a counted step
        for image in images:
            ...
            bar.advance(note=image.name)

The line goes to standard error, only when it is a terminal (``CONVCRF_PROGRESS=0`` turns it
off, ``=1`` on, e.g. for logs), and only once the step has taken ``delay_s`` (1 s by default),
so quick steps print nothing. It is redrawn in place (``\\r``) at most every 0.25 s, with the
elapsed seconds, and finished with ``label: done in 12.3 s`` (``failed after``/``interrupted
after`` when the step raised). Safe to use from one thread; the redraw runs on a daemon thread.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import TextIO

#: environment variable: ``0`` never show progress, ``1`` always (else: on a terminal).
ENV = "CONVCRF_PROGRESS"


def wanted(stream: TextIO | None = None) -> bool:
    """Whether progress should be shown on ``stream`` (default stderr): :data:`ENV`, else
    whether it is a terminal."""
    setting = os.environ.get(ENV, "")
    if setting in ("0", "1"):
        return setting == "1"
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Progress:
    """A context manager showing one step's progress (see the module docstring).

    Args:
        label: what is being done, e.g. ``"TensorRT: building the engine"``.
        total: the number of items when the step is counted (draws ``[####....] 3/7``).
        stream: where to draw (default stderr).
        delay_s: show nothing for steps shorter than this.
        enabled: force on/off (default :func:`wanted`).
    """

    def __init__(self, label: str, total: int | None = None, *, stream: TextIO | None = None,
                 delay_s: float = 1.0, enabled: bool | None = None, width: int = 24):
        self.label, self.total, self.delay_s, self.width = label, total, delay_s, width
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = wanted(self.stream) if enabled is None else enabled
        self.done = 0
        self.note = ""
        self.shown = False
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "Progress":
        self._start = time.monotonic()
        if self.enabled:
            self._thread = threading.Thread(target=self._tick, daemon=True,
                                            name=f"progress {self.label}")
            self._thread.start()
        return self

    def advance(self, count: int = 1, note: str = "") -> None:
        """``count`` more items done; ``note`` (e.g. the item's name) is shown beside."""
        self.done += count
        self.note = note
        if self.shown and time.monotonic() - self._last_draw >= 0.1:
            self._draw()

    def _tick(self) -> None:
        if self._stop.wait(self.delay_s):
            return
        while True:
            self._draw()
            if self._stop.wait(0.25):
                return

    def _line(self) -> str:
        elapsed = time.monotonic() - self._start
        if self.total:
            filled = self.width * min(self.done, self.total) // self.total
            bar = "#" * filled + "." * (self.width - filled)
            return (f"{self.label} [{bar}] {self.done}/{self.total} {self.note[:30]:<30} "
                    f"{elapsed:5.0f} s")
        if self.done:
            return f"{self.label}: {self.done} {self.note[:40]} {elapsed:.0f} s"
        return f"{self.label} ... {elapsed:.0f} s"

    def _draw(self) -> None:
        with self._lock:
            if self._stop.is_set() and not self.shown:
                return
            self.stream.write("\r" + self._line())
            self.stream.flush()
            self.shown = True
            self._last_draw = time.monotonic()

    def close(self, kind: type[BaseException] | None = None) -> None:
        """Stop redrawing and finish the line if one was shown (``kind``: the exception that
        ended the step, if any); idempotent, so the line can be finished before the step's
        caller prints its own results."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.shown:
            elapsed = time.monotonic() - self._start
            how = ("done in" if kind is None else
                   "interrupted after" if issubclass(kind, KeyboardInterrupt) else "failed after")
            counted = (f" ({self.done}/{self.total})" if self.total else
                       f" ({self.done})" if self.done else "")
            with self._lock:
                self.stream.write(f"\r\033[K{self.label}: {how} {elapsed:.1f} s{counted}\n")
                self.stream.flush()

    def __exit__(self, kind, value, traceback) -> None:
        self.close(kind)
