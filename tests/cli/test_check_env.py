"""convcrf-check-env reports every check, whatever is installed."""
from __future__ import annotations

import json

import pytest

from convcrf_deploy.cli.check_env import main


def test_check_env_reports_all_checks_as_json(capsys, tmp_path):
    assert main(["--json", "--plugin", str(tmp_path / "missing.so")]) == 0
    report = json.loads(capsys.readouterr().out)
    for name in ("python", "numpy", "opencv", "onnxruntime", "torch", "ONNX Runtime providers",
                 "native CPU library", "native CUDA library", "tensorrt", "pycuda",
                 "TensorRT plugin library", "display", "cameras"):
        assert set(report[name]) == {"ok", "detail"}, name
    assert "CPUExecutionProvider" in report["ONNX Runtime providers"]["detail"]
    plugin = report["TensorRT plugin library"]
    assert plugin["ok"] is False
    assert f"{tmp_path / 'missing.so'}' (from --plugin) does not exist" in plugin["detail"]


def test_check_env_finds_an_explicit_plugin_and_prints_a_table(capsys, tmp_path):
    plugin = tmp_path / "libconvcrf_trt_plugin.so"
    plugin.write_bytes(b"")
    assert main(["--plugin", str(plugin)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("TensorRT plugin library") and str(plugin) in line
               for line in lines)


def test_cuda_library_without_a_gpu_is_not_reported_ok(monkeypatch, capsys):
    # Field report: the CUDA library was reported "ok" on a machine with no GPU.
    from convcrf_deploy import _native
    from convcrf_deploy.cli import check_env
    monkeypatch.setattr(_native, "cuda_library", lambda: object())        # it loads...
    monkeypatch.setattr(check_env, "cuda_devices", lambda: (0, "no NVIDIA driver"))  # ...no GPU
    assert main(["--json"]) == 0
    entry = json.loads(capsys.readouterr().out)["native CUDA library"]
    assert entry["ok"] is False and "cannot run here: no NVIDIA driver" in entry["detail"]
    monkeypatch.setattr(check_env, "cuda_devices", lambda: (2, ""))
    assert main(["--json"]) == 0
    assert json.loads(capsys.readouterr().out)["native CUDA library"] == {
        "ok": True, "detail": "loaded; 2 CUDA GPU(s)"}
    count, why = check_env.cuda_devices()             # the real query answers either way
    assert isinstance(count, int) and (count > 0 or why)


def test_plugin_library_that_does_not_load_is_not_ok(capsys, tmp_path):
    plugin = tmp_path / "libconvcrf_trt_plugin.so"
    plugin.write_bytes(b"not a shared library")
    assert main(["--json", "--plugin", str(plugin)]) == 0
    entry = json.loads(capsys.readouterr().out)["TensorRT plugin library"]
    assert entry["ok"] is False and "cannot be loaded" in entry["detail"]


def test_missing_plugin_message_does_not_claim_the_extra_builds_it(capsys, tmp_path,
                                                                   monkeypatch):
    monkeypatch.delenv("CONVCRF_TRT_PLUGIN", raising=False)
    from convcrf_deploy.tensorrt import plugin as plugin_module
    monkeypatch.setattr(plugin_module, "LIB_DIR", tmp_path)
    assert main(["--json"]) == 0
    detail = json.loads(capsys.readouterr().out)["TensorRT plugin library"]["detail"]
    assert "CONVCRF_WITH_TENSORRT=ON" in detail and "extra alone does not build it" in detail


def test_the_cpu_kernels_line_names_the_clone_and_settings_it_ignores(monkeypatch):
    """Second new-user trial: check-env did not say which instruction set runs, and
    CONVCRF_CPU_ISA=bogus / CONVCRF_CPU_SPIN_US=abc were ignored without a word."""
    from convcrf_deploy import _native
    if _native.cpu_library() is None:
        pytest.skip("native CPU library not built")
    from convcrf_deploy.cli.check_env import collect
    line = collect()["CPU kernels"]
    assert line["ok"] and line["detail"].startswith(_native.cpu_isa())
    monkeypatch.setenv("CONVCRF_CPU_ISA", "bogus")
    monkeypatch.setenv("CONVCRF_CPU_SPIN_US", "abc")
    line = collect()["CPU kernels"]
    assert not line["ok"] and "'bogus' is not one of baseline, avx2, avx512, auto" in \
        line["detail"] and "'abc' is not a whole number" in line["detail"]
    monkeypatch.setenv("CONVCRF_CPU_ISA", "baseline")
    monkeypatch.setenv("CONVCRF_CPU_SPIN_US", "0")
    assert _native.environment_problems() == []
