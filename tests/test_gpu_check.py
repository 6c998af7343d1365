"""scripts/gpu_check.sh where there is no GPU (every CI machine), and its built-in test runner."""
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"


def tools_without_nvidia_smi(folder: Path, fake_smi: str | None = None) -> dict:
    """An environment whose PATH holds only the tools the kit's first checks need (so a real
    nvidia-smi, where there is one, is not found), plus an optional fake nvidia-smi."""
    folder.mkdir()
    for tool in ("uname", "dirname", "basename", "head"):
        found = shutil.which(tool)
        if found:
            (folder / tool).symlink_to(found)
    if fake_smi is not None:
        smi = folder / "nvidia-smi"
        smi.write_text(f"#!/bin/sh\n{fake_smi}\n")
        smi.chmod(0o755)
    return dict(os.environ, PATH=str(folder))


@pytest.mark.parametrize("fake_smi, message", [
    (None, "no NVIDIA GPU: nvidia-smi not found"),
    ("exit 0", "no NVIDIA GPU: nvidia-smi lists none"),
    ("echo 'NVIDIA-SMI has failed because it could not communicate with the driver' >&2; exit 9",
     "no NVIDIA GPU: nvidia-smi lists none"),
    # A GPU but no toolkit on PATH: the next check names what is missing.
    ("echo 'NVIDIA H200, 9.0, 570.86.15'", "nvcc not found"),
    ("echo 'NVIDIA H200, unknown, 570.86.15'", "cannot read the GPU's compute capability"),
])
def test_without_a_gpu_it_fails_at_once_with_a_clear_message(tmp_path, fake_smi, message):
    env = tools_without_nvidia_smi(tmp_path / "bin", fake_smi)
    start = time.monotonic()
    result = subprocess.run([shutil.which("bash"), str(SCRIPT), "--json", str(tmp_path / "out.json")],
                            env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - start < 10
    assert not (tmp_path / "out.json").exists()


def test_unknown_arguments_are_refused(tmp_path):
    result = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "unknown argument --bogus" in result.stderr


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_built_in_runner_runs_pytest_style_files(tmp_path, monkeypatch):
    """The lent GPU machines have no pytest: the kit's runner must run test_cuda_ops.py's
    constructs (parametrize, stacked; autouse fixture; skip; module skipif) and count right."""
    gpu_check = load_gpu_check()
    monkeypatch.setitem(sys.modules, "pytest", gpu_check._pytest_stand_in())
    calls = []
    monkeypatch.setattr(sys, "gpu_check_calls", calls, raising=False)
    tests = tmp_path / "test_sample.py"
    tests.write_text('''
import sys
import pytest

math = pytest.importorskip("math")
calls = sys.gpu_check_calls

@pytest.fixture(autouse=True)
def setup():
    calls.append("fixture")

@pytest.mark.parametrize("dtype", ["f32", "f16"])
@pytest.mark.parametrize("n, k", [(1, 3), (2, 5)])
def test_grid(n, k, dtype):
    calls.append((n, k, dtype))
    assert not (n == 2 and dtype == "f16"), "bad case"

def test_skipped():
    pytest.skip("not here")

def helper():
    raise AssertionError("never collected")
''')
    results = gpu_check.run_without_pytest(tests)
    assert (results["passed"], results["failed"], results["skipped"]) == (3, 1, 1)
    assert sorted(c for c in calls if c != "fixture") == [(1, 3, "f16"), (1, 3, "f32"), (2, 5, "f16"),
                                                          (2, 5, "f32")]
    assert calls.count("fixture") == 5
    assert all("bad case" in failure for failure in results["failures"])

    skipped_module = tmp_path / "test_no_gpu.py"
    skipped_module.write_text('import pytest\npytestmark = pytest.mark.skipif(True, reason="needs a GPU")\n'
                              'def test_x():\n    raise AssertionError\n')
    results = gpu_check.run_without_pytest(skipped_module)
    assert results["passed"] == results["failed"] == 0
    assert "needs a GPU" in results["failures"][0]


def test_the_onnxruntime_cuda_step_loads_with_the_built_in_runner_and_skips_without_the_provider(
        tmp_path, monkeypatch):
    """tests/ops/test_ort_ops_cuda.py uses only what the stand-in runner provides, and where
    onnxruntime has no CUDA execution provider (CI) the kit reports the step as skipped with
    the reason instead of failing."""
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime has a CUDA provider here: the GPU kit runs the tests for real")
    gpu_check = load_gpu_check()
    monkeypatch.setitem(sys.modules, "pytest", gpu_check._pytest_stand_in())
    results = gpu_check.run_without_pytest(gpu_check.ORT_CUDA_TESTS)
    assert results["passed"] == results["failed"] == 0
    assert "no CUDA execution provider" in results["failures"][0]
    step = gpu_check.run_ort_cuda_tests(tmp_path)
    assert step["status"] == "skipped" and "onnxruntime-gpu" in step["reason"]
