"""ONNX export (convcrf_deploy.export): flavours, dynamic axes, custom nodes, fp16, parts,
trained parameters, metadata, verification and error reporting.

One small model (+C and +T with non-default trained values) is exported once per
flavour; the exporter reuses its traced graph across flavours, so the module stays fast.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from convcrf_deploy import CRFConfig, ConvCRF, __version__
from convcrf_deploy.export import ExportError, export_onnx
from convcrf_deploy.export import onnx_ops
from convcrf_deploy.export.verify import VerificationError, check_graph, run_graph
from convcrf_deploy.metadata import ModelMetadata
from convcrf_deploy.model import FastFCN, SegmentationModel

ort = pytest.importorskip("onnxruntime")

FLAVORS = ("single-file", "plugin", "portable")
NUM_CLASSES = 4
# One mean-field iteration keeps tracing fast; the loop is the same code for any count.
CONFIG = CRFConfig(num_classes=NUM_CLASSES, filter_size=5, blur=4, iterations=1,
                   compatibility="learned", learned_features=True)


def _trained_crf(seed: int = 0) -> ConvCRF:
    """A ConvCRF whose every parameter is moved away from its initial value."""
    crf = ConvCRF(CONFIG)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        crf.log_appearance_position_bandwidth.fill_(np.log(40.0))
        crf.log_appearance_color_bandwidth.fill_(np.log(20.0))
        crf.log_smoothness_bandwidth.fill_(np.log(2.0))
        crf.appearance_weight.fill_(6.0)
        crf.smoothness_weight.fill_(2.0)
        crf.message_weight.copy_(torch.linspace(0.5, 1.5, NUM_CLASSES))
        crf.compatibility.weight.add_(0.3 * torch.randn(crf.compatibility.weight.shape,
                                                        generator=generator))
        crf.feature_transform.weight.add_(0.2 * torch.randn(crf.feature_transform.weight.shape,
                                                            generator=generator))
        crf.feature_transform.bias.add_(0.5)
    return crf


def _model(crf: ConvCRF) -> SegmentationModel:
    torch.manual_seed(0)
    return SegmentationModel(FastFCN(NUM_CLASSES, width=8), crf,
                             ModelMetadata.for_classes(["bg", "road", "car", "person"])).eval()


@pytest.fixture(scope="module")
def model():
    return _model(_trained_crf())


@pytest.fixture(scope="module")
def exports(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    return {flavor: export_onnx(model, out / f"m.{flavor}.onnx", flavor=flavor)
            for flavor in FLAVORS}


# A CRF-only model with few classes and a small window keeps the reference evaluator quick;
# it has every construct of the full graph's CRF (pooling, Range, Resize, softmax, the ops).
SMALL_CRF = CRFConfig(num_classes=3, filter_size=3, blur=4, iterations=2)


@pytest.fixture(scope="module")
def crf_exports(tmp_path_factory):
    """A CRF-only export in every flavour, traced once; asked for at 2x2 (the CLI minimum)."""
    torch.manual_seed(0)
    crf = ConvCRF(SMALL_CRF).eval()
    out = tmp_path_factory.mktemp("crf")
    paths = {}
    for flavor in FLAVORS:
        report = export_onnx(crf, out / f"crf.{flavor}.onnx", flavor=flavor, part="crf",
                             height=2, width=2)
        assert report.ok, report.summary()
        assert report.inputs == {"logits": ["batch", 3, "height", "width"],
                                 "image": ["batch", 3, "height", "width"]}
        paths[flavor] = report.path
    return crf, paths


def _crf_case(crf, batch, height, width, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, SMALL_CRF.num_classes, height, width, generator=generator) * 3
    image = torch.rand(batch, 3, height, width, generator=generator) * 255
    with torch.no_grad():
        expected = crf(logits, image).numpy()
    return {"logits": logits.numpy(), "image": image.numpy()}, expected


def _image(batch: int, height: int, width: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 255


def _run(path, flavor, feeds):
    _, outputs = run_graph(onnx.load(str(path)), feeds, flavor)
    return outputs


@pytest.mark.parametrize("flavor", FLAVORS)
def test_every_flavour_exports_and_passes_verification(exports, flavor):
    report = exports[flavor]
    assert report.ok, report.summary()
    assert report.verification.max_abs_error < 1e-4
    assert report.verification.label_agreement >= 0.999
    assert report.inputs == {"image": ["batch", 3, "height", "width"]}
    assert report.outputs == {"probabilities": ["batch", NUM_CLASSES, "height", "width"],
                              "labels": ["batch", "height", "width"],
                              "unary_labels": ["batch", "height", "width"]}


@pytest.mark.parametrize("flavor", FLAVORS)
def test_one_graph_runs_any_size_and_batch(exports, model, flavor):
    sizes = [(61, 83), (64, 96), (37, 50)] if flavor != "plugin" else [(45, 58)]
    for height, width in sizes:
        image = _image(2, height, width, seed=height)
        probabilities, labels, unary_labels = _run(exports[flavor].path, flavor,
                                                   {"image": image.numpy()})
        with torch.no_grad():
            expected = model(image).numpy()
            expected_unary = model.forward_unary(image).argmax(1).numpy()
        assert probabilities.shape == (2, NUM_CLASSES, height, width)
        assert np.abs(probabilities - expected).max() < 1e-4, (height, width)
        assert labels.dtype == np.int64 and labels.shape == (2, height, width)
        assert (labels == expected.argmax(1)).mean() >= 0.999
        assert (unary_labels == expected_unary).mean() >= 0.999


def test_trained_crf_parameters_are_in_the_graph(exports, model):
    """The exported graph follows the trained values, not the configuration's defaults."""
    image = _image(1, 40, 52)
    probabilities = _run(exports["portable"].path, "portable", {"image": image.numpy()})[0]
    default = _model(ConvCRF(CONFIG))
    default.unary.load_state_dict(model.unary.state_dict())
    with torch.no_grad():
        trained_out, default_out = model(image).numpy(), default(image).numpy()
    assert np.abs(trained_out - default_out).max() > 1e-2   # the test can tell them apart
    assert np.abs(probabilities - trained_out).max() < 1e-4


