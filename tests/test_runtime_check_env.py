"""convcrf-check-env reports every check, whatever is installed."""
from __future__ import annotations

import json

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
