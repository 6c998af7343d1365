"""convcrf-train crf on tiny folders: the report, the checkpoint and clear errors."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")

from convcrf_deploy.cli.train import main

COLOURS = np.array([[120, 120, 120], [200, 60, 50], [50, 140, 210]], np.uint8)


def write_folder(folder, count=3, height=40, width=48):
    folder.mkdir(exist_ok=True)
    for index in range(count):
        labels = np.zeros((height, width), np.uint8)
        labels[6 + index:30, 6:30] = 1
        labels[20:38, 32 - index:46] = 2
        cv2.imwrite(str(folder / f"img{index}_0img.png"), COLOURS[labels][:, :, ::-1])
        cv2.imwrite(str(folder / f"img{index}_5labels.png"), labels)
    return folder


def test_synthetic_training_writes_report_and_a_loadable_crf(tmp_path, capsys):
    from convcrf_deploy.training import load_crf

    data = write_folder(tmp_path / "data")
    out, report_path = tmp_path / "crf.pt", tmp_path / "report.json"
    code = main(["crf", "--data", str(data), "--synthetic", "--num-classes", "3", "--epochs", "2",
                 "--filter-size", "5", "--learned-compatibility", "--holdout", "0.34",
                 "--out", str(out), "--json", str(report_path), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "before" in printed and "after" in printed
    report = json.loads(report_path.read_text())
    assert len(report["loss_history"]) == 2
    assert report["num_train"] == 2 and report["num_held_out"] == 3  # 1 image x 3 noise draws
    assert set(report["held_out"]) == {"unary", "before", "after"}
    crf = load_crf(out)
    assert crf.config.compatibility == "learned" and crf.config.filter_size == 5
    assert not torch.equal(crf.compatibility.weight, torch.eye(3).view(3, 3, 1, 1))


def test_training_on_a_model_unary_saves_a_model_with_the_trained_crf(tmp_path):
    from convcrf_deploy import SegmentationModel, load_model, save_model
    from convcrf_deploy.metadata import ModelMetadata
    from convcrf_deploy.model import FastFCN

    torch.manual_seed(0)
    save_model(SegmentationModel(FastFCN(3, width=8), None, ModelMetadata(["bg", "red", "blue"])),
               tmp_path / "unary.pt")
    data = write_folder(tmp_path / "data", count=2)
    out = tmp_path / "model.pt"
    assert main(["crf", "--data", str(data), "--unary-model", str(tmp_path / "unary.pt"),
                 "--epochs", "1", "--filter-size", "3", "--holdout", "0.5", "--out", str(out),
                 "--quiet"]) == 0
    model = load_model(out)
    assert model.crf is not None and model.crf.config.filter_size == 3
    assert model.crf.appearance_weight.item() != pytest.approx(10.0)


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("empty", "no labelled images"),
    ("unmatched", "without a NAME_0img.png: orphan"),
    ("one image", "still train"),
])
def test_bad_inputs_fail_with_a_message_and_no_traceback(tmp_path, capsys, case, message):
    data = tmp_path / "data"
    if case == "empty":
        data.mkdir()
    elif case == "unmatched":
        write_folder(data, count=2)
        cv2.imwrite(str(data / "orphan_5labels.png"), np.zeros((4, 4), np.uint8))
    elif case == "one image":
        write_folder(data, count=1)
    code = main(["crf", "--data", str(data), "--synthetic", "--num-classes", "3", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and message in err and "Traceback" not in err


def test_the_unary_source_is_required(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["crf", "--data", str(tmp_path)])
    assert "--synthetic" in capsys.readouterr().err


def test_training_continues_from_the_models_own_crf(tmp_path):
    from convcrf_deploy import ConvCRF, CRFConfig, SegmentationModel, load_model, save_model
    from convcrf_deploy.metadata import ModelMetadata
    from convcrf_deploy.model import FastFCN

    torch.manual_seed(0)
    crf = ConvCRF(CRFConfig(num_classes=3, filter_size=3, blur=2))
    with torch.no_grad():
        crf.message_weight.fill_(0.5)  # not trained by default: must survive training
    save_model(SegmentationModel(FastFCN(3, width=8), crf, ModelMetadata(["bg", "red", "blue"])),
               tmp_path / "model.pt")
    data = write_folder(tmp_path / "data", count=2)
    out = tmp_path / "trained.pt"
    assert main(["crf", "--data", str(data), "--unary-model", str(tmp_path / "model.pt"),
                 "--epochs", "1", "--learned-compatibility", "--holdout", "0", "--out", str(out),
                 "--quiet"]) == 0
    trained = load_model(out).crf
    assert trained.config.filter_size == 3 and trained.config.blur == 2
    assert trained.config.compatibility == "learned"
    assert torch.allclose(trained.message_weight, torch.full((3,), 0.5))


def test_outputs_that_are_inputs_are_refused(tmp_path, capsys):
    data = write_folder(tmp_path / "data")
    label = data / "img0_5labels.png"
    before = label.read_bytes()
    for option in ("--out", "--json"):
        assert main(["crf", "--data", str(data), "--synthetic", "--num-classes", "3",
                     option, str(label)]) == 2
        err = capsys.readouterr().err
        assert "would overwrite the input --data" in err and "Traceback" not in err
    assert label.read_bytes() == before


def test_all_void_image_is_skipped_and_reported(tmp_path, capsys):
    data = write_folder(tmp_path / "data", count=4)
    cv2.imwrite(str(data / "img1_5labels.png"), np.full((40, 48), 255, np.uint8))
    assert main(["crf", "--data", str(data), "--synthetic", "--num-classes", "3", "--epochs",
                 "1", "--filter-size", "3", "--holdout", "0"]) == 0
    out = capsys.readouterr().out
    assert "skipped image(s) whose pixels are all void (255): 1 for training" in out
    assert "nan" not in out.lower()


_WITHOUT_TORCH = r"""
import sys
sys.path.insert(0, sys.argv[1])
sys.modules["torch"] = None                    # import torch fails as when not installed
from convcrf_deploy.cli import bench, eval, train
codes = [train.main(["crf", "--data", ".", "--synthetic"]),
         eval.main(["synthetic", "--data", "."]), bench.main(["demo"])]
