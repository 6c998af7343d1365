"""The exported model file: one reader for every tool (issue 19 item 2), a digest of the content
that survives re-saves (issue 23 item 3), metadata cross-checked against the graph (issue 21
item 6), and re-sealing a file changed on purpose by an optimiser (issue 18 items 7 and 8).

Field reports: ``onnx.save(..., save_as_external_data=True)`` on an export made convcrf-run
report "damaged" (the digest covered the protobuf bytes) and convcrf-triton exited 0 after
writing a repository whose model then refused to load; a model whose metadata listed 3 classes
while its graph output 5 ran silently with wrong names and colours; a file passed through
onnxsim/onnxslim was refused as "damaged" with no way to accept it.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from convcrf_deploy import CRFConfig, ConvCRF
from convcrf_deploy.exported_model import (DIGEST_KEY, LEGACY_DIGEST_KEY, ExportedModel,
                                           InconsistentModelError, content_digest,
                                           legacy_digest, seal)
from convcrf_deploy.files import DamagedFileError
from convcrf_deploy.metadata import ModelMetadata
from convcrf_deploy.model import FastFCN, SegmentationModel
from convcrf_deploy.runtime.testing import write_toy_onnx

pytest.importorskip("onnxruntime")

CONFIG = CRFConfig(num_classes=3, filter_size=3, blur=4, iterations=2)   # conftest.TINY_CRF


@pytest.fixture
def exports(tiny_exports):
    return tiny_exports


def labels_of(path, image):
    from convcrf_deploy.runtime.backends.onnxrt import OnnxRuntimeBackend

    with OnnxRuntimeBackend(path, threads=1) as backend:
        return backend.infer({"image": image})["labels"]


IMAGE = np.random.default_rng(1).uniform(0, 255, (1, 3, 40, 56)).astype(np.float32)


# ---- a digest of the content: re-saves keep a file valid ----------------------------------------

def resave_external(source, target, **options):
    model = onnx.load(str(source))
    onnx.save(model, str(target), save_as_external_data=True, location=target.name + ".data",
              **options)
    return target


def resave_typed_fields(source, target):
    """Initializers moved from raw_data to the typed fields (float_data, int64_data, ...)."""
    model = onnx.load(str(source))
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        typed = helper.make_tensor(tensor.name, tensor.data_type, array.shape,
                                   array.ravel().tolist() if array.dtype != np.float16
                                   else array.ravel().view(np.uint16).tolist())
        tensor.CopyFrom(typed)
    onnx.save(model, str(target))
    return target


def resave_reordered(source, target):
    """Metadata entries reversed and another tool's entry added; initializers and functions
    in reverse order; node names changed; value_info (shape annotations) dropped."""
    model = onnx.load(str(source))
    props = list(model.metadata_props)[::-1]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    model.metadata_props.add(key="optimizer", value="someone's tool")
    tensors = list(model.graph.initializer)[::-1]
    del model.graph.initializer[:]
    model.graph.initializer.extend(tensors)
    functions = list(model.functions)[::-1]
    del model.functions[:]
    model.functions.extend(functions)
    for index, node in enumerate(model.graph.node):
        node.name = f"renamed_{index}"
    del model.graph.value_info[:]
    model.producer_name, model.graph.name = "other", "other"
    onnx.save(model, str(target))
    return target


RESAVES = {
    "onnx.save": lambda s, t: onnx.save(onnx.load(str(s)), str(t)) or t,
    "external data": resave_external,
    "external data, every tensor and attribute": lambda s, t: resave_external(
        s, t, all_tensors_to_one_file=False, size_threshold=0, convert_attribute=True),
    "typed fields": resave_typed_fields,
    "reordered, renamed, re-annotated": resave_reordered,
}


@pytest.mark.parametrize("flavor", ["single-file", "portable"])
@pytest.mark.parametrize("resave", list(RESAVES))
def test_resaved_exports_are_not_damaged(exports, tmp_path, flavor, resave):
    target = RESAVES[resave](exports[flavor], tmp_path / "resaved.onnx")
    model = ExportedModel.open(target)
    assert model.digest == "content"
    assert content_digest(model.proto, tmp_path) == content_digest(
        ExportedModel.open(exports[flavor]).proto)
    # Every re-save runs: ONNX Runtime itself cannot load shape tensors stored as external
    # data (the new-user trial's "Cannot parse data from external tensors"), so the runtime
    # then loads the model with its data read in.
    np.testing.assert_array_equal(labels_of(target, IMAGE), labels_of(exports[flavor], IMAGE))


def test_external_data_resave_runs_in_convcrf_run(exports, tmp_path, capsys):
    # The instance of the field report.
    from convcrf_deploy.cli.run import main

    target = resave_external(exports["single-file"], tmp_path / "external.onnx")
    code = main(["--video", "demo", "--model", str(target), "--headless", "--max-frames", "1",
                 "--size", "64x48"])
    assert code == 0, capsys.readouterr().err
    # ... on the native CRF, as the same file saved whole (it fell back to the graph's CRF,
    # "because the weights are stored as external data").
    from convcrf_deploy.runtime import Segmenter
    from convcrf_deploy import _native
    if _native.cpu_library() is not None:
        assert Segmenter(str(target)).describe()["crf_executor"] == "native"


def _edit_weight(model):
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    array = numpy_helper.to_array(tensor).copy()
    array.flat[0] += 0.5
    tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))


def _edit_attribute(model):
    node = next(n for n in model.graph.node if any(a.name == "axis" for a in n.attribute))
    attribute = next(a for a in node.attribute if a.name == "axis")
    attribute.i = 0 if attribute.i else 1


def _edit_wiring(model):
    node = next(n for n in model.graph.node if len(n.input) >= 2 and n.input[0] != n.input[1])
    node.input[0], node.input[1] = node.input[1], node.input[0]


def _edit_function(model):
    node = model.functions[0].node[-1]
    node.op_type = "Identity" if node.op_type != "Identity" else "Neg"


def _edit_metadata(model):
    entry = next(p for p in model.metadata_props if p.key == "convcrf.crf_state")
    state = json.loads(entry.value)
    state["smoothness_weight"] = [2 * v for v in np.ravel(state["smoothness_weight"])]
    entry.value = json.dumps(state)


EDITS = {"weight": _edit_weight, "attribute": _edit_attribute, "wiring": _edit_wiring,
         "function body": _edit_function, "convcrf metadata": _edit_metadata}


@pytest.mark.parametrize("storage", ["inline", "external data"])
@pytest.mark.parametrize("edit", list(EDITS))
def test_real_edits_are_detected_however_the_file_is_stored(exports, tmp_path, edit, storage):
    model = onnx.load(str(exports["single-file"]))
    EDITS[edit](model)
    target = tmp_path / "edited.onnx"
    if storage == "inline":
        onnx.save(model, str(target))
    else:
        onnx.save(model, str(target), save_as_external_data=True, location="edited.data",
                  size_threshold=0)
    with pytest.raises(DamagedFileError, match=r"edited\.onnx is damaged.*convcrf-seal"):
        ExportedModel.open(target)


def test_damaged_external_data_is_detected(exports, tmp_path):
    target = resave_external(exports["portable"], tmp_path / "ext.onnx", size_threshold=0)
    data = tmp_path / "ext.onnx.data"
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0x40
    data.write_bytes(bytes(blob))
    with pytest.raises(DamagedFileError, match=r"ext\.onnx is damaged"):
        ExportedModel.open(target)
    data.write_bytes(bytes(blob[:100]))
    with pytest.raises(ValueError, match="shorter than recorded|ended early|damaged"):
        ExportedModel.open(target)
    data.unlink()
    with pytest.raises(ValueError, match=r"missing beside the model.*copy it there"):
        ExportedModel.open(target)


# ---- files sealed by convcrf-deploy 0.1 (byte digest) ---------------------------------------------

def legacy_sealed(source, target):
    model = onnx.load(str(source))
    kept = [p for p in model.metadata_props if p.key != DIGEST_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=LEGACY_DIGEST_KEY, value=legacy_digest(model))
    onnx.save(model, str(target))
    return target


def test_old_digest_accepted_when_it_matches_and_refused_when_not(exports, tmp_path):
    old = legacy_sealed(exports["portable"], tmp_path / "old.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # a valid old file loads without a word
        assert ExportedModel.open(old).digest == "legacy"
    # A byte digest cannot tell a re-save from an edit: refused, naming both ways out.
    resaved = resave_external(old, tmp_path / "old-resaved.onnx")
    with pytest.raises(DamagedFileError, match=r"old-resaved\.onnx is damaged, or was re-saved"
                       r".*export it again.*convcrf-seal"):
        ExportedModel.open(resaved)
    model = onnx.load(str(old))
    _edit_weight(model)
    onnx.save(model, str(tmp_path / "old-edited.onnx"))
    with pytest.raises(DamagedFileError):
        ExportedModel.open(tmp_path / "old-edited.onnx")


# ---- writers read back what they wrote ------------------------------------------------------------

def test_triton_repository_of_a_resaved_export_loads(exports, tmp_path, capsys):
    from convcrf_deploy.cli.triton import main
    from convcrf_deploy.serving.python_model import load_backend

    target = resave_external(exports["single-file"], tmp_path / "external.onnx")
    assert main([str(target), "-o", str(tmp_path / "repo")]) == 0, capsys.readouterr().err
    written = tmp_path / "repo" / "convcrf" / "1" / "model.onnx"
    assert not (tmp_path / "repo" / "convcrf" / "1" / "external.onnx.data").exists()
    backend = load_backend(written, threads=1)      # what tritonserver's Python model runs
    assert backend.infer({"image": IMAGE})["labels"].shape == (1, 40, 56)
    backend.deactivate()


def test_triton_writer_refuses_a_repository_its_server_would_not_load(exports, tmp_path,
                                                                      monkeypatch, capsys):
    from convcrf_deploy.cli.triton import main

    def damaged_copy(self):
        model = onnx.load(str(self.path))
        _edit_weight(model)
        return model
    monkeypatch.setattr(ExportedModel, "load_proto_with_data", damaged_copy)
    assert main([str(exports["single-file"]), "-o", str(tmp_path / "repo")]) == 1
    err = capsys.readouterr().err
    assert "could not load the written model" in err and "damaged" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "repo" / "convcrf").exists()
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]


def test_export_reads_back_what_it_wrote(tmp_path, monkeypatch):
    from convcrf_deploy.export import export_onnx

    def broken_save(proto, path, *args, **kwargs):      # a writer that damages the file
        _edit_weight(proto)
        onnx.save_model(proto, path)
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous export")
    monkeypatch.setattr(onnx, "save", broken_save)
    torch.manual_seed(0)
    model = SegmentationModel(FastFCN(3, width=8), ConvCRF(CONFIG),
                              ModelMetadata.for_classes(["a", "b", "c"])).eval()
    with pytest.raises(DamagedFileError, match=r"refusing to write .*model\.onnx"):
        export_onnx(model, out, flavor="portable", verify=False)
    assert out.read_bytes() == b"previous export"


# ---- metadata against graph ---------------------------------------------------------------------

def toy_with(tmp_path, edit, name="toy.onnx", classes=("a", "b", "c", "d", "e")):
    path = write_toy_onnx(tmp_path / name, list(classes))
    model = onnx.load(str(path))
    edit(model)
    seal(model)                             # the file is as its writer meant it: no damage
    onnx.save(model, str(path))
    return path


def set_prop(key, value):
    def edit(model):
        props = {p.key: p.value for p in model.metadata_props}
        props[key] = value
        del model.metadata_props[:]
        helper.set_model_props(model, props)
    return edit


def three_class_names(model):
    set_prop("convcrf.classes", json.dumps(["a", "b", "c"]))(model)
    set_prop("convcrf.palette", json.dumps([[0, 0, 0], [1, 1, 1], [2, 2, 2]]))(model)
    set_prop("convcrf.crf_config", CRFConfig(num_classes=3).to_json())(model)


def symbolic_classes(model):
    three_class_names(model)
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "C"


def labels_rank_4(model):
    shape = model.graph.output[1].type.tensor_type.shape
    shape.dim.add().dim_param = "extra"


def crf_config_disagrees(model):
    set_prop("convcrf.crf_config", CRFConfig(num_classes=4).to_json())(model)


def plugin_nodes_in_portable(model):
    model.graph.node.append(helper.make_node("ConvCRFKernel", ["scaled"], ["kernel"],
                                             domain="trt.plugins", filter_size=5))
    model.opset_import.append(helper.make_opsetid("trt.plugins", 1))


def single_file_without_bodies(model):
    plugin_nodes_in_portable(model)
    set_prop("convcrf.flavor", "single-file")(model)


INCONSISTENT = {
    "3 class names, 5 channels": (three_class_names, r"lists 3 classes.*'probabilities' has 5 "
                                  r"channels.*convcrf-export"),
    "3 class names, 5 channels by shape inference": (symbolic_classes, r"lists 3 classes.*"
                                                     r"'probabilities' has 5 channels"),
    "labels of rank 4": (labels_rank_4, r"'labels' has rank 4.*rank 3"),
    "CRF configuration of 4 classes": (crf_config_disagrees, r"lists 5 classes.*"
                                       r"num_classes=4"),
    "portable flavour with ConvCRF nodes": (plugin_nodes_in_portable, r"flavour 'portable'.*"
                                            r"1 ConvCRFKernel"),
    "single-file flavour without function bodies": (single_file_without_bodies,
                                                    r"'single-file'.*function bodies.*missing"),
}


@pytest.mark.parametrize("case", list(INCONSISTENT))
def test_every_reader_refuses_a_file_that_disagrees_with_itself(tmp_path, case, capsys):
    from convcrf_deploy.cli.build import main as build_main
    from convcrf_deploy.cli.run import main as run_main
    from convcrf_deploy.cli.triton import main as triton_main
    from convcrf_deploy.runtime import Segmenter
    from convcrf_deploy.tensorrt.network import prepare_for_parser

    edit, message = INCONSISTENT[case]
    path = toy_with(tmp_path, edit)
    with pytest.raises(InconsistentModelError, match=message):
        Segmenter(str(path))
    with pytest.raises(InconsistentModelError, match=message):
        prepare_for_parser(path)                        # what convcrf-build parses
    assert run_main(["--video", "demo", "--model", str(path), "--headless", "--max-frames", "1",
                     "--size", "64x48"]) == 2
    # An input that cannot be used is status 2 for every command (README, "Exit status"); the
    # new-user trial found convcrf-triton and convcrf-build at 1.
    assert triton_main([str(path), "-o", str(tmp_path / "repo")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("toy.onnx" in line for line in err), err
    if case.startswith("3 class names"):
        assert all("3 classes" in line and "5 channels" in line for line in err)
    assert not (tmp_path / "repo" / "convcrf").exists()
    # No TensorRT here: the file check comes first (status 2) or it stops for TensorRT (3).
    assert build_main([str(path), "-o", str(tmp_path / "x.engine")]) == 2
    assert "toy.onnx" in capsys.readouterr().err


def test_consistent_files_pass(tmp_path, exports):
    for path in [write_toy_onnx(tmp_path / "toy.onnx"), *exports.values()]:
        model = ExportedModel.open(path)
        assert model.part == "full" and model.class_channels()[1] == model.metadata.num_classes
    assert ExportedModel.open(exports["plugin"]).needs_custom_ops
    assert ExportedModel.open(exports["single-file"]).crf_nodes == {
        "ConvCRFKernel": 2, "ConvCRFMessagePassing": CONFIG.iterations}


def test_a_name_that_is_not_utf8_is_damage(tmp_path):
    """New-user trial: a changed byte inside a name ("smoothed" here) made every reader say
    "sequence item 0: expected str instance, bytes found" (protobuf hands such a string field
    back as bytes, and the digest joined it)."""
    path = write_toy_onnx(tmp_path / "toy.onnx")
    path.write_bytes(path.read_bytes().replace(b"smoothed", b"\xffmoothed"))
    with pytest.raises(DamagedFileError, match="toy.onnx is damaged: a name or text in its "
                                               "graph is not valid UTF-8"):
        ExportedModel.open(path)
