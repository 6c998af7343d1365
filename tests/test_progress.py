"""Long steps show progress on a terminal and stay quiet in a pipe (issue 21).

Before: a plugin-flavour ``--fp16`` export ran 200-250 s without a word; so did engine
builds, Triton repositories, training and headless runs. Each goes through
``convcrf_deploy.progress.Progress``; the tests check the helper on fake and real terminals and
that each command's long steps use it. To show progress in a new long step, wrap it in
``with Progress("<command>: <what>"):`` (counted: ``Progress(label, total)`` and
``advance()``) and add the command to ``test_every_long_step_reports_progress``.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import pytest

from convcrf_deploy.progress import ENV, Progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def no_progress_setting(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)


def test_a_long_step_is_shown_on_a_terminal_and_finished_with_its_time():
    terminal = FakeTerminal()
    with Progress("export: verifying", stream=terminal, delay_s=0.05):
        time.sleep(0.4)
    text = terminal.getvalue()
    assert text.startswith("\rexport: verifying ... ") and text.count("\r") >= 2
    assert text.endswith("s\n") and "export: verifying: done in 0." in text


def test_counted_steps_draw_a_bar_and_failures_say_so():
    terminal = FakeTerminal()
    with pytest.raises(RuntimeError):
        with Progress("dataset", 4, stream=terminal, delay_s=0.0) as bar:
            for name in ("a", "b", "c"):
                bar.advance(note=name)
                time.sleep(0.15)
            raise RuntimeError("image d is damaged")
    text = terminal.getvalue()
    assert "3/4" in text and "[" in text and "dataset: failed after" in text


def test_quiet_in_a_pipe_for_quick_steps_and_when_switched_off(monkeypatch):
    pipe = io.StringIO()                                  # not a terminal
    with Progress("step", stream=pipe, delay_s=0.0):
        time.sleep(0.3)
    assert pipe.getvalue() == ""
    terminal = FakeTerminal()
    with Progress("quick", stream=terminal, delay_s=1.0):   # shorter than the delay
        pass
    assert terminal.getvalue() == ""
    monkeypatch.setenv(ENV, "0")
    with Progress("off", stream=terminal, delay_s=0.0):
        time.sleep(0.3)
    assert terminal.getvalue() == ""
    monkeypatch.setenv(ENV, "1")                           # forced on, e.g. into a log
    with Progress("on", stream=pipe, delay_s=0.0):
        time.sleep(0.3)
    assert "on: done in" in pipe.getvalue()


_STEP = "from convcrf_deploy.progress import Progress; import time\n" \
        "with Progress('convcrf-export: verifying'):\n    time.sleep(1.6)\n"


def test_a_real_terminal_gets_progress_and_a_real_pipe_does_not():
    import pty

    env = {k: v for k, v in os.environ.items() if k != ENV}
    piped = subprocess.run([sys.executable, "-c", _STEP], capture_output=True, text=True,
                           env=env, timeout=60)
    assert piped.returncode == 0 and piped.stderr == ""
    leader, follower = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-c", _STEP], stderr=follower,
                              stdout=subprocess.DEVNULL, env=env, timeout=60)
        os.close(follower)
        follower = None
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:                                 # EIO: the writer side is gone
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        if follower is not None:
            os.close(follower)
        os.close(leader)
    text = b"".join(chunks).decode()
    assert done.returncode == 0
    assert "convcrf-export: verifying ..." in text and "done in 1." in text


@pytest.fixture
def recorded(monkeypatch):
    labels: list[str] = []
    real_enter = Progress.__enter__

    def enter(self):
        labels.append(self.label)
        return real_enter(self)
    monkeypatch.setattr(Progress, "__enter__", enter)
    return labels


def test_every_long_step_reports_progress(tmp_path, recorded, voc_sample, monkeypatch):
    """Each command's steps that can take longer than ~2 s go through Progress (engine
    builds: tests/tensorrt_builder/test_tensorrt_python.py, which has the fake TensorRT)."""
    pytest.importorskip("torch")
    from convcrf_deploy.cli import eval as eval_cli
    from convcrf_deploy.cli import export, run, train, triton

    model = tmp_path / "demo.onnx"
    steps = [
        (export.main, ["demo", "-o", str(model), "--height", "24", "--width", "32"],
         ["export: tracing the model and translating it to ONNX",
          "export: verifying the graph against PyTorch", "export: writing demo.onnx"]),
        (triton.main, [str(model), "-o", str(tmp_path / "repo")],
         [f"convcrf-triton: writing {tmp_path / 'repo' / 'convcrf'}"]),
        (run.main, ["--video", "demo", "--model", str(model), "--size", "64x48",
                    "--max-frames", "2", "--headless"],
         [f"convcrf-run: loading {model}", "convcrf-run: demo scene 64x48 seed 0"]),
        (eval_cli.main, ["synthetic", "--data", str(voc_sample), "--max-images", "1",
                         "--scale", "0.2", "--filter-sizes", "3"], ["synthetic"]),
        (train.main, ["crf", "--data", str(voc_sample), "--synthetic", "--max-images", "2",
                      "--scale", "0.2", "--epochs", "1", "--holdout", "0.5"], ["training"]),
    ]
    for main, args, labels in steps:
        recorded.clear()
        start = time.monotonic()
        assert main(args) == 0, args
        print(f"{main.__module__}: {time.monotonic() - start:.1f} s")
        # Tracing is skipped when this process traced the same model before (a cache).
        assert [r for r in recorded if "tracing" not in r] == \
            [label for label in labels if "tracing" not in label], (args, recorded)