print("CODES", codes)
"""


def test_tools_without_torch_say_how_to_install_it(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    done = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH,
                           str(Path(__file__).resolve().parents[2])],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert "CODES" in done.stdout, done.stderr
    assert "Traceback" not in done.stderr and "ModuleNotFoundError" not in done.stderr.split(
        "needs torch")[0]
    for tool in ("convcrf-train", "convcrf-eval", "convcrf-bench"):
        assert f"{tool} needs torch" in done.stderr
    assert done.stderr.count("download.pytorch.org/whl/cpu") == 3


def test_training_on_an_onnx_unary_writes_a_crf_the_export_attaches(tmp_path, capsys):
    """Paper Sec. 5.2 with the fixed unary an ONNX file (issue 18 item 4): convcrf-train crf
    --unary trains on its predictions in ONNX Runtime; --out is a CRF-only checkpoint that
    convcrf-export --unary --crf attaches."""
    pytest.importorskip("onnxscript")
    from onnx_unary_fixtures import export_torch_unary, quarter_net

    from convcrf_deploy.cli.export import main as export_main
    from convcrf_deploy.training import load_crf

    unary = export_torch_unary(quarter_net(num_classes=3), tmp_path / "unary.onnx")
    data = write_folder(tmp_path / "data", count=2)
    out = tmp_path / "crf.pt"
    assert main(["crf", "--data", str(data), "--unary", str(unary), "--epochs", "1",
                 "--filter-size", "3", "--holdout", "0.5", "--mean", "0.5,0.5,0.5",
                 "--out", str(out), "--json", str(tmp_path / "r.json"), "--quiet"]) == 0, \
        capsys.readouterr().err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["unary"] == str(unary) and set(report["held_out"]) == {"unary", "before",
                                                                          "after"}
    crf = load_crf(out)
    assert crf.config.num_classes == 3 and crf.config.filter_size == 3
    untrained = type(crf)(crf.config)
    assert not torch.equal(crf.smoothness_weight, untrained.smoothness_weight)
    capsys.readouterr()
    assert export_main(["--unary", str(unary), "--crf", str(out), "--mean", "0.5,0.5,0.5",
                        "-o", str(tmp_path / "model.onnx")]) == 0, capsys.readouterr().err


def test_a_fixed_size_onnx_unary_trains_at_its_size(tmp_path):
    from onnx_unary_fixtures import write_helper_unary
    unary = write_helper_unary("nhwc-fixed", tmp_path / "tf.onnx")   # 40 x 56, 3 classes
    data = write_folder(tmp_path / "data", count=2, height=30, width=90)
    assert main(["crf", "--data", str(data), "--unary", str(unary), "--epochs", "1",
                 "--filter-size", "3", "--holdout", "0", "--out", str(tmp_path / "crf.pt"),
                 "--quiet"]) == 0


def test_onnx_unary_errors_are_one_line(tmp_path, capsys):
    from onnx_unary_fixtures import write_helper_unary
    data = write_folder(tmp_path / "data", count=2)
    unary = write_helper_unary("argmax-output", tmp_path / "seg.onnx")
    assert main(["crf", "--data", str(data), "--unary", str(unary)]) == 2
    err = capsys.readouterr().err.strip()
    assert "without its final argmax" in err and len(err.splitlines()) == 1
    assert main(["crf", "--data", str(data), "--synthetic", "--num-classes", "3",
                 "--crf-config", "blur=2"]) == 2
    assert "--synthetic has none" in capsys.readouterr().err
