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
VOC_SAMPLE = SHARED_DATA / "pascal-voc-sample"


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
    """The PASCAL VOC sample folder of ../shared (skips when it is not there)."""
    if not VOC_SAMPLE.is_dir():
        pytest.skip(f"PASCAL VOC sample not found at {VOC_SAMPLE}")
    return VOC_SAMPLE