def _attributes(node) -> dict:
    return {a.name: (a.type, helper.get_attribute_value(a)) for a in node.attribute}


@pytest.mark.parametrize("flavor", ["plugin", "single-file"])
def test_custom_nodes_have_the_tensorrt_op_types_and_attributes(exports, flavor):
    model = onnx.load(str(exports[flavor].path))
    custom = [n for n in model.graph.node if n.domain == "trt.plugins"]
    assert [n.op_type for n in custom].count("ConvCRFKernel") == 2     # appearance, smoothness
    assert [n.op_type for n in custom].count("ConvCRFMessagePassing") == CONFIG.iterations
    assert {n.op_type for n in custom} == {"ConvCRFKernel", "ConvCRFMessagePassing"}
    for node in custom:
        assert _attributes(node) == {
            "filter_size": (onnx.AttributeProto.INT, CONFIG.filter_size),
            "plugin_version": (onnx.AttributeProto.STRING, b"1"),
            "plugin_namespace": (onnx.AttributeProto.STRING, b""),
        }
        assert len(node.input) == (1 if node.op_type == "ConvCRFKernel" else 2)
    assert ("trt.plugins", 1) in [(o.domain, o.version) for o in model.opset_import]
    functions = {(f.domain, f.name) for f in model.functions}
    if flavor == "single-file":
        assert functions == {("trt.plugins", "ConvCRFKernel"),
                             ("trt.plugins", "ConvCRFMessagePassing")}
    else:
        assert functions == set()


def test_portable_graph_is_standard_onnx_only(exports):
    model = onnx.load(str(exports["portable"].path))
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    assert not model.functions
    assert "trt.plugins" not in [o.domain for o in model.opset_import]
    assert exports["portable"].node_count > exports["single-file"].node_count


