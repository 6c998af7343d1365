"""convcrf-eval on tiny folders: the synthetic table, a model's evaluation and clear errors."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")

from convcrf_deploy.cli.eval import main

COLOURS = np.array([[120, 120, 120], [200, 60, 50], [50, 140, 210]], np.uint8)


def write_folder(folder, count=2, height=40, width=48):
    """``count`` pairs of a coloured rectangle scene in the sample layout (3 classes)."""
    folder.mkdir(exist_ok=True)
    for index in range(count):
        labels = np.zeros((height, width), np.uint8)
        labels[8:30, 6 + index:30] = 1
        labels[20:38, 32:46] = 2
        labels[0, :] = 255  # a void row, as VOC's borders
        image = COLOURS[np.where(labels == 255, 0, labels)]
        cv2.imwrite(str(folder / f"img{index}_0img.png"), image[:, :, ::-1])
        cv2.imwrite(str(folder / f"img{index}_5labels.png"), labels)
    return folder


def test_synthetic_prints_the_table_and_writes_json(tmp_path, capsys):
    data = write_folder(tmp_path / "data")
    out = tmp_path / "table.json"
    code = main(["synthetic", "--data", str(data), "--filter-sizes", "3,5", "--num-classes", "3",
                 "--seeds", "2", "--json", str(out), "--no-fullcrf"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "conv3" in printed and "conv5" in printed and "unary" in printed
    result = json.loads(out.read_text())
    assert set(result["methods"]) == {"unary", "conv3", "conv5"}
    for name, method in result["methods"].items():
        assert 0 <= method["accuracy"] <= 1 and 0 <= method["miou"] <= 1
        assert 0 <= method["miou_gt_classes"] <= 1
        assert method["num_images"] == 4  # 2 images x 2 seeds
        assert (method["time_ms"] is None) == (name == "unary")
    assert result["methods"]["conv5"]["accuracy"] > result["methods"]["unary"]["accuracy"]


def test_dataset_evaluates_a_saved_model_with_and_without_its_crf(tmp_path, capsys):
    from convcrf_deploy import ConvCRF, CRFConfig, SegmentationModel, save_model
    from convcrf_deploy.metadata import ModelMetadata
    from convcrf_deploy.model import FastFCN

    torch.manual_seed(0)
    model = SegmentationModel(FastFCN(3, width=8), ConvCRF(CRFConfig(num_classes=3, filter_size=5)),
                              ModelMetadata(["background", "red", "blue"]))
    save_model(model, tmp_path / "model.pt")
    data = write_folder(tmp_path / "data", count=1)
    out = tmp_path / "result.json"
    assert main(["dataset", str(tmp_path / "model.pt"), "--data", str(data), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["methods"]) == {"unary", "crf"}
    assert result["methods"]["crf"]["num_images"] == 1
    assert result["methods"]["crf"]["time_ms"] > 0


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("empty", "no labelled images"),
    ("unmatched", "without a NAME_5labels.png: extra"),
])
def test_bad_data_folders_fail_with_a_message_and_no_traceback(tmp_path, capsys, case, message):
    data = tmp_path / "data"
    if case == "empty":
        data.mkdir()
    elif case == "unmatched":
        write_folder(data, count=1)
        cv2.imwrite(str(data / "extra_0img.png"), np.zeros((4, 4, 3), np.uint8))
    code = main(["synthetic", "--data", str(data), "--num-classes", "3", "--filter-sizes", "3"])
    err = capsys.readouterr().err
    assert code != 0
    assert message in err and "Traceback" not in err


def test_missing_model_file_is_a_clear_error(tmp_path, capsys):
    data = write_folder(tmp_path / "data", count=1)
    code = main(["dataset", str(tmp_path / "nope.pt"), "--data", str(data)])
    err = capsys.readouterr().err
    assert code != 0 and "nope.pt" in err and "Traceback" not in err


def test_even_filter_size_is_rejected_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["synthetic", "--data", str(tmp_path), "--filter-sizes", "4"])
    assert exit_info.value.code == 2
    assert "odd" in capsys.readouterr().err


def test_synthetic_also_evaluates_a_trained_crf_checkpoint(tmp_path):
    from convcrf_deploy import ConvCRF, CRFConfig
    from convcrf_deploy.training import save_crf

    save_crf(ConvCRF(CRFConfig(num_classes=3, filter_size=3, smoothness_weight=1.0)),
             tmp_path / "trained.pt")
    data = write_folder(tmp_path / "data", count=1)
    out = tmp_path / "table.json"
    assert main(["synthetic", "--data", str(data), "--num-classes", "3", "--filter-sizes", "3",
                 "--crf", str(tmp_path / "trained.pt"), "--json", str(out), "--no-fullcrf"]) == 0
    methods = json.loads(out.read_text())["methods"]
    assert set(methods) == {"unary", "conv3", "trained:trained.pt"}
    assert methods["trained:trained.pt"]["num_images"] == 1


def test_a_crf_with_the_wrong_class_count_is_refused(tmp_path, capsys):
    from convcrf_deploy import ConvCRF, CRFConfig
    from convcrf_deploy.training import save_crf

    save_crf(ConvCRF(CRFConfig(num_classes=5, filter_size=3)), tmp_path / "five.pt")
    data = write_folder(tmp_path / "data", count=1)
    code = main(["synthetic", "--data", str(data), "--num-classes", "3", "--filter-sizes", "3",
                 "--crf", str(tmp_path / "five.pt")])
    err = capsys.readouterr().err
    assert code != 0 and "5 classes" in err and "Traceback" not in err


def test_fullcrf_row_and_speedups_in_the_same_table(tmp_path, capsys):
    """With the real pydensecrf (CI installs pydensecrf2 through the test extra), FullCRF is a
    row of the same table and JSON, and every CRF row carries its speed-up over FullCRF."""
    pytest.importorskip("pydensecrf.densecrf")
    data = write_folder(tmp_path / "data", count=1, height=40, width=48)
    out = tmp_path / "table.json"
    assert main(["synthetic", "--data", str(data), "--num-classes", "3", "--filter-sizes", "3,5",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fullcrf" in printed and "speed-up vs FullCRF" in printed
    methods = json.loads(out.read_text())["methods"]
    assert set(methods) == {"unary", "conv3", "conv5", "fullcrf"}
    assert methods["fullcrf"]["time_ms"] > 0
    assert methods["fullcrf"]["speedup_vs_fullcrf"] == pytest.approx(1.0)
    assert methods["unary"]["speedup_vs_fullcrf"] is None
    for name in ("conv3", "conv5"):
        ratio = methods["fullcrf"]["time_ms"] / methods[name]["time_ms"]
        assert methods[name]["speedup_vs_fullcrf"] == pytest.approx(ratio)
        assert f"{ratio:.1f}x" in printed
    # The clean scene is easy: the FullCRF cleans up the noisy unary like ConvCRF does.
    assert methods["fullcrf"]["accuracy"] > methods["unary"]["accuracy"]


def test_fullcrf_missing_is_a_note_naming_the_package(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "pydensecrf", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    data = write_folder(tmp_path / "data", count=1)
    out = tmp_path / "table.json"
    assert main(["synthetic", "--data", str(data), "--num-classes", "3", "--filter-sizes", "3",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "FullCRF skipped" in printed and "convcrf-deploy[fullcrf]" in printed
    assert "pydensecrf2" in printed
    assert "fullcrf" not in json.loads(out.read_text())["methods"]


def test_json_output_replaces_the_previous_file_atomically(tmp_path, monkeypatch):
    data = write_folder(tmp_path / "data", count=1)
    out = tmp_path / "table.json"
    out.write_text("previous")
    import convcrf_deploy.files as files

    def broken_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", broken_replace)
    code = main(["synthetic", "--data", str(data), "--num-classes", "3", "--filter-sizes", "3",
                 "--no-fullcrf", "--json", str(out)])
    assert code != 0
    assert out.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "table.json"]  # no temp left


def test_dataset_labels_beyond_the_models_classes_name_the_model(tmp_path, capsys):
    from convcrf_deploy import SegmentationModel, save_model
    from convcrf_deploy.metadata import ModelMetadata
    from convcrf_deploy.model import FastFCN

    save_model(SegmentationModel(FastFCN(2, width=8), None, ModelMetadata(["bg", "fg"])),
               tmp_path / "two.pt")
    data = write_folder(tmp_path / "data", count=1)  # labels use classes 0..2
    code = main(["dataset", str(tmp_path / "two.pt"), "--data", str(data)])
    err = capsys.readouterr().err
    assert code != 0 and "class 2 outside 0..1" in err and "has 2 classes" in err
    assert "Traceback" not in err
    # Second new-user trial: the class hint was added to every data error, also to a file
    # that cannot be read, which is not a question of the data set.
    (data / "img0_0img.png").write_bytes(b"not a png")
    assert main(["dataset", str(tmp_path / "two.pt"), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "cannot read" in err and "is this its data set" not in err


def test_the_demo_model_gains_from_its_crf_on_held_out_scenes(tmp_path):
    from convcrf_deploy.data.scenes import SyntheticScene
    from convcrf_deploy.model import DEMO_MODEL_PATH

    if not DEMO_MODEL_PATH.exists():
        pytest.skip("the demo model is not built (scripts/train_demo_model.py)")
    data = tmp_path / "scenes"
    data.mkdir()
    for seed in (100, 101, 102):  # seeds < 10000 are never trained on
        rgb, labels = SyntheticScene(240, 320, seed=seed).render(0)
        cv2.imwrite(str(data / f"scene{seed}_0img.png"), rgb[:, :, ::-1])
        cv2.imwrite(str(data / f"scene{seed}_5labels.png"), labels)
    out = tmp_path / "demo.json"
    assert main(["dataset", "demo", "--data", str(data), "--json", str(out)]) == 0
    methods = json.loads(out.read_text())["methods"]
    assert methods["crf"]["miou"] > methods["unary"]["miou"]
