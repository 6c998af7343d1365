"""Fixtures shared by the users'-network tests."""
from __future__ import annotations

import cv2
import pytest

@pytest.fixture(scope="module")
def frames(tmp_path_factory, request):
    """A folder of two frames of the synthetic street-like scene at the test module's
    ``FRAME_SIZE`` (H, W; odd, so that every network is padded)."""
    from convcrf_deploy.data.scenes import SyntheticScene
    folder = tmp_path_factory.mktemp("frames")
    scene = SyntheticScene(*request.module.FRAME_SIZE, seed=3)
    for t in range(2):
        cv2.imwrite(str(folder / f"frame_{t}.png"), scene.render(10 * t)[0][:, :, ::-1])
    return folder
