"""Unaries saved without class code (torch.export .pt2, TorchScript): loading with CRF and
metadata settings, and refusing archives that loading would run code from (issue 18 item 1)."""
from __future__ import annotations

import json
import struct
import zipfile

import pytest

torch = pytest.importorskip("torch")

from convcrf_deploy import ConvCRF, CRFConfig, save_model
from convcrf_deploy.files import DamagedFileError
from convcrf_deploy.model import CheckpointError, UnarySettings, load_model, load_unary_file
from convcrf_deploy.model.unary_files import (TORCH_EXPORT, TORCHSCRIPT, UnsafeProgramError,
                                              check_program_archive, unary_file_kind)
from convcrf_deploy.training import save_crf

from user_model_fixtures import ProgramNet, save_program, save_torchscript


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    return save_program(tmp_path_factory.mktemp("program") / "unary.pt2")


@pytest.fixture(scope="module")
def torchscript(tmp_path_factory):
    return save_torchscript(tmp_path_factory.mktemp("ts") / "unary.pt")


def test_kinds_are_told_by_content(program, torchscript, tmp_path):
    assert unary_file_kind(program) == TORCH_EXPORT
    assert unary_file_kind(torchscript) == TORCHSCRIPT
    from convcrf_deploy.model import FastFCN, SegmentationModel
    from convcrf_deploy.metadata import ModelMetadata
    save_model(SegmentationModel(FastFCN(2, width=4), None, ModelMetadata(["a", "b"])),
               tmp_path / "checkpoint.pt")
    assert unary_file_kind(tmp_path / "checkpoint.pt") is None


@pytest.mark.parametrize("which", ["program", "torchscript"])
def test_the_model_matches_the_original_network(which, request):
    path = request.getfixturevalue(which)
    model = load_unary_file(path)
    assert model.num_classes == 3 and model.crf is not None
    assert model.crf.config.filter_size == CRFConfig().filter_size       # the defaults
    assert model.metadata.class_names == ["class0", "class1", "class2"]
    image = torch.rand(2, 3, 37, 53) * 255
    with torch.no_grad():
        expected = ProgramNet.build(3)(model.normalize(image))
        logits = model.forward_unary(image)
    expected = torch.nn.functional.interpolate(expected, size=(37, 53), mode="bilinear",
                                               align_corners=False)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    assert model(image).shape == (2, 3, 37, 53)


def test_crf_checkpoint_and_settings_are_applied(program, tmp_path):
    crf = ConvCRF(CRFConfig(num_classes=3, filter_size=5, blur=2))
    with torch.no_grad():             # trained weights, not the initial ones
        for parameter in crf.parameters():
            parameter.add_(0.125)
    save_crf(crf, tmp_path / "crf.pt")
    model = load_unary_file(program, UnarySettings(
        crf=tmp_path / "crf.pt", crf_config={"iterations": 2},
        metadata={"class_names": ["a", "b", "c"], "resize": "none"}))
    assert model.crf.config.filter_size == 5 and model.crf.config.iterations == 2
    for name, tensor in crf.state_dict().items():
        torch.testing.assert_close(model.crf.state_dict()[name], tensor)
    assert model.metadata.resize == "none" and model.unary_file == str(program)
    assert load_unary_file(program, UnarySettings(crf="none")).crf is None


def test_settings_that_do_not_fit(program, tmp_path):
    save_crf(ConvCRF(CRFConfig(num_classes=5)), tmp_path / "crf5.pt")
    for settings, message in [
            (UnarySettings(crf=tmp_path / "crf5.pt"), "5 classes"),
            (UnarySettings(metadata={"class_names": ["x"]}), "outputs 3 classes"),
            (UnarySettings(crf_config={"num_classes": 4}), "num_classes=4"),
            (UnarySettings(crf_config={"blur": 0}), "blur")]:
        with pytest.raises(CheckpointError, match=message):
            load_unary_file(program, settings)


def test_load_model_names_the_right_loader_and_save_model_refuses(program):
    with pytest.raises(CheckpointError, match="load_unary_file"):
        load_model(program)
    with pytest.raises(ValueError, match="save_crf"):
        save_model(load_unary_file(program), program.with_name("copy.pt"))


def test_a_program_of_fixed_size_sets_the_input_size(tmp_path):
    net = ProgramNet.build(3)
    torch.export.save(torch.export.export(net, (torch.rand(1, 3, 40, 56),)),
                      str(tmp_path / "fixed.pt2"))
    model = load_unary_file(tmp_path / "fixed.pt2")
    assert model.metadata.input_size == (40, 56) and model.metadata.resize == "stretch"
    with pytest.raises(ValueError, match=r"does not accept an input of shape \(1, 3, 41, 56\)"
                                         r".*--static --height H --width W"):
        model(torch.zeros(1, 3, 41, 56))


# ---- archives that loading would run code from --------------------------------------------

def rewrite(source, target, change):
    """Copy the archive ``source`` to ``target`` with ``change(inner_name, bytes) -> bytes``."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            inner = info.filename.split("/", 1)[1]
            new.writestr(info, change(inner, old.read(info)))
    return target


def edit_json(inner_name, edit):
    def change(inner, data):
        if inner != inner_name:
            return data
        document = json.loads(data)
        edit(document)
        return json.dumps(document).encode()
    return change


def first(document, key):
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if key in item:
                return item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    raise AssertionError(f"no {key} in the program")


@pytest.mark.parametrize("case", ["call os.system", "eval in a shape expression",
                                  "pickled constant", "compiled code", "operator.attrgetter"])
def test_archives_that_would_run_code_are_refused_before_torch_sees_them(program, tmp_path,
                                                                          case, monkeypatch):
    marker = tmp_path / "ran"
    command = f"touch {marker}"
    if case == "call os.system":
        change = edit_json("models/model.json",
                           lambda d: first(d, "target").update(target="torch.os.system"))
    elif case == "operator.attrgetter":
        change = edit_json("models/model.json",
                           lambda d: first(d, "target").update(target="_operator.attrgetter"))
    elif case == "eval in a shape expression":
        change = edit_json("models/model.json", lambda d: first(d, "expr_str").update(
            expr_str=f"__import__('os').system('{command}')"))
    elif case == "pickled constant":
        change = edit_json("data/weights/model_weights_config.json",
                           lambda d: next(iter(d["config"].values())).update(use_pickle=True))
    else:
        def change(inner, data):
            return data
    bad = rewrite(program, tmp_path / "bad.pt2", change)
    if case == "compiled code":
        with zipfile.ZipFile(bad, "a") as archive:
            archive.writestr("bad/data/aotinductor/model/model.so", b"\x7fELF")
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: pytest.fail("torch.export.load"))
    with pytest.raises(UnsafeProgramError, match="nothing from the file was run"):
        load_unary_file(bad)
    assert not marker.exists()


def test_a_damaged_archive_is_detected(program, torchscript, tmp_path):
    for source in (program, torchscript):
        data = bytearray(source.read_bytes())
        with zipfile.ZipFile(source) as archive:
            info = next(i for i in archive.infolist() if "/data/" in i.filename
                        and i.file_size > 16 and not i.filename.endswith((".json", ".pkl")))
        name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26:
                                                               info.header_offset + 30])
        data[info.header_offset + 30 + name_length + extra_length + 5] ^= 0xFF
        damaged = tmp_path / f"damaged{source.suffix}"
        damaged.write_bytes(bytes(data))
        with pytest.raises(DamagedFileError, match="damaged"):
            load_unary_file(damaged)


def test_the_check_accepts_what_torch_export_save_writes(program):
    check_program_archive(program)
