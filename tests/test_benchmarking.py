"""convcrf_deploy.benchmarking: latency statistics, interleaved timing, per-stage benchmark of
the backends, backends whose library is missing, and the CRF-setting sweep."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from convcrf_deploy import CRFConfig, ConvCRF, SegmentationModel
from convcrf_deploy import benchmarking as bench
from convcrf_deploy.benchmarking import BenchmarkError
from convcrf_deploy.data.scenes import SyntheticScene
from convcrf_deploy.metadata import ModelMetadata
from convcrf_deploy.model import FastFCN
from convcrf_deploy.runtime.backends import BackendUnavailableError

TINY = (40, 32)  # width, height


def tiny_model(num_classes: int = 5, crf: bool = True) -> SegmentationModel:
    """A small FastFCN + ConvCRF; seeded so that every call builds the same weights (the
    exporter then reuses its traces across tests)."""
    torch.manual_seed(0)
    names = (SyntheticScene.CLASS_NAMES if num_classes == 5
             else [f"c{i}" for i in range(num_classes)])
    config = CRFConfig(num_classes=num_classes, filter_size=5, blur=2, iterations=2)
    return SegmentationModel(FastFCN(num_classes, width=8), ConvCRF(config) if crf else None,
                             ModelMetadata.for_classes(names)).eval()


def check_stats(stats: dict, batch: int = 1) -> None:
    for key in bench.STAT_KEYS + ("fps", "count"):
        assert key in stats, key
    assert stats["min_ms"] <= stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"] \
        <= stats["max_ms"]
    assert stats["min_ms"] <= stats["mean_ms"] <= stats["max_ms"]
    assert stats["fps"] == pytest.approx(batch * 1000.0 / stats["mean_ms"])


# ---- statistics and timing ---------------------------------------------------------------------

def test_latency_stats_of_known_samples():
    stats = bench.latency_stats([4.0, 1.0, 3.0, 2.0, 100.0], batch=2)
    assert stats["mean_ms"] == pytest.approx(22.0)
    assert stats["p50_ms"] == pytest.approx(3.0)
    assert (stats["min_ms"], stats["max_ms"], stats["count"]) == (1.0, 100.0, 5)
    assert stats["fps"] == pytest.approx(2 * 1000 / 22.0)
    check_stats(stats, batch=2)


def test_latency_stats_needs_samples():
    with pytest.raises(BenchmarkError, match="iterations"):
        bench.latency_stats([])


def test_time_interleaved_warms_up_then_alternates_the_order():
    calls = []
    samples = bench.time_interleaved({"a": lambda: calls.append("a"),
                                      "b": lambda: calls.append("b")}, iterations=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert {k: len(v) for k, v in samples.items()} == {"a": 3, "b": 3}
    assert all(t >= 0 for v in samples.values() for t in v)


def test_backend_names():
    assert bench.normalize_backends(["ort", "pytorch", "onnxruntime", "trt"]) == \
        ["onnxruntime", "torch", "tensorrt"]
    with pytest.raises(BenchmarkError, match="unknown backend 'tflite'.*torch, onnxruntime"):
        bench.normalize_backends(["torch", "tflite"])
    # New-user trial: --backends triton ended in a StageUnavailableError traceback.
    with pytest.raises(BenchmarkError, match="the triton backend runs a model on a server.*"
                                             "benchmarks/bench_triton.py"):
        bench.normalize_backends(["torch", "triton"])


# ---- the benchmark ---------------------------------------------------------------------------

def test_torch_stages_statistics_and_speedup():
    result = bench.benchmark_model(tiny_model(), backends=["torch"], sizes=[TINY, (48, 40)],
                                   batch=2, iterations=4, warmup=1, threads=1)
    torch_result = result["backends"]["torch"]
    assert torch_result["status"] == "ok"
    assert list(torch_result["sizes"]) == ["40x32", "48x40"]
    for entry in torch_result["sizes"].values():
        assert set(bench.STAGES) <= set(entry)
        for stage in bench.STAGES:
            check_stats(entry[stage], batch=2)
            assert entry[stage]["count"] == 4
            assert entry[stage]["speedup_vs_torch"] == 1.0
    assert result["settings"]["batch"] == 2 and result["settings"]["threads"] == 1
    assert result["machine"]["cpu_count"] >= 1 and result["machine"]["torch"] == torch.__version__
    table = bench.format_benchmark(result)
    assert "torch" in table and "48x40" in table and "crf" in table


def test_busy_machine_warns_about_multithreaded_timings(monkeypatch):
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    options = {"backends": ["torch"], "sizes": [TINY], "iterations": 1, "warmup": 0}
    busy = bench.benchmark_model(tiny_model(), threads=2, **options)
    assert "--threads 1" in busy["warnings"][0]
    assert "warning: the machine is busy" in bench.format_benchmark(busy)
    assert "warnings" not in bench.benchmark_model(tiny_model(), threads=1, **options)


def test_model_without_crf_has_no_crf_stage():
    result = bench.benchmark_model(tiny_model(crf=False), backends=["torch"], sizes=[TINY],
                                   iterations=2, warmup=0)
    entry = result["backends"]["torch"]["sizes"]["40x32"]
    assert "crf" not in entry and {"unary", "full"} <= set(entry)


@pytest.fixture(scope="module")
def both_backends():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    return bench.benchmark_model(tiny_model(), backends=["torch", "onnxruntime"], sizes=[TINY],
                                 iterations=3, warmup=1, threads=1)


def test_onnxruntime_times_every_stage_of_the_same_model(both_backends):
    ort_result = both_backends["backends"]["onnxruntime"]
    torch_entry = both_backends["backends"]["torch"]["sizes"]["40x32"]
    assert ort_result["status"] == "ok"
    entry = ort_result["sizes"]["40x32"]
    for stage in bench.STAGES:
        check_stats(entry[stage])
        assert entry[stage]["speedup_vs_torch"] == pytest.approx(
            torch_entry[stage]["p50_ms"] / entry[stage]["p50_ms"])
    # The exported graph computes what PyTorch computes on the benchmark's own input.
    assert entry["max_abs_diff_vs_torch"] < 1e-4
    assert both_backends["machine"]["onnxruntime"]


def test_tensorrt_stages_through_the_tensorrt_backend(monkeypatch):
    """The benchmark builds TensorRT through TensorRTBackend.from_model (no GPU here: a
    subclass stands in for the engine): one engine of the full graph with our ConvCRF nodes
    and a profile covering every size, activated for the run and deactivated after it."""
    pytest.importorskip("onnxscript")
    import onnx

    from convcrf_deploy.runtime.backends import trt
    from convcrf_deploy.runtime.backends.base import Backend

    created = []

    class StandIn(trt.TensorRTBackend):
        def __init__(self, path, **build_options):
            Backend.__init__(self, ModelMetadata.for_classes(SyntheticScene.CLASS_NAMES))
            self.model = onnx.load(str(path))
            self.build_options, self.device = build_options, 0
            self.info = type("Info", (), {"path": path})
            self.activations = 0
            created.append(self)

        def _activate(self):
            self.activations += 1

        def _deactivate(self):
            pass

        def _infer(self, image):
            n, _, h, w = image.shape
            return {"probabilities": np.full((n, 5, h, w), 0.2, np.float32)}

    monkeypatch.setattr(trt, "TensorRTBackend", StandIn)
    monkeypatch.setattr(bench, "backend_unavailable_reason", lambda name: None)
    result = bench.benchmark_model(tiny_model(), backends=["torch", "tensorrt"],
                                   sizes=[TINY, (48, 40)], batch=2, iterations=2, warmup=0)
    entry = result["backends"]["tensorrt"]["sizes"]["48x40"]
    assert "full" in entry and "unary" not in entry and "crf" not in entry
    check_stats(entry["full"], batch=2)
    assert entry["max_abs_diff_vs_torch"] > 0  # the stand-in's output is not the model's
    (engine,) = created
    assert engine.build_options == {"min_shape": "2x3x32x40", "opt_shape": "2x3x40x48",
                                    "max_shape": "2x3x40x48"}
    assert any("ConvCRF" in node.op_type for node in engine.model.graph.node)
    assert engine.activations == 1 and not engine.is_active  # deactivated after the run
    notes = " ".join(result["backends"]["tensorrt"]["notes"])
    assert "CRF executor engine" in notes and "not timed alone" in notes


def test_the_frame_stage_splits_each_backends_frame_time(both_backends):
    """Issue 18: the bench splits a frame (through Segmenter, as convcrf-run runs it) into
    pre-processing, unary, CRF and post-processing."""
    for name in ("torch", "onnxruntime"):
        entry = both_backends["backends"][name]["sizes"]["40x32"]
        check_stats(entry["frame"])
        split = entry["frame_split"]
        assert list(split["parts"]) == ["preprocess", "unary", "crf", "other", "postprocess"]
        assert split["parts"]["unary"]["mean_ms"] > 0 and split["parts"]["crf"]["mean_ms"] > 0
        assert sum(p["percent"] for p in split["parts"].values()) == pytest.approx(100, abs=0.1)
        # 3 timed frames (the warm-up call is not in the split)
        assert split["frame_ms"] > 0 and entry["frame"]["count"] == 3
    table = bench.format_benchmark(both_backends)
    assert "frame time" in table and "CRF %" in table


def test_no_frame_stage_for_batches():
    result = bench.benchmark_model(tiny_model(), backends=["torch"], sizes=[TINY], batch=2,
                                   iterations=1, warmup=0)
    entry = result["backends"]["torch"]["sizes"]["40x32"]
    assert "frame" not in entry and "frame_split" not in entry
    assert "frame time" not in bench.format_benchmark(result)


def test_crf_executor_graph_times_the_graphs_crf():
    pytest.importorskip("onnxscript")
    result = bench.benchmark_model(tiny_model(), backends=["onnxruntime"], sizes=[TINY],
                                   iterations=2, warmup=0, threads=1, crf_executor="graph")
    backend = result["backends"]["onnxruntime"]
    assert any(note.startswith("CRF executor graph") for note in backend["notes"])
    assert result["settings"]["crf_executor"] == "graph"
    entry = backend["sizes"]["40x32"]
    assert entry["frame_split"]["parts"]["crf"]["mean_ms"] > 0
    assert entry["max_abs_diff_vs_torch"] < 1e-4
    with pytest.raises(BenchmarkError, match="crf_executor 'graph' applies to onnxruntime"):
        bench.benchmark_model(tiny_model(), backends=["torch"], sizes=[TINY], iterations=1,
                              crf_executor="graph")
    with pytest.raises(BenchmarkError, match="crf_executor must be one of"):
        bench.benchmark_model(tiny_model(), backends=["onnxruntime"], sizes=[TINY],
                              crf_executor="fused")


def test_onnxruntime_stages_are_the_runtime_backends(both_backends):
    """The bench times OnnxRuntimeBackend itself: the CRF stage is what convcrf-run runs
    (the native executor when the library is built) and the notes say so."""
    from convcrf_deploy._native import cpu_library

    notes = " ".join(both_backends["backends"]["onnxruntime"]["notes"])
    expected = "native" if cpu_library() is not None else "graph"
    assert f"CRF executor {expected}" in notes


def test_stage_calls_follow_the_backend_stages():
    from convcrf_deploy.runtime.backends.torch import TorchBackend

    backend = TorchBackend(tiny_model())
    image = np.random.default_rng(0).uniform(0, 255, (1, 3, 32, 40)).astype(np.float32)
    logits = backend.infer_unary(image)
    inputs = bench.StageInputs(image, logits, backend.infer({"image": image})["probabilities"])
    calls = bench.stage_calls(backend, inputs)
    assert set(calls) == {"unary", "crf", "full"}
    np.testing.assert_allclose(calls["crf"](), inputs.probabilities, atol=1e-6)
    np.testing.assert_array_equal(calls["unary"](), logits)
    no_crf = TorchBackend(tiny_model(crf=False))
    assert set(bench.stage_calls(no_crf, inputs)) == {"unary", "full"}


def test_missing_backend_library_is_skipped_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    reason = bench.backend_unavailable_reason("onnxruntime")
    assert reason and "pip install" in reason
    result = bench.benchmark_model(tiny_model(), backends=["torch", "onnxruntime"],
                                   sizes=[TINY], iterations=2, warmup=0)
    assert result["backends"]["onnxruntime"] == {"status": "skipped", "reason": reason}
    assert result["backends"]["torch"]["status"] == "ok"
    assert "onnxruntime: skipped" in bench.format_benchmark(result)


def test_only_missing_backends_raise(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailableError,
                       match=r'tensorrt.*pip install "/path/to/convcrf-deploy\[tensorrt\]"'):
        bench.benchmark_model(tiny_model(), backends=["tensorrt"], sizes=[TINY])


@pytest.mark.parametrize("kwargs, match", [
    ({"iterations": 0}, "iterations"), ({"batch": 0}, "batch"), ({"sizes": []}, "size"),
    ({"threads": 0}, "threads"), ({"backends": ["nope"]}, "unknown backend")])
def test_bad_arguments(kwargs, match):
    options = {"backends": ["torch"], "sizes": [TINY], **kwargs}
    with pytest.raises(BenchmarkError, match=match):
        bench.benchmark_model(tiny_model(), **options)


def test_plot_without_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = bench.benchmark_model(tiny_model(), backends=["torch"], sizes=[TINY],
                                   iterations=1, warmup=0)
    with pytest.raises(ImportError, match=r"convcrf-deploy\[plot\]"):
        bench.plot_benchmark(result, "unused.png")


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    result = bench.benchmark_model(tiny_model(), backends=["torch"], sizes=[TINY, (48, 40)],
                                   iterations=2, warmup=0)
    path = bench.plot_benchmark(result, tmp_path / "latency.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- the sweep ---------------------------------------------------------------------------------

def test_crf_with_config_keeps_the_trained_parameters():
    crf = tiny_model().crf
    with torch.no_grad():
        crf.appearance_weight.fill_(7.5)
        crf.message_weight.copy_(torch.linspace(0.1, 0.9, 5))
    new, not_copied = bench.crf_with_config(crf, crf.config.replace(filter_size=3, blur=4,
                                                                    iterations=1))
    assert not_copied == []
    assert new.config.filter_size == 3 and new.config.blur == 4
    for name, value in crf.state_dict().items():
        assert torch.equal(new.state_dict()[name], value), name


def test_sweep_rows_sorted_by_latency_with_quality_gains():
    model = tiny_model()
    result = bench.sweep_crf(model, filter_sizes=[3, 5], blurs=[2], crf_iterations=[1, 2],
                             size=(64, 48), num_frames=2, iterations=3, warmup=1)
    rows = result["rows"]
    assert len(rows) == 4
    assert {(r["filter_size"], r["iterations"]) for r in rows} == {(3, 1), (3, 2), (5, 1), (5, 2)}
    assert [r["p50_ms"] for r in rows] == sorted(r["p50_ms"] for r in rows)
    assert [r["is_model_setting"] for r in rows].count(True) == 1
    unary = result["unary"]
    for row in rows:
        check_stats(row)
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["accuracy_gain"] == pytest.approx(row["accuracy"] - unary["accuracy"])
        assert row["miou_gain"] == pytest.approx(row["miou"] - unary["miou"])
    # The fastest setting is always worth choosing; a later one only when it gains more mIoU.
    assert rows[0]["pareto"]
    for index, row in enumerate(rows[1:], 1):
        assert row["pareto"] == (row["miou_gain"] > max(r["miou_gain"] for r in rows[:index]))
    assert result["settings"]["num_frames"] == 2
    table = bench.format_sweep(result)
    assert table.count("\n") == len(rows) + 2 and "5*" in table


def test_sweep_matches_a_direct_evaluation_of_the_model_setting():
    """The model's own row equals running the model's CRF on the same frames."""
    from convcrf_deploy.metrics import SegmentationMetrics

    model = tiny_model()
    result = bench.sweep_crf(model, size=(64, 48), num_frames=2, iterations=1, warmup=0)
    (row,) = result["rows"]
    metrics = SegmentationMetrics(5)
    with torch.no_grad():
        for _, rgb, labels in bench.sweep_frames(model, "demo", size=(64, 48), num_frames=2):
            image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
            metrics.update(model(image)[0].argmax(0).numpy(), labels)
    assert row["accuracy"] == pytest.approx(metrics.result()["accuracy"])


@pytest.mark.skipif(not bench._native.cpu_library(), reason="native library not built")
def test_sweep_warm_starts_on_both_backends_and_they_agree():
    """--sweep covers the warm start on the onnxruntime backend's native CRF: with the same
    parameters it gives PyTorch's figures, cold and warm."""
    options = {"crf_iterations": [3], "warm_start_iterations": [1, 2], "size": (96, 72),
               "num_frames": 4, "iterations": 2, "warmup": 1, "threads": 1}
    rows = {}
    for backend in ("torch", "onnxruntime"):
        result = bench.sweep_crf("demo", backend=backend, **options)
        assert result["settings"]["clip"] and result["settings"]["warm_start_iterations"] == [1, 2]
        rows[backend] = {row["warm_start_iterations"]: row for row in result["rows"]}
        assert set(rows[backend]) == {None, 1, 2}
        assert [row["is_model_setting"] for row in result["rows"]].count(True) == 0  # 3 != 5
        table = bench.format_sweep(result)
        assert "warm-started from the previous frame" in table and "1 it" in table
    assert "NativeCRF" in result["settings"]["crf_executor"]
    for warm in (None, 1, 2):
        assert rows["onnxruntime"][warm]["accuracy"] == pytest.approx(
            rows["torch"][warm]["accuracy"], abs=1e-4)
    # Warm-started rows ran from the previous frame: they differ from the cold ones' labels.
    assert len({round(rows["torch"][warm]["accuracy"], 6) for warm in (None, 1, 2)}) > 1