def test_channel_softmax_is_decomposed_for_onnx_runtime_only(exports):
    """ORT CPU is slow on Softmax over axis 1; TensorRT (plugin flavour) keeps the op."""
    def ops(flavor):
        return {n.op_type for n in onnx.load(str(exports[flavor].path)).graph.node}
    assert {"Softmax", "LogSoftmax"} <= ops("plugin")
    for flavor in ("portable", "single-file"):
        assert not {"Softmax", "LogSoftmax"} & ops(flavor)
        assert {"ReduceMax", "Exp", "Log"} <= ops(flavor)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_graph_avoids_constructs_runtimes_disagree_on(exports, flavor):
    """Blur pooling without ceil mode (floor mode over zero padding, divided by a per-window
    count computed in the graph), and no float Range (issue 10)."""
    model = onnx.load(str(exports[flavor].path))
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             [*inferred.graph.value_info, *inferred.graph.input]}
    pools = [n for n in model.graph.node if n.op_type == "AveragePool"]
    resizes = [n for n in model.graph.node if n.op_type == "Resize"]
    assert len(pools) >= CONFIG.iterations and len(resizes) >= CONFIG.iterations
    for node in pools:
        attrs = {k: v for k, (_, v) in _attributes(node).items()}
        # Floor mode; padding only where the divisor counts it (every window k*k).
        assert attrs.get("ceil_mode", 0) == 0
        assert not any(attrs.get("pads", [])) or attrs["count_include_pad"] == 1
    ranges = [n for n in model.graph.node if n.op_type == "Range"]
    assert ranges and all(types[n.output[0]] == TensorProto.INT64 for n in ranges)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_stock_reference_evaluator_matches_pytorch(crf_exports, flavor):
    """Acceptance (issue 10): the unpatched onnx.reference.ReferenceEvaluator (plugin flavour:
    with our two ops as new_ops) matches PyTorch to < 1e-4 at odd sizes and batch 2."""
    crf, paths = crf_exports
    model = onnx.load(str(paths[flavor]))
    for batch, height, width in [(2, 61, 83), (1, 1, 1), (1, 7, 500), (2, 2, 2)]:
        feeds, expected = _crf_case(crf, batch, height, width)
        backend, (probabilities, labels) = run_graph(model, feeds, flavor, runtime="reference")
        assert backend.startswith("onnx.reference")
        assert probabilities.shape == expected.shape
        assert np.abs(probabilities - expected).max() < 1e-4, (flavor, batch, height, width)
        assert (labels == expected.argmax(1)).mean() >= 0.999


def test_ceil_mode_pooling_replacement_matches_pytorch():
    """The rewrite of AveragePool(ceil_mode=1) for windows larger than, equal to and smaller
    than the stride, in ONNX Runtime and the stock reference evaluator."""
    from onnx.reference import ReferenceEvaluator
    from convcrf_deploy.export import rewrites

    x = torch.rand(2, 3, 13, 10, generator=torch.Generator().manual_seed(0))
    for kernel, stride in [(4, 4), (3, 2), (2, 3), (1, 4), (5, 5)]:
        node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[kernel, kernel],
                                strides=[stride, stride], ceil_mode=1, count_include_pad=0)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(
            "x", TensorProto.FLOAT, ["n", "c", "h", "w"])], [helper.make_tensor_value_info(
                "y", TensorProto.FLOAT, ["n", "c", "oh", "ow"])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
        assert rewrites.replace_ceil_mode_pooling(model) == 1
        onnx.checker.check_model(model, full_check=True)
        expected = torch.nn.functional.avg_pool2d(x, kernel, stride, ceil_mode=True,
                                                  count_include_pad=False).numpy()
        for h, w in [(13, 10), (4, 4), (1, 1), (5, 9)]:
            if h < kernel or w < kernel:
                continue
            xs = x[:, :, :h, :w].contiguous()
            want = torch.nn.functional.avg_pool2d(xs, kernel, stride, ceil_mode=True,
                                                  count_include_pad=False).numpy()
            got_ort = run_graph(model, {"x": xs.numpy()}, "portable")[1][0]
            got_ref = ReferenceEvaluator(model).run(None, {"x": xs.numpy()})[0]
            for got in (got_ort, got_ref):
                assert got.shape == want.shape, (kernel, stride, h, w)
                assert np.abs(got - want).max() < 1e-6, (kernel, stride, h, w)
        assert expected.size


def test_ceil_mode_pooling_with_padding_is_refused():
    from convcrf_deploy.export import rewrites

    node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                            pads=[1, 1, 1, 1], ceil_mode=1)
    graph = helper.make_graph([node], "g", [], [])
    with pytest.raises(rewrites.UnsupportedPoolingError, match="ceil_mode=False"):
        rewrites.replace_ceil_mode_pooling(helper.make_model(graph))


