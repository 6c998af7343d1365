"""Fixtures of the frame-source and sink tests: a toy exported model and scene frames."""
from __future__ import annotations

import pytest

from convcrf_deploy.runtime.testing import write_toy_onnx


@pytest.fixture(scope="module")
def toy_onnx(tmp_path_factory, request):
    """A toy exported model (``.onnx`` path as str) whose input size is the test module's
    ``TOY_INPUT_SIZE`` (default 48 x 64), resized by stretching."""
    size = getattr(request.module, "TOY_INPUT_SIZE", (48, 64))
    path = tmp_path_factory.mktemp("model") / "toy.onnx"
    return str(write_toy_onnx(path, input_size=size, resize="stretch"))


@pytest.fixture(scope="module")
def frames():
    """Four BGR frames of the synthetic scene (``runtime.streams.ros.testing.scene_frames``)."""
    from convcrf_deploy.runtime.streams.ros.testing import scene_frames
    return scene_frames(4)
