"""``convcrf-export`` (convcrf_deploy.cli.export): outputs, exit codes and bad inputs."""
from __future__ import annotations

import onnx
import pytest
import torch

from convcrf_deploy import CRFConfig, ConvCRF
from convcrf_deploy.cli.export import default_output, main
from convcrf_deploy.metadata import ModelMetadata
from convcrf_deploy.model import FastFCN, SegmentationModel, save_model

pytest.importorskip("onnxruntime")

CONFIG = CRFConfig(num_classes=3, filter_size=3, blur=4, iterations=1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = SegmentationModel(FastFCN(3, width=8), ConvCRF(CONFIG),
                              ModelMetadata.for_classes(["a", "b", "c"])).eval()
    path = tmp_path_factory.mktemp("cli") / "tiny.pt"
    save_model(model, path)
    return path


def test_exports_and_verifies_a_checkpoint(checkpoint, tmp_path, capsys):
    out = tmp_path / "tiny.onnx"
    assert main([str(checkpoint), "-o", str(out), "--flavor", "portable"]) == 0
    printed = capsys.readouterr().out
    assert "parity PASSED" in printed and str(out) in printed
    model = onnx.load(str(out))
    assert {p.key: p.value for p in model.metadata_props}["convcrf.flavor"] == "portable"


def test_parity_failure_exits_non_zero(checkpoint, tmp_path, monkeypatch, capsys):
    from convcrf_deploy.export import verify
    # An impossible tolerance: the (same, cached) export must now be reported as failing.
    monkeypatch.setitem(verify.TOLERANCE, False, 0.0)
    monkeypatch.setitem(verify.MIN_LABEL_AGREEMENT, False, 1.01)
    out = tmp_path / "tiny.onnx"
    assert main([str(checkpoint), "-o", str(out), "--flavor", "portable"]) == 1
    captured = capsys.readouterr()
    assert "parity FAILED" in captured.out
    assert "does not match PyTorch" in captured.err
    assert not out.exists()     # not replaced by a failing graph; that one is beside it:
    assert out.with_name("tiny.failed-verification.onnx").exists()


def test_no_verify_skips_the_parity_run(checkpoint, tmp_path, monkeypatch, capsys):
    from convcrf_deploy.export import verify
    monkeypatch.setitem(verify.TOLERANCE, False, 0.0)
    out = tmp_path / "tiny.onnx"
    assert main([str(checkpoint), "-o", str(out), "--flavor", "portable", "--no-verify"]) == 0
    assert "parity" not in capsys.readouterr().out


def test_crf_only_checkpoint_exports_the_crf_part(tmp_path, capsys):
    training = pytest.importorskip("convcrf_deploy.training")
    path = tmp_path / "crf.pt"
    training.save_crf(ConvCRF(CONFIG), path)
    out = tmp_path / "crf.onnx"
    assert main([str(path), "-o", str(out), "--flavor", "plugin", "--static",
                 "--height", "24", "--width", "35"]) == 0
    model = onnx.load(str(out))
    assert [i.name for i in model.graph.input] == ["logits", "image"]
    assert [n.op_type for n in model.graph.node if n.domain == "trt.plugins"].count(
        "ConvCRFMessagePassing") == CONFIG.iterations


def test_missing_checkpoint(tmp_path, capsys):
    assert main([str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err
    assert "convcrf-export: error:" in err and "nope.pt" in err and "not found" in err


def test_corrupt_checkpoint(tmp_path, capsys):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"\x80\x04 definitely not a checkpoint")
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert "convcrf-export: error:" in err and "broken.pt" in err


def test_dynamic_export_at_the_minimum_size_keeps_height_and_width_apart(tmp_path, capsys):
    """--height 2 --width 2 once merged H, W (and the batch) into one symbol."""
    from convcrf_deploy.export.verify import run_graph
    training = pytest.importorskip("convcrf_deploy.training")
    path = tmp_path / "crf.pt"
    training.save_crf(ConvCRF(CONFIG), path)
    out = tmp_path / "crf.onnx"
    assert main([str(path), "-o", str(out), "--flavor", "portable", "--height", "2",
                 "--width", "2"]) == 0
    assert "batch 2 at 2x2" in capsys.readouterr().out
    model = onnx.load(str(out))
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in model.graph.input]
    assert dims == [["batch", 3, "height", "width"]] * 2
    logits = torch.randn(1, 3, 5, 9).numpy()
    image = (torch.rand(1, 3, 5, 9) * 255).numpy()
    probabilities = run_graph(model, {"logits": logits, "image": image}, "portable")[1][0]
    assert probabilities.shape == (1, 3, 5, 9)


@pytest.mark.parametrize("argv, message", [
    (["--opset", "30"], "supported opsets are 18..28"),
    (["--opset", "99"], "supported opsets are 18..28"),
    (["--height", "100000", "--width", "64", "--static"], "too large"),
    (["--height", "100000", "--width", "64"], "too large"),
])
def test_unsupported_opset_or_size_is_a_one_line_error_and_no_file(checkpoint, tmp_path, argv,
                                                                    message, capsys):
    out = tmp_path / "x.onnx"
    try:
        code = main([str(checkpoint), "-o", str(out), *argv])
    except SystemExit as exit_info:      # argparse's usage error
        code = exit_info.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1
    assert not out.exists()


@pytest.mark.parametrize("argv", [["--height", "64"], ["--flavor", "trt"], ["--opset", "11"],
                                  ["--height", "1", "--width", "8"]])
def test_bad_arguments_are_usage_errors(checkpoint, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(checkpoint), *argv])
    assert exit_info.value.code == 2
    assert "convcrf-export: error:" in capsys.readouterr().err


def test_default_output_names():
    assert str(default_output("demo", "plugin")) == "demo.plugin.onnx"
    assert str(default_output("runs/model.pt", "portable")) == "runs/model.portable.onnx"


@pytest.mark.slow
@pytest.mark.parametrize("flavor", ["portable", "plugin"])
def test_demo_model_exports_and_verifies(flavor, tmp_path, capsys):
    """Acceptance: the shipped demo model in both flavours, parity < 1e-4 at 61x83."""
    from convcrf_deploy.model import DEMO_MODEL_PATH
    if not DEMO_MODEL_PATH.exists():
        pytest.skip("the demo model is not built")
    out = tmp_path / f"demo.{flavor}.onnx"
    assert main(["demo", "-o", str(out), "--flavor", flavor]) == 0
    assert "parity PASSED" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_model_verifies_at_camera_resolution(tmp_path, capsys):
    """Field report: docs/export.md's `--static --height 480 --width 640` example failed its
    fp32 parity check every time (max error 1.1e-4 against a 1e-4 bound; labels 100 %): the
    summation-order error grows with the image, the bound is now 1e-3 (verify.TOLERANCE)."""
    out = tmp_path / "demo480.onnx"
    assert main(["demo", "-o", str(out), "--static", "--height", "480", "--width", "640",
                 "--flavor", "portable"]) == 0
    assert "parity PASSED" in capsys.readouterr().out