def test_metadata_props(exports, model):
    for flavor, report in exports.items():
        props = {p.key: p.value for p in onnx.load(str(report.path)).metadata_props}
        assert props["convcrf.flavor"] == flavor
        assert props["convcrf.version"] == __version__
        assert CRFConfig.from_json(props["convcrf.crf_config"]) == CONFIG
        assert ModelMetadata.from_onnx_props(props) == model.metadata
        assert json.loads(props["convcrf.classes"]) == ["bg", "road", "car", "person"]


def test_fp16_graph_types(model, tmp_path):
    # Fixed sizes trace several times faster; the types do not depend on them.
    report = export_onnx(model, tmp_path / "m16.onnx", flavor="single-file", fp16=True,
                         static=True, height=48, width=61)
    assert report.ok, report.summary()
    graph = onnx.load(str(report.path))
    # Graph I/O stays float32 image -> float32 probabilities.
    assert graph.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert graph.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    inferred = onnx.shape_inference.infer_shapes(graph)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    custom = [n for n in inferred.graph.node if n.domain == "trt.plugins"]
    assert custom
    for node in custom:
        for name in [*node.input, *node.output]:
            assert types[name] == TensorProto.FLOAT16, (node.op_type, name)
    conv_weights = {n.input[1] for n in graph.graph.node if n.op_type == "Conv"}
    unary_types, other_types = set(), set()
    for init in graph.graph.initializer:
        if init.name in conv_weights:
            (unary_types if "unary." in init.name else other_types).add(init.data_type)
    # The unary runs in fp16; the CRF's 1x1 convolutions (+C, +T) stay fp32.
    assert unary_types == {TensorProto.FLOAT16}
    assert other_types == {TensorProto.FLOAT}
    # Inside the op bodies the distances, exp and sums are fp32.
    body = next(f for f in graph.functions if f.name == "ConvCRFKernel")
    assert body.node[0].op_type == "Cast" and \
        helper.get_attribute_value(body.node[0].attribute[0]) == TensorProto.FLOAT


def test_parts_unary_and_crf(model, tmp_path):
    unary = export_onnx(model, tmp_path / "unary.onnx", flavor="portable", part="unary")
    assert unary.ok, unary.summary()
    assert unary.inputs == {"image": ["batch", 3, "height", "width"]}
    assert list(unary.outputs) == ["logits"] and unary.custom_nodes == {}
    props = {p.key for p in onnx.load(str(unary.path)).metadata_props}
    assert "convcrf.classes" in props and "convcrf.crf_config" not in props   # no CRF inside

    crf = export_onnx(model.crf, tmp_path / "crf.onnx", flavor="plugin", part="crf",
                      static=True, height=40, width=57)
    assert crf.ok, crf.summary()
    assert crf.inputs == {"logits": ["batch", NUM_CLASSES, 40, 57],
                          "image": ["batch", 3, 40, 57]}
    assert list(crf.outputs) == ["probabilities", "labels"]
    assert crf.custom_nodes == {"ConvCRFKernel": 2, "ConvCRFMessagePassing": CONFIG.iterations}


def test_bare_crf_needs_part_crf(model, tmp_path):
    with pytest.raises(ExportError, match="part='crf'"):
        export_onnx(model.crf, tmp_path / "x.onnx", part="full")


# ---- op schemas and reference evaluator ---------------------------------------------------------

def _custom_node_model(op_type: str, filter_size: int, k_channels: int | None = None,
                       n: int = 1, h: int = 8, w: int = 9, **extra) -> onnx.ModelProto:
    attrs = {**onnx_ops.plugin_attributes(filter_size), **extra}
    k2 = k_channels or filter_size * filter_size
    if op_type == "ConvCRFKernel":
        inputs = [helper.make_tensor_value_info("features", TensorProto.FLOAT, [n, 5, h, w])]
        names, out_shape = ["features"], [n, k2, h, w]
    else:
        inputs = [helper.make_tensor_value_info("q", TensorProto.FLOAT, [n, 3, h, w]),
                  helper.make_tensor_value_info("K", TensorProto.FLOAT, [n, k2, h, w])]
        names, out_shape = ["q", "K"], [n, 3, h, w]
    # The custom node writes "mid"; shape inference fills in its value_info.
    nodes = [helper.make_node(op_type, names, ["mid"], domain="trt.plugins", **attrs),
             helper.make_node("Identity", ["mid"], ["out"])]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(
        "out", TensorProto.FLOAT, ["n", "c", "h", "w"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20),
                                                    helper.make_opsetid("trt.plugins", 1)])
    return model, out_shape


