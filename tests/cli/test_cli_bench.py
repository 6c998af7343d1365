"""convcrf-bench: the latency table and JSON for torch and ONNX Runtime, the sweep, exit codes
for unknown or unavailable backends and bad arguments."""
from __future__ import annotations

import json
import sys

import pytest

from convcrf_deploy import save_model
from convcrf_deploy.benchmarking import STAGES, STAT_KEYS
from convcrf_deploy.cli.bench import main
from convcrf_deploy.cli.harness import ExitCode

EXIT_OK, EXIT_USAGE = ExitCode.OK, ExitCode.USAGE
from convcrf_deploy.install import install_hint

from test_benchmarking import check_stats, tiny_model

FAST = ["--sizes", "40x32", "--iterations", "3", "--warmup", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "tiny.pt"
    save_model(tiny_model(), path)
    return str(path)


def test_torch_and_onnxruntime_report_unary_and_crf_separately(checkpoint, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = tmp_path / "b.json"
    assert main([checkpoint, "--backends", "torch,onnxruntime", "--json", str(out)] + FAST) \
        == EXIT_OK
    table = capsys.readouterr().out
    for word in ("torch", "onnxruntime", "unary", "crf", "full", "vs torch"):
        assert word in table
    result = json.loads(out.read_text())
    assert result["machine"]["cpu_count"] >= 1 and result["settings"]["threads"] == 1
    assert result["machine"]["onnxruntime"] and result["machine"]["torch"]
    for name in ("torch", "onnxruntime"):
        entry = result["backends"][name]["sizes"]["40x32"]
        for stage in STAGES:
            assert set(STAT_KEYS) <= set(entry[stage])
            check_stats(entry[stage])
            assert entry[stage]["speedup_vs_torch"] > 0


def test_unknown_backend_exits_2(checkpoint, capsys):
    assert main([checkpoint, "--backends", "torch,tflite"]) == EXIT_USAGE
    assert "unknown backend 'tflite'" in capsys.readouterr().err


def test_tensorrt_alone_without_tensorrt_exits_nonzero_naming_the_extra(checkpoint, capsys,
                                                                        monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    assert main([checkpoint, "--backends", "tensorrt"] + FAST) == ExitCode.MISSING_DEPENDENCY
    assert install_hint("tensorrt") in capsys.readouterr().err


def test_missing_backend_next_to_torch_is_reported_as_skipped(checkpoint, capsys, monkeypatch,
                                                              tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    out = tmp_path / "b.json"
    assert main([checkpoint, "--backends", "torch,onnxruntime", "--json", str(out)] + FAST) \
        == EXIT_OK
    assert "onnxruntime: skipped" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["backends"]["onnxruntime"]["status"] == "skipped"
    assert "pip install" in result["backends"]["onnxruntime"]["reason"]


def test_sweep_prints_a_table_and_writes_json(checkpoint, tmp_path, capsys):
    out = tmp_path / "sweep.json"
    assert main([checkpoint, "--sweep", "--filter-sizes", "3,5", "--blurs", "2",
                 "--crf-iterations", "1", "--size", "64x48", "--num-frames", "1",
                 "--iterations", "2", "--warmup", "0", "--json", str(out)]) == EXIT_OK
    table = capsys.readouterr().out
    assert "mIoU gain" in table and "5*" not in table  # the model's setting has 2 iterations
    rows = json.loads(out.read_text())["rows"]
    assert sorted((r["filter_size"], r["blur"], r["iterations"]) for r in rows) == \
        [(3, 2, 1), (5, 2, 1)]
    assert rows[0]["p50_ms"] <= rows[1]["p50_ms"]


def test_sweep_warm_starts_the_onnxruntime_backends_crf(checkpoint, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "sweep.json"
    assert main([checkpoint, "--sweep", "--backends", "onnxruntime", "--warm-start-iterations",
                 "1", "--size", "64x48", "--num-frames", "3", "--iterations", "2", "--warmup",
                 "0", "--threads", "1", "--json", str(out)]) == EXIT_OK
    table = capsys.readouterr().out
    assert "NativeCRF" in table and "1 it" in table
    data = json.loads(out.read_text())
    assert data["settings"]["backend"] == "onnxruntime" and data["settings"]["clip"]
    assert sorted(str(r["warm_start_iterations"]) for r in data["rows"]) == ["1", "None"]


def test_crf_executor_graph_and_the_frame_split_on_the_command_line(checkpoint, tmp_path,
                                                                    capsys):
    pytest.importorskip("onnxscript")
    out = tmp_path / "bench.json"
    assert main([checkpoint, "--backends", "onnxruntime", "--crf-executor", "graph", *FAST,
                 "--json", str(out)]) == EXIT_OK
    table = capsys.readouterr().out
    assert "CRF executor graph" in table and "frame time" in table
    entry = json.loads(out.read_text())["backends"]["onnxruntime"]["sizes"]["40x32"]
    assert set(entry["frame_split"]["parts"]) == {"preprocess", "unary", "crf", "other",
                                                  "postprocess"}


@pytest.mark.parametrize("args, message", [
    (["--sizes", "320"], "WIDTHxHEIGHT"),
    (["--filter-sizes", "5"], "only apply with --sweep"),
    (["--sweep", "--plot", "x.png"], "--plot"),
    (["--sweep", "--filter-sizes", "4"], "filter_size"),
    (["--warm-start-iterations", "1"], "only apply with --sweep"),
    (["--sweep", "--crf-executor", "graph"], "the sweep varies the CRF's settings"),
    (["--sweep", "--backends", "torch,onnxruntime"], "--sweep runs one backend's CRF"),
    (["--sweep", "--backends", "tensorrt"], "the sweep runs on torch or onnxruntime"),
    (["--backends", "torch", "--crf-executor", "graph"], "applies to onnxruntime"),
    (["--crf-executor", "fast"], "invalid choice"),
    (["--sweep", "--warm-start-mix", "1.5"], "--warm-start-mix"),
])
def test_bad_arguments_exit_2(checkpoint, capsys, args, message):
    try:
        code = main([checkpoint] + args)
    except SystemExit as exit_info:  # argparse's own usage errors
        code = exit_info.code
    assert code == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_missing_model_file_exits_2(tmp_path, capsys):
    assert main([str(tmp_path / "nope.pt"), "--backends", "torch"]) == EXIT_USAGE
    assert "nope.pt" in capsys.readouterr().err


def test_plot_without_matplotlib_fails_before_timing(checkpoint, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main([checkpoint, "--backends", "torch", "--plot", "b.png"] + FAST) != EXIT_OK
    err = capsys.readouterr().err
    assert install_hint("plot") in err


def test_crf_references_on_the_command_line(checkpoint, tmp_path, capsys):
    out = tmp_path / "refs.json"
    assert main([checkpoint, "--backends", "torch", "--crf-references", "unfold",
                 "--json", str(out)] + FAST) == EXIT_OK
    assert "unfold (CPU reference)" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["crf_references"]["unfold"]["40x32"]["count"] == 3
    assert main([checkpoint, "--backends", "torch", "--crf-references", "lattice"] + FAST) \
        == EXIT_USAGE
    err = capsys.readouterr().err
    assert "unknown CRF reference" in err and "Traceback" not in err


def test_a_missing_fullcrf_library_is_status_3(checkpoint, capsys, monkeypatch):
    """New-user trial: ``--crf-references fullcrf`` without pydensecrf was status 2 (usage)."""
    monkeypatch.setitem(sys.modules, "pydensecrf", None)        # import fails: not installed
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    assert main([checkpoint, "--backends", "torch", "--crf-references", "fullcrf"] + FAST) \
        == ExitCode.MISSING_DEPENDENCY
    err = capsys.readouterr().err.strip()
    assert "pydensecrf" in err and "[fullcrf]" in err and len(err.splitlines()) == 1, err


def test_json_output_must_be_json(checkpoint, tmp_path, capsys):
    model_file = tmp_path / "model.onnx"
    model_file.write_bytes(b"the user's model")
    assert main([checkpoint, "--json", str(model_file)] + FAST) == EXIT_USAGE
    assert "cannot be written as .onnx" in capsys.readouterr().err
    assert model_file.read_bytes() == b"the user's model"
