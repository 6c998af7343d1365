"""Soak: 10,000 headless demo frames through the runtime, resident memory must stay flat."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SOAK_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "soak_runtime.py"


@pytest.mark.slow
def test_ten_thousand_frames_grow_memory_by_less_than_20_mb():
    spec = importlib.util.spec_from_file_location("soak_runtime", SOAK_SCRIPT)
    soak_runtime = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak_runtime)
    # Small frames and the toy ONNX model keep this within CI's budget (about a minute on
    # 2 cores); the per-frame objects (frames, buffers, results, renders) are all exercised.
    result = soak_runtime.soak(frames=10_000, size=(60, 80))
    print(result)
    assert result["frames"] == 10_000
    assert result["rss_growth_mb"] < 20.0, result