@pytest.mark.parametrize("op_type", onnx_ops.OP_TYPES)
def test_schema_propagates_shapes(op_type):
    model, out_shape = _custom_node_model(op_type, 3)
    inferred = check_graph(model)
    mid = next(v for v in inferred.graph.value_info if v.name == "mid")
    dims = [d.dim_value for d in mid.type.tensor_type.shape.dim]
    assert dims == out_shape


@pytest.mark.parametrize("op_type", onnx_ops.OP_TYPES)
@pytest.mark.parametrize("bad, match", [
    (dict(filter_size=4), "filter_size must be odd"),
    (dict(filter_size=33), "filter_size must be odd"),
    (dict(plugin_version="2"), "plugin_version"),
])
def test_schema_rejects_bad_attributes(op_type, bad, match):
    model, _ = _custom_node_model(op_type, 3)
    node = model.graph.node[0]
    for name, value in bad.items():
        next(a for a in node.attribute if a.name == name).CopyFrom(
            helper.make_attribute(name, value))
    with pytest.raises(VerificationError, match=match):
        check_graph(model)


def test_schema_rejects_kernel_with_wrong_channel_count():
    model, _ = _custom_node_model("ConvCRFMessagePassing", 3, k_channels=25)
    with pytest.raises(VerificationError, match="k\\*k"):
        check_graph(model)


@pytest.mark.parametrize("native", [True, False])
def test_reference_ops_match_the_torch_ops(native, monkeypatch):
    from convcrf_deploy import ops
    if not native:
        monkeypatch.setattr(onnx_ops._native, "cpu_library", lambda: None)
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(2, 5, 7, 10, generator=generator)
    q = torch.rand(2, 3, 7, 10, generator=generator)
    kernel = ops.gaussian_kernel(features, 5, implementation="reference")
    messages = ops.message_passing(q, kernel, 5, implementation="reference")
    model, _ = _custom_node_model("ConvCRFKernel", 5, n=2, h=7, w=10)
    from onnx.reference import ReferenceEvaluator
    got_k = ReferenceEvaluator(model, new_ops=onnx_ops.REFERENCE_OPS).run(
        None, {"features": features.numpy()})[0]
    assert got_k.shape == (2, 25, 7, 10)
    assert np.abs(got_k - kernel.numpy()).max() < 1e-5
    got_m = onnx_ops.ConvCRFMessagePassing.eval(q.numpy(), kernel.numpy(), filter_size=5)
    assert np.abs(got_m - messages.numpy()).max() < 1e-5


@pytest.mark.parametrize("filter_size", [1, 3, 7])
def test_standard_op_lowering_matches_the_op_contract(filter_size):
    """The function bodies (portable lowering), run by ONNX Runtime, against the reference."""
    from convcrf_deploy import ops
    generator = torch.Generator().manual_seed(filter_size)
    features = torch.randn(2, 5, 9, 6, generator=generator)
    q = torch.rand(2, 3, 9, 6, generator=generator)
    kernel_model, _ = _custom_node_model("ConvCRFKernel", filter_size, n=2, h=9, w=6)
    kernel_model.functions.extend(onnx_ops.local_functions(filter_size, 20))
    got_k = run_graph(kernel_model, {"features": features.numpy()}, "single-file")[1][0]
    expected_k = ops.gaussian_kernel(features, filter_size, implementation="reference")
    assert np.abs(got_k - expected_k.numpy()).max() < 1e-5
    mp_model, _ = _custom_node_model("ConvCRFMessagePassing", filter_size, n=2, h=9, w=6)
    mp_model.functions.extend(onnx_ops.local_functions(filter_size, 20))
    got_m = run_graph(mp_model, {"q": q.numpy(), "K": expected_k.numpy()}, "single-file")[1][0]
    expected_m = ops.message_passing(q, expected_k, filter_size, implementation="reference")
    assert np.abs(got_m - expected_m.numpy()).max() < 1e-5