def test_sweep_clip_frames_are_consecutive():
    model = tiny_model()
    clip = bench.sweep_frames(model, "demo", size=(64, 48), num_frames=3, clip=True)
    independent = bench.sweep_frames(model, "demo", size=(64, 48), num_frames=3)
    assert [name for name, _, _ in clip] == ["scene10000-t0", "scene10000-t1", "scene10000-t2"]
    assert [name for name, _, _ in independent] == ["scene10000", "scene10001", "scene10002"]


def test_sweep_errors():
    with pytest.raises(BenchmarkError, match="demo frames have 5 classes.*--frames"):
        bench.sweep_crf(tiny_model(num_classes=3), num_frames=1)
    with pytest.raises(BenchmarkError, match="has none"):
        bench.sweep_crf(tiny_model(crf=False), num_frames=1)
    with pytest.raises(BenchmarkError, match="filter_size"):
        bench.sweep_crf(tiny_model(), filter_sizes=[4], num_frames=1)
    with pytest.raises(BenchmarkError, match="warm-start iterations must be >= 1"):
        bench.sweep_crf(tiny_model(), warm_start_iterations=[0], num_frames=1)
    with pytest.raises(BenchmarkError, match="the sweep runs on torch or onnxruntime"):
        bench.sweep_crf(tiny_model(), backend="tensorrt", num_frames=1)


