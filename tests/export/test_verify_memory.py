"""Export verification within a memory budget (issue 18 item 5): sizes and batches chosen to fit,
the peak measured and reported, exact error statistics without full-size temporaries, and
``fp16="crf"`` (``--fp16 crf``) for PyTorch exports."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from convcrf_deploy import ConvCRF, CRFConfig, _native  # noqa: E402
from convcrf_deploy.export import export_onnx  # noqa: E402
from convcrf_deploy.export.verify import (ErrorStatistics, PeakMemory, estimated_memory,  # noqa: E402
                                          plan_verification, run_graph, verify_export)

MIB = 1024 ** 2
CONFIG = CRFConfig(num_classes=3, filter_size=3, blur=4, iterations=2)


@pytest.fixture(scope="module")
def crf():
    torch.manual_seed(0)
    return ConvCRF(CONFIG).eval()


@pytest.fixture(scope="module")
def crf_graph(crf, tmp_path_factory):
    path = tmp_path_factory.mktemp("verify") / "crf.onnx"
    return onnx.load(str(export_onnx(crf, path, part="crf", verify=False).path))


def test_error_statistics_equal_numpy_on_chunks():
    rng = np.random.default_rng(0)
    for count in (1, 7, 999, 10_001):
        got, want = rng.standard_normal(count), rng.standard_normal(count)
        stats = ErrorStatistics(count)
        for chunk in np.array_split(np.arange(count), 5):
            stats.add(got[chunk], want[chunk])
        error = np.abs(got.astype(np.float32) - want.astype(np.float32))
        assert stats.max_error == pytest.approx(float(error.max()))
        assert stats.value() == pytest.approx(float(np.quantile(error, 0.999)), rel=1e-6)
    stats = ErrorStatistics(4)
    stats.add(np.array([0.0, np.nan, 1.0, np.inf]), np.zeros(4))
    assert stats.nonfinite == 2 and np.isnan(stats.max_error)


def test_plan_keeps_small_runs_and_shrinks_large_dynamic_ones():
    assert plan_verification((61, 83), 2, 21, dynamic=True).size == (61, 83)
    plan = plan_verification((4096, 4096), 2, 21, dynamic=True)
    assert plan.batch == 1 and plan.size[0] < 4096 and plan.size[0] == plan.size[1]
    assert estimated_memory(1, 21, *plan.size) <= 2 * 1024 ** 3
    assert "over the 2048 MiB budget" in plan.note
    plan = plan_verification((800, 1200), 2, 21, dynamic=True)
    assert (plan.size, plan.batch) == ((800, 1200), 1) and "batch 1" in plan.note
    # a size the network runs at (multiples of 32 here) shrinks to one that still is
    plan = plan_verification((1024, 1280), 2, 21, dynamic=True)
    assert plan.size < (1024, 1280) and plan.size[0] % 32 == 0 and plan.size[1] % 32 == 0
    plan = plan_verification((1000, 1500), 2, 21, dynamic=True, pad_multiple=20, min_size=40)
    assert plan.size < (1000, 1500) and plan.size[0] % 20 == 0 and plan.size[1] % 20 == 0
    plan = plan_verification((4096, 4096), 1, 21, dynamic=True, budget=MIB, pad_multiple=4,
                             min_size=100)
    assert plan.size == (100, 100)
    fixed = plan_verification((4096, 4096), 2, 21, dynamic=False)
    assert fixed.size is None and "fixed size 4096x4096" in fixed.note


def test_peak_memory_is_measured(crf):
    with PeakMemory() as memory:
        block = np.ones(64 * MIB // 8)        # 64 MiB touched
        del block
    assert memory.result is not None
    if memory.result.method == "VmHWM":      # Linux: the block's own peak, exactly
        assert 60 * MIB <= memory.result.added <= 96 * MIB, memory.result


def test_a_large_dynamic_verification_runs_smaller_within_the_budget(crf_graph, crf):
    budget = 64 * MIB
    result = verify_export(crf_graph, crf, flavor="single-file", part="crf", size=(1500, 2000),
                           memory_budget=budget)
    assert result.passed, result.summary()
    assert result.batch == 1 and result.size[0] < 1500 and "instead of 1500x2000" in \
        result.summary()
    assert result.memory is not None and "peak memory" in result.summary()
    if result.memory.method == "VmHWM":
        assert result.memory.added <= budget, result.summary()


def test_a_static_graph_too_large_for_the_budget_is_not_run(crf_graph, crf):
    model = onnx.ModelProto()
    model.CopyFrom(crf_graph)
    for value in model.graph.input:          # as a static export declares its inputs
        value.type.tensor_type.shape.dim[2].dim_value = 64
        value.type.tensor_type.shape.dim[3].dim_value = 80
    result = verify_export(model, crf, flavor="single-file", part="crf", memory_budget=1 * MIB)
    assert result.passed and result.skipped
    assert "parity NOT RUN" in result.summary() and "fixed size 64x80" in result.summary()
    assert verify_export(model, crf, flavor="single-file", part="crf").size == (64, 80)


def test_plugin_graphs_without_the_library_run_their_function_bodies_in_onnx_runtime(
        crf_graph, crf, tmp_path, monkeypatch):
    plugin = onnx.load(str(export_onnx(crf, tmp_path / "p.onnx", part="crf", flavor="plugin",
                                       verify=False).path))
    monkeypatch.delenv(_native.ORT_OPS_ENV, raising=False)
    monkeypatch.setattr(_native, "LIB_DIR", tmp_path)
    monkeypatch.setattr(_native, "library_dirs", lambda: [tmp_path])
    result = verify_export(plugin, crf, flavor="plugin", part="crf", size=(37, 50))
    assert result.passed, result.summary()
    assert result.backend.startswith("ONNX Runtime") and "function bodies" in result.backend
    rng = np.random.default_rng(0)
    feeds = {"logits": rng.standard_normal((1, 3, 9, 11)).astype(np.float32),
             "image": rng.uniform(0, 255, (1, 3, 9, 11)).astype(np.float32)}
    reference = run_graph(plugin, feeds, "plugin", runtime="reference")[1][0]
    bodies = run_graph(plugin, feeds, "plugin")[1][0]
    np.testing.assert_allclose(bodies, reference, atol=1e-5)


def test_fp16_crf_keeps_the_unary_in_fp32(tmp_path):
    """--fp16 crf on a PyTorch export: ConvCRF nodes with fp16 I/O, the unary's convolutions
    in fp32, precision "fp16-crf"; the report says so and splits the error by part."""
    from convcrf_deploy import SegmentationModel
    from convcrf_deploy.metadata import ModelMetadata
    from convcrf_deploy.model import FastFCN
    torch.manual_seed(0)
    model = SegmentationModel(FastFCN(3, width=8), ConvCRF(CONFIG), ModelMetadata(["a", "b", "c"]))
    report = export_onnx(model, tmp_path / "m.onnx", fp16="crf", height=48, width=64)
    assert report.ok, report.summary()
    assert "fp32 unary, fp16 CRF" in report.summary()
    assert "unary alone" in report.summary() and "crf alone" in report.summary()
    graph = onnx.load(str(report.path))
    inferred = onnx.shape_inference.infer_shapes(graph)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    convs = [n for n in graph.graph.node if n.op_type == "Conv"]
    assert convs and all(types.get(n.output[0], 1) == onnx.TensorProto.FLOAT for n in convs)
    custom = [n for n in graph.graph.node if n.domain == "trt.plugins"]
    assert custom and all(types[n.input[0]] == onnx.TensorProto.FLOAT16 for n in custom)
    props = {p.key: p.value for p in graph.metadata_props}
    assert props["convcrf.precision"] == "fp16-crf"
    from convcrf_deploy.runtime.backends.onnxrt import OnnxRuntimeBackend
    assert OnnxRuntimeBackend(report.path, threads=1).crf_executor == "native"


def _result(p999: float, labels: float, unary: tuple, crf: tuple, fp16=True):
    from convcrf_deploy.export.verify import PartResult, VerificationResult
    return VerificationResult(
        backend="ORT", size=(8, 8), batch=1, compared="probabilities", max_abs_error=p999,
        label_agreement=labels, tolerance=0.02, min_label_agreement=0.999,
        unary_label_agreement=unary[2], p999_abs_error=p999, error_statistic="p99.9",
        fp16=fp16, unary=PartResult("unary", *unary), crf=PartResult("crf", *crf))


def test_a_failure_names_the_part_and_the_fix():
    # the unary's labels differ: the unary, and --fp16 crf
    failed = _result(0.05, 0.99, (0.3, 0.2, 0.99), (0.001, 0.001, 1.0))
    assert failed.failed_part() == "unary" and "--fp16 crf" in failed.failure()
    assert "labels agree on 99.000 % (need 99.9 %)" in failed.failure()
    # the CRF alone fails and carries the error: the CRF, and fp32
    failed = _result(0.05, 0.9995, (0.001, 0.001, 1.0), (0.05, 0.04, 0.9995))
    assert failed.failed_part() == "crf" and "without --fp16" in failed.failure()
    assert "99.9th-percentile probabilities error 0.05 exceeds the tolerance 0.02" in \
        failed.failure()
    # both contribute
    failed = _result(0.09, 0.9995, (0.01, 0.005, 0.9995), (0.03, 0.025, 0.9995))
    assert failed.failed_part() == "both" and "try --fp16 crf" in failed.failure()
    # the CRF alone passes: the unary's error, amplified
    failed = _result(0.05, 0.9995, (0.01, 0.005, 0.9995), (0.01, 0.005, 1.0))
    assert failed.failed_part() == "unary"
    # fp32: a bug to report, not a precision to change
    failed = _result(0.05, 0.9995, (0.01, 0.005, 0.9995), (0.05, 0.04, 0.9995), fp16=False)
    assert "report it" in failed.failure() and "--fp16" not in failed.failure()
    assert _result(0.001, 1.0, (0.0, 0.0, 1.0), (0.0, 0.0, 1.0)).failure() == ""


def test_bare_fp16_still_means_the_whole_graph():
    from convcrf_deploy.cli.export import _fp16_value_explicit
    assert _fp16_value_explicit(["--fp16", "model.pt"]) == ["--fp16=all", "model.pt"]
    assert _fp16_value_explicit(["model.pt", "--fp16"]) == ["model.pt", "--fp16=all"]
    assert _fp16_value_explicit(["model.pt", "--fp16", "crf"]) == ["model.pt", "--fp16", "crf"]
