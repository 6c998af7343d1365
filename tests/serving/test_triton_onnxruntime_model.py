"""convcrf-triton --onnxruntime: an onnxruntime-backend model whose configuration declares the
custom-op library (issue 20, item 5).

The bundled tritonserver (nvidia-pytriton) has only the Python backend, so the model is not run
on a server here: the configuration is parsed with Triton's own ModelConfig schema
(tritonclient's model_config_pb2), and the files are exercised the way the onnxruntime backend
uses them (a session with every op_library_filename registered and intra_op_thread_count).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from convcrf_deploy import _native
from convcrf_deploy.cli import triton as triton_cli
from convcrf_deploy.exported_model import seal
from convcrf_deploy.runtime.testing import write_toy_onnx
from convcrf_deploy.serving.repository import (ModelOptions, RepositoryError,
                                               write_onnxruntime_model, write_python_model)

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tritonclient[grpc] is in the [test] extra")
from google.protobuf import text_format  # noqa: E402

ort = pytest.importorskip("onnxruntime")

try:
    LIBRARY = _native.ort_ops_library()
except _native.NativeError:
    LIBRARY = None
needs_library = pytest.mark.skipif(LIBRARY is None, reason="libconvcrf_ort_ops not built")


def plugin_toy(path: Path) -> Path:
    """The toy segmenter with a one-iteration CRF of ConvCRF nodes and no function bodies
    (a plugin-flavour graph): probabilities = softmax(smoothed + M), M = message passing of
    softmax(smoothed) with the Gaussian kernel of the scaled image."""
    model = onnx.load(str(write_toy_onnx(path)))
    attrs = {"filter_size": 3, "plugin_version": "1", "plugin_namespace": ""}
    nodes = [n for n in model.graph.node if n.op_type != "Softmax" and n.output[0] != "labels"]
    nodes += [
        helper.make_node("Mul", ["scaled", "ten"], ["features"]),
        helper.make_node("ConvCRFKernel", ["features"], ["kernel"], domain="trt.plugins",
                         name="crf_kernel", **attrs),
        helper.make_node("Softmax", ["smoothed"], ["q"], axis=1),
        helper.make_node("ConvCRFMessagePassing", ["q", "kernel"], ["messages"],
                         domain="trt.plugins", name="crf_messages", **attrs),
        helper.make_node("Add", ["smoothed", "messages"], ["crf_logits"]),
        helper.make_node("Softmax", ["crf_logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["labels"], axis=1, keepdims=0)]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(10, np.float32), "ten"))
    model.opset_import.append(helper.make_opsetid("trt.plugins", 1))
    for prop in model.metadata_props:
        if prop.key == "convcrf.flavor":
            prop.value = "plugin"           # ConvCRF nodes without function bodies
    seal(model)                             # a deliberate edit: sealed again
    onnx.save(model, str(path))
    return path


def parse(target: Path):
    return text_format.Parse((target / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def run_like_the_onnxruntime_backend(target: Path, image: np.ndarray) -> dict[str, np.ndarray]:
    """What Triton's onnxruntime backend does with the folder: register every
    op_library_filename, apply intra_op_thread_count, load 1/model.onnx."""
    config = parse(target)
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(config.parameters["intra_op_thread_count"].string_value)
    for library in config.model_operations.op_library_filename:
        options.register_custom_ops_library(library)
    session = ort.InferenceSession(str(target / "1" / "model.onnx"), options,
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in config.output]
    return dict(zip(names, session.run(names, {"image": image})))


@needs_library
def test_plugin_flavour_model_declares_the_library_and_runs_as_the_backend_would(tmp_path):
    target = write_onnxruntime_model(plugin_toy(tmp_path / "plugin.onnx"), tmp_path / "repo",
                                     ModelOptions("seg", max_batch=4, instances=2), threads=2)
    config = parse(target)   # Triton's schema: unknown fields or bad syntax fail here
    assert config.backend == "onnxruntime" and config.max_batch_size == 4
    assert list(config.model_operations.op_library_filename) == [LIBRARY]
    assert config.instance_group[0].count == 2
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert config.parameters["intra_op_thread_count"].string_value == "2"
    assert config.parameters["convcrf.classes"].string_value.startswith('["background"')
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == \
        [("image", model_config_pb2.TYPE_FP32, [3, -1, -1])]
    assert {o.name: o.data_type for o in config.output} == {
        "probabilities": model_config_pb2.TYPE_FP32, "labels": model_config_pb2.TYPE_INT64,
        "unary_labels": model_config_pb2.TYPE_INT64}
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()) == \
        ["1/model.onnx", "README.md", "config.pbtxt", "convcrf-triton.json"]
    assert "model_operations" in (target / "README.md").read_text()
    image = np.random.default_rng(0).uniform(0, 255, (3, 3, 20, 28)).astype(np.float32)
    outputs = run_like_the_onnxruntime_backend(target, image)
    assert outputs["labels"].shape == (3, 20, 28)
    np.testing.assert_allclose(outputs["probabilities"].sum(1), 1.0, atol=1e-5)


def test_portable_model_needs_no_library_and_a_named_one_is_written_as_given(tmp_path, monkeypatch):
    monkeypatch.delenv(_native.ORT_OPS_ENV, raising=False)
    monkeypatch.setattr(_native, "LIB_DIR", tmp_path)   # not installed here
    monkeypatch.setattr(_native, "library_dirs", lambda: [tmp_path])
    portable = write_onnxruntime_model(write_toy_onnx(tmp_path / "toy.onnx"), tmp_path / "repo")
    assert not parse(portable).model_operations.op_library_filename
    plugin = plugin_toy(tmp_path / "plugin.onnx")
    with pytest.raises(RepositoryError, match="libconvcrf_ort_ops.*--ops-library"):
        write_onnxruntime_model(plugin, tmp_path / "repo", ModelOptions("p"))
    # The server's copy (e.g. inside a container) need not exist here.
    server_copy = "/opt/convcrf/lib/libconvcrf_ort_ops.so"
    target = write_onnxruntime_model(plugin, tmp_path / "repo", ModelOptions("p"),
                                     ops_library=server_copy)
    assert list(parse(target).model_operations.op_library_filename) == [server_copy]
    with pytest.raises(RepositoryError, match="absolute path"):
        write_onnxruntime_model(plugin, tmp_path / "repo", ModelOptions("q"),
                                ops_library="lib/libconvcrf_ort_ops.so")
    # The Python-backend model of a plugin-flavour file needs the library in the runtime too.
    with pytest.raises(RepositoryError, match="'plugin'-flavour export.*libconvcrf_ort_ops"):
        write_python_model(plugin, tmp_path / "repo", ModelOptions("py"))


@needs_library
def test_python_backend_model_accepts_the_plugin_flavour_with_the_library(tmp_path):
    target = write_python_model(plugin_toy(tmp_path / "plugin.onnx"), tmp_path / "repo")
    assert (target / "1" / "model.onnx").is_file()


@needs_library
def test_cli_writes_the_onnxruntime_model(tmp_path, capsys):
    plugin = plugin_toy(tmp_path / "plugin.onnx")
    assert triton_cli.main([str(plugin), "-o", str(tmp_path / "repo"), "--onnxruntime",
                            "--threads", "3"]) == 0
    assert "onnxruntime backend" in capsys.readouterr().out
    config = parse(tmp_path / "repo" / "convcrf")
    assert config.parameters["intra_op_thread_count"].string_value == "3"
    assert list(config.model_operations.op_library_filename) == [LIBRARY]


@pytest.mark.parametrize("extra, message", [
    (["--ops-library", "/x/lib.so"], "only apply with --onnxruntime"),
    (["--gpu"], "only apply with --onnxruntime"),
    (["--onnxruntime", "--engine", "m.engine"], "choose one"),
    (["--onnxruntime", "--input-dtype", "uint8"], "float32 'image'"),
])
def test_cli_usage_errors(tmp_path, capsys, extra, message):
    toy = write_toy_onnx(tmp_path / "toy.onnx")
    assert triton_cli.main([str(toy), "-o", str(tmp_path / "repo"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