def test_sweep_on_a_labelled_folder(voc_sample):
    result = bench.sweep_crf(tiny_model(num_classes=21), frames=voc_sample, blurs=[4],
                             num_frames=2, iterations=1, warmup=0)
    assert result["settings"]["num_frames"] == 2
    assert np.isfinite(result["rows"][0]["accuracy"])


def test_crf_references_are_timed_beside_the_crf_stage():
    # Issue 14: convcrf-bench can show what our CRF saves over the F.unfold implementation
    # and over FullCRF, on the same inputs, in the same interleaved run.
    pytest.importorskip("pydensecrf.densecrf")
    result = bench.benchmark_model(tiny_model(), backends=["torch"], sizes=[TINY], iterations=2,
                                   warmup=0, crf_references=["unfold", "fullcrf", "unfold"])
    key = bench.size_key(TINY)
    assert result["settings"]["crf_references"] == ["unfold", "fullcrf"]
    crf = result["backends"]["torch"]["sizes"][key]["crf"]
    for reference in ("unfold", "fullcrf"):
        stats = result["crf_references"][reference][key]
        assert stats["count"] == 2 and stats["p50_ms"] > 0
        assert crf[f"speedup_vs_{reference}"] == pytest.approx(stats["p50_ms"] / crf["p50_ms"])
    table = bench.format_benchmark(result)
    assert "fullcrf (CPU reference)" in table and "speed-up over unfold" in table


def test_crf_reference_errors(monkeypatch):
    with pytest.raises(BenchmarkError, match="unknown CRF reference"):
        bench.benchmark_model(tiny_model(), backends=["torch"], sizes=[TINY],
                              crf_references=["densecrf"])
    with pytest.raises(BenchmarkError, match="has no CRF"):
        bench.benchmark_model(tiny_model(crf=False), backends=["torch"], sizes=[TINY],
                              crf_references=["unfold"])
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    # A missing library, not a bad argument: convcrf-bench ends with status 3 (it was 2).
    from convcrf_deploy.fullcrf import FullCRFUnavailable
    from convcrf_deploy.install import MissingDependencyError
    with pytest.raises(FullCRFUnavailable, match=r"fullcrf.*\[fullcrf\]") as info:
        bench.benchmark_model(tiny_model(), backends=["torch"], sizes=[TINY],
                              crf_references=["fullcrf"])
    assert isinstance(info.value, MissingDependencyError)
