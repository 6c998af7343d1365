"""The runtime imports and runs with numpy, OpenCV and ONNX Runtime alone (torch blocked)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import convcrf_deploy

# The folder holding the package under test (the source tree, or site-packages in CI).
PACKAGE_ROOT = Path(convcrf_deploy.__file__).resolve().parents[1]

#: Prelude of the subprocess scripts: any import of torch fails, as on a machine without it.
BLOCK_TORCH = textwrap.dedent("""
    import importlib.abc, sys

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, BlockTorch())
""")

SCRIPT = BLOCK_TORCH + textwrap.dedent("""

    import numpy as np
    import convcrf_deploy.runtime as runtime
    from convcrf_deploy.cli.run import main
    from convcrf_deploy.runtime.testing import write_toy_onnx

    path = write_toy_onnx(sys.argv[1] + "/toy.onnx", input_size=(48, 64), resize="letterbox")
    segmenter = runtime.Segmenter(str(path))
    result = segmenter(np.zeros((30, 50, 3), np.uint8), timestamp=7)
    assert result.labels.shape == (30, 50) and result.timestamp == 7
    code = main(["--video", "demo", "--model", str(path), "--headless", "--max-frames", "3",
                 "--size", "64x48", "--save", sys.argv[1] + "/out.mp4"])
    assert code == 0, code
    try:
        runtime.create_backend("demo")
    except runtime.BackendUnavailableError as exc:
        assert "convcrf-deploy[torch]" in str(exc), exc
    else:
        raise AssertionError("the torch backend was created without torch")
    assert "torch" not in sys.modules
    print("RUNTIME-WITHOUT-TORCH-OK")
""")


def test_runtime_runs_onnx_models_without_torch(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(PACKAGE_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "RUNTIME-WITHOUT-TORCH-OK" in done.stdout


NATIVE_SCRIPT = BLOCK_TORCH + textwrap.dedent("""

    import numpy as np
    from convcrf_deploy.runtime import Segmenter

    folder = sys.argv[1]
    expected = np.load(folder + "/expected.npz")
    segmenter = Segmenter(folder + "/demo.onnx", threads=2, return_probabilities=True)
    assert segmenter.describe()["crf_executor"] == "native", segmenter.describe()
    result = segmenter(expected["frame"])
    assert np.array_equal(result.labels, expected["labels"])
    assert np.abs(result.probabilities - expected["probabilities"]).max() < 1e-4
    # The warm start (crf.WarmStartMeanField over the native CRF) needs no torch either.
    video = Segmenter(folder + "/demo.onnx", threads=2, warm_start=True)
    for _ in range(3):
        assert video(expected["frame"]).labels.shape == expected["labels"].shape
    assert video.backend.warm_start.previous is not None
    assert "torch" not in sys.modules
    print("NATIVE-CRF-WITHOUT-TORCH-OK")
""")


def test_runtime_runs_the_native_crf_without_torch(tmp_path):
    """An exported model's CRF runs natively in a process without torch, and gives what the
    graph's own CRF gives."""
    pytest.importorskip("onnxscript")
    from convcrf_deploy._native import cpu_library
    from convcrf_deploy.export import export_onnx
    from convcrf_deploy.runtime import Segmenter

    if cpu_library() is None:
        pytest.skip("native library not built")
    export_onnx("demo", tmp_path / "demo.onnx", verify=False)
    frame = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    graph = Segmenter(str(tmp_path / "demo.onnx"), crf_executor="graph",
                      return_probabilities=True)(frame)
    np.savez(tmp_path / "expected.npz", frame=frame, labels=graph.labels,
             probabilities=graph.probabilities)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(PACKAGE_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, "-c", NATIVE_SCRIPT, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "NATIVE-CRF-WITHOUT-TORCH-OK" in done.stdout
