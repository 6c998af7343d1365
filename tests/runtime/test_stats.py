"""Run statistics (runtime/stats.py): where a frame's time goes."""
from __future__ import annotations

import pytest

from convcrf_deploy.runtime.stats import FRAME_PARTS, FRAME_PARTS_UNSPLIT, LatencyStats


def test_frame_split_shares_the_frame_between_pre_unary_crf_and_post():
    stats = LatencyStats()
    for crf in (6.0, 6.0, None):  # the CRF switched off on the third frame
        timings = {"preprocess": 1.0, "inference": 16.0 if crf else 10.0, "unary": 9.0,
                   "postprocess": 1.0}
        if crf:
            timings["crf"] = crf
        stats.add_all(timings)
    split = stats.frame_split()
    parts = split["parts"]
    assert tuple(parts) == FRAME_PARTS
    assert split["frame_ms"] == pytest.approx(1 + 14 + 1)  # mean inference (16 + 16 + 10) / 3
    assert parts["crf"]["mean_ms"] == pytest.approx(4.0)  # 0 on the frame without it
    assert parts["other"]["mean_ms"] == pytest.approx(1.0)  # inference - unary - crf
    assert parts["unary"]["percent"] == pytest.approx(100 * 9 / 16, abs=0.01)
    assert sum(part["percent"] for part in parts.values()) == pytest.approx(100, abs=0.05)


def test_frame_split_of_a_backend_that_runs_the_model_in_one_piece():
    stats = LatencyStats()
    assert stats.frame_split() == {}
    stats.add_all({"preprocess": 2.0, "inference": 6.0, "postprocess": 2.0})
    parts = stats.frame_split()["parts"]
    assert tuple(parts) == FRAME_PARTS_UNSPLIT
    assert parts["inference"]["percent"] == pytest.approx(60.0)
