"""Shared test configuration.

With CONVCRF_REQUIRE_NATIVE=1 (set by scripts/test.sh and CI) the session fails at once
unless the installed package and its native CPU library are the ones under test, so that a
broken build cannot pass by quietly running the pure-PyTorch fallback.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
#: environment variable naming the PASCAL VOC sample folder when the clone is not beside shared/
VOC_SAMPLE_ENV = "CONVCRF_VOC_SAMPLE"


def voc_sample_path(environ=os.environ) -> Path:
    """$CONVCRF_VOC_SAMPLE when set, else ../shared/data/pascal-voc-sample beside the clone."""
    configured = environ.get(VOC_SAMPLE_ENV)
    return Path(configured).expanduser() if configured else SHARED_DATA / "pascal-voc-sample"


VOC_SAMPLE = voc_sample_path()


def pytest_configure(config):
    if os.environ.get("CONVCRF_REQUIRE_NATIVE") == "1":
        import convcrf_deploy
        from convcrf_deploy import _native

        if _native.cpu_library() is None:
            raise pytest.UsageError(
                f"CONVCRF_REQUIRE_NATIVE=1 but {convcrf_deploy.__file__} has no native CPU "
                "library: build with `pip install .`")


@pytest.fixture
def voc_sample() -> Path:
    """The PASCAL VOC sample folder: $CONVCRF_VOC_SAMPLE, else ../shared/data (skips when it
    is not there)."""
    if not VOC_SAMPLE.is_dir():
        pytest.skip(f"PASCAL VOC sample not found at {VOC_SAMPLE} (set {VOC_SAMPLE_ENV} to "
                    "its folder)")
    return VOC_SAMPLE


@pytest.fixture(autouse=True)
def no_display(monkeypatch):
    """Every test runs headless, as CI does: commands that would open a window decide by
    DISPLAY / WAYLAND_DISPLAY (a test may set them again)."""
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