# ---- errors -------------------------------------------------------------------------------------

class _NumpyRoundTrip(torch.nn.Module):
    """A layer the exporter cannot trace (leaves PyTorch through NumPy)."""

    def forward(self, x):
        return torch.from_numpy(x.detach().numpy() * 2)


def test_unsupported_unary_layer_is_named(tmp_path):
    unary = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), _NumpyRoundTrip(),
                                torch.nn.Conv2d(4, NUM_CLASSES, 1))
    model = SegmentationModel(unary, ConvCRF(CONFIG),
                              ModelMetadata.for_classes(list("abcd"))).eval()
    with pytest.raises(ExportError, match=r"layer 'unary\.1' \(_NumpyRoundTrip\)"):
        export_onnx(model, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


@pytest.mark.parametrize("kwargs, match", [
    (dict(flavor="tensorrt"), "flavor must be one of"),
    (dict(part="head"), "part must be one of"),
    (dict(height=64), "both height and width"),
    (dict(opset=17), r"opset must be an int in 18\.\.28, got 17"),
    (dict(opset=30), r"opset must be an int in 18\.\.28, got 30"),
    (dict(opset=99), r"opset must be an int in 18\.\.28"),
    (dict(static=True, height=100000, width=64), "too large.*4096 pixels per side"),
    (dict(height=5000, width=5000), "too large.*verified at that size"),
])
def test_bad_arguments(model, tmp_path, kwargs, match):
    with pytest.raises(ExportError, match=match):
        export_onnx(model, tmp_path / "x.onnx", **kwargs)
    assert not (tmp_path / "x.onnx").exists()


def test_every_claimed_opset_runs_in_onnx_runtime_like_pytorch(crf_exports, tmp_path):
    """Acceptance (issue 10): each opset in MIN_OPSET..MAX_OPSET is honoured, declares the IR
    version its ONNX release requires, and ONNX Runtime matches PyTorch at it."""
    from convcrf_deploy.export.exporter import MAX_OPSET, MIN_OPSET
    crf, _ = crf_exports
    assert (MIN_OPSET, MAX_OPSET) == (18, 28)
    required_ir = {18: 8, 19: 9, 20: 9, 21: 10, 22: 10, 23: 11, 24: 12, 25: 13, 26: 13, 27: 13,
                   28: 14}
    newest = onnx.defs.onnx_opset_version()
    for opset in range(MIN_OPSET, MAX_OPSET + 1):
        if opset > newest:
            with pytest.raises(ExportError, match="needs a newer onnx"):
                export_onnx(crf, tmp_path / f"o{opset}.onnx", part="crf", opset=opset)
            continue
        for flavor in ("single-file", "portable"):
            report = export_onnx(crf, tmp_path / f"o{opset}.{flavor}.onnx", flavor=flavor,
                                 part="crf", opset=opset, verify=False)
            model = onnx.load(str(report.path))
            assert report.opset == opset
            assert [o.version for o in model.opset_import if o.domain == ""] == [opset]
            assert model.ir_version == required_ir[opset]
            onnx.checker.check_model(model, full_check=True)
            for batch, height, width in [(2, 61, 83), (1, 1, 1), (1, 7, 500)]:
                feeds, expected = _crf_case(crf, batch, height, width)
                probabilities = run_graph(model, feeds, flavor, runtime="onnxruntime")[1][0]
                assert np.abs(probabilities - expected).max() < 1e-4, (opset, flavor, height)


def test_fp16_casts_the_kernel_once(tmp_path):
    """K feeds every iteration's message passing; it is cast to fp16 once, not per iteration."""
    report = export_onnx(ConvCRF(SMALL_CRF).eval(), tmp_path / "c16.onnx", flavor="plugin",
                         part="crf", fp16=True, static=True, height=24, width=37, verify=False)
    graph = onnx.load(str(report.path)).graph
    passing = [n for n in graph.node if n.op_type == "ConvCRFMessagePassing"]
    assert len(passing) == SMALL_CRF.iterations == 2
    kernels = {n.input[1] for n in passing}
    casts = [n for n in graph.node if n.op_type == "Cast" and n.output[0] in kernels]
    assert len(kernels) == 1 and len(casts) == 1
