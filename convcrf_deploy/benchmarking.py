"""Latency profiling per stage and backend, and a sweep of ConvCRF settings (``convcrf-bench``).

* :func:`benchmark_model` times a :class:`~convcrf_deploy.SegmentationModel`'s unary network,
  its ConvCRF and the whole model on PyTorch eager, ONNX Runtime and TensorRT, at several
  image sizes, and reports latency statistics and each backend's speed-up over PyTorch eager.
  It times the runtime backends of :mod:`convcrf_deploy.runtime.backends` themselves
  (``Backend.from_model``, ``infer_unary``, ``infer_crf``, ``infer``): exactly what
  ``convcrf-run`` runs, and any new backend folder without changes here.
  At batch 1 it also times a ``frame`` stage (a BGR frame through a ``Segmenter``, as
  ``convcrf-run`` runs it) and splits it into pre-processing, unary, CRF and
  post-processing; ``crf_executor=`` chooses who runs the CRF where a backend offers it.
* With ``int8_calibration=`` it also exports the model with an INT8 unary
  (:mod:`convcrf_deploy.export.quantize`, calibrated on the user's frames) and times it as the
  ``onnxruntime-int8`` row, interleaved with the fp32 ``onnxruntime`` row and PyTorch, and
  reports the INT8/fp32 unary and frame ratios and, on labelled frames (the demo scenes by
  default), the label agreement with fp32 and the accuracy of both against the ground truth
  (:func:`int8_quality`).
* :func:`sweep_crf` times the CRF at several settings (filter size, blur, mean-field
  iterations, warm starts), with the model's trained parameters, on PyTorch or on the ONNX
  Runtime backend's native CRF, and measures on labelled frames how much each setting
  improves pixel accuracy and mIoU over the unary, to pick a latency budget.

The machine may be shared and noisy: every variant of one run is timed interleaved (one call
of each variant per round), so the ratios printed by one run are comparable even when the
absolute figures drift. Results are plain JSON-serialisable dictionaries;
:func:`format_benchmark` and :func:`format_sweep` print them as tables.

Example:
    >>> result = benchmark_model("demo", backends=("torch", "onnxruntime"),
    ...                          sizes=[(320, 240)], iterations=20)
    >>> result["backends"]["onnxruntime"]["sizes"]["320x240"]["crf"]["p50_ms"]
"""
from __future__ import annotations

import itertools
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from . import _native

# The benchmark times what convcrf-run runs, so PyTorch's OpenMP threads sleep between ops as
# they do there (set before anything below imports torch; a no-op when torch is loaded).
_native.prefer_passive_openmp()

from .runtime.backends import STAGES as BACKEND_STAGES  # noqa: E402
from .runtime.backends.base import CRF_EXECUTOR_CHOICES, check_image_values  # noqa: E402
from .runtime.backends import (ALIASES, BACKENDS, BackendUnavailableError,  # noqa: E402
                                backend_class, backend_name_for, backend_spec)
from .data.folder import rgb_to_tensor  # noqa: E402
from .errors import describe_error  # noqa: E402
from .files import atomic_write  # noqa: E402
from .install import MissingDependencyError, install_hint  # noqa: E402
from .metrics import MIOU_LEGEND  # noqa: E402

#: stages timed for every backend: the unary network, the ConvCRF on its logits, both (the
#: runtime backends' own split, :data:`convcrf_deploy.runtime.backends.STAGES`).
STAGES = BACKEND_STAGES

#: statistics of a latency sample, in this order in tables.
STAT_KEYS = ("mean_ms", "p50_ms", "p90_ms", "p99_ms", "min_ms", "max_ms")

#: backend that the speed-ups are relative to.
REFERENCE_BACKEND = "torch"
#: the row of the INT8 ONNX Runtime variant (``int8_calibration=``), and the row it is
#: compared with.
INT8_ROW, INT8_BASELINE = "onnxruntime-int8", "onnxruntime"

#: CPU reference implementations the CRF stage can be compared with (``crf_references=``):
#: the pure-PyTorch ``F.unfold`` ConvCRF (the original implementation's method) and
#: Krähenbühl & Koltun's FullCRF (pydensecrf2, the paper's baseline, with the same hand-set
#: kernels as the model's CRFConfig).
CRF_REFERENCES = ("unfold", "fullcrf")

#: pip command that provides each backend (for messages).
INSTALL_HINTS = {"torch": install_hint("torch"),
                 "onnxruntime": f"pip install onnxruntime (CPU) or {install_hint('gpu')}",
                 "tensorrt": install_hint("tensorrt")}


class BenchmarkError(ValueError):
    """Invalid benchmark arguments, or no requested backend could run (message says why)."""


# ---- statistics -------------------------------------------------------------------------------

def latency_stats(samples_ms: Sequence[float], batch: int = 1) -> dict[str, float]:
    """Statistics of latency samples in milliseconds.

    Returns ``mean_ms``, ``p50_ms``, ``p90_ms``, ``p99_ms``, ``min_ms``, ``max_ms``, ``fps``
    (images per second: ``batch * 1000 / mean_ms``) and ``count``.
    """
    samples = np.asarray(samples_ms, dtype=np.float64)
    if samples.size == 0:
        raise BenchmarkError("no latency samples: iterations must be >= 1")
    p50, p90, p99 = np.percentile(samples, [50, 90, 99])
    mean = float(samples.mean())
    return {"mean_ms": mean, "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
            "min_ms": float(samples.min()), "max_ms": float(samples.max()),
            "fps": batch * 1000.0 / mean if mean > 0 else float("inf"), "count": int(samples.size)}


def time_interleaved(calls: dict[Any, Callable[[], Any]], iterations: int,
                     warmup: int) -> dict[Any, list[float]]:
    """Milliseconds of each zero-argument call, timed round-robin.

    Every call runs ``warmup`` untimed times, then ``iterations`` rounds each run every call
    once (the order reversed every other round), so slow phases of a shared machine hit all
    variants alike. Calls must return only once their work is done (GPU calls synchronise).
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    keys = list(calls)
    samples: dict[Any, list[float]] = {key: [] for key in keys}
    for round_index in range(iterations):
        for key in (keys if round_index % 2 == 0 else reversed(keys)):
            start = time.perf_counter()
            calls[key]()
            samples[key].append((time.perf_counter() - start) * 1e3)
    return samples


#: Largest benchmarked side: an 8K frame's 21-class probabilities already take 2.8 GB.
MAX_BENCH_SIDE = 8192


def size_key(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def normalize_backends(names: Iterable[str]) -> list[str]:
    """Registry names of ``names`` (aliases such as ``ort``/``trt`` accepted), in order,
    without duplicates; an unknown name, or a server's backend (triton: not built from a
    model), raises :class:`BenchmarkError` listing the choices."""
    result = []
    local = [name for name, spec in BACKENDS.items() if not spec.remote]
    for name in names:
        try:
            key = backend_name_for(None, name.strip())
        except ValueError:
            raise BenchmarkError(f"unknown backend {name!r}; choose from {', '.join(local)} "
                                 f"(aliases: {', '.join(sorted(ALIASES))})") from None
        if BACKENDS[key].remote:
            # The bench builds each backend from the model; a server's model is not built
            # here (new-user trial: --backends triton ended in a traceback).
            raise BenchmarkError(f"the {key} backend runs a model on a server, which convcrf-"
                                 f"bench cannot build from {name!r}'s model: choose from "
                                 f"{', '.join(local)}; time a Triton server with "
                                 "benchmarks/bench_triton.py")
        if key not in result:
            result.append(key)
    if not result:
        raise BenchmarkError(f"no backend given; choose from {', '.join(local)}")
    return result


def backend_unavailable_reason(name: str) -> str | None:
    """Why backend ``name`` cannot run here (missing library), or ``None`` when it can: the
    backend's own ``check_available`` (importing its module imports what it always needs)."""
    hint = INSTALL_HINTS.get(name) or install_hint(backend_spec(name).extra)
    try:
        backend_class(name).check_available()
    except MissingDependencyError as exc:
        return f"{exc} (install: `{hint}`)" if hint not in str(exc) else str(exc)
    except Exception as exc:  # noqa: BLE001 - e.g. pycuda without a GPU raises its own errors
        return describe_error(exc, f"{name} failed to initialise ({type(exc).__name__})",
                              f"install: `{hint}`")
    return None


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """CPU count, library versions and thread settings, recorded with every result."""
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.processor(),
                            "python": platform.python_version(), "cpu_count": os.cpu_count(),
                            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                            "requested_threads": threads,
                            # Other processes' load explains noisy figures on shared machines.
                            "load_average_1min": (round(os.getloadavg()[0], 2)
                                                  if hasattr(os, "getloadavg") else None),
                            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available()
                            else None}
    for module in ("onnxruntime", "onnx", "tensorrt"):
        try:
            info[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - a missing or broken optional library
            info[module] = None
    return info


# ---- the backends' stages ---------------------------------------------------------------------

@dataclass
class StageInputs:
    """The inputs of one benchmarked size, shared by all backends.

    ``image`` float32 ``[N, 3, H, W]`` RGB 0..255, ``logits`` float32 ``[N, C, H, W]`` (the
    PyTorch unary's output, the CRF stage's input), ``probabilities`` float32 ``[N, C, H, W]``
    (PyTorch's whole model, to check the other backends compute the same thing).
    """

    image: np.ndarray
    logits: np.ndarray
    probabilities: np.ndarray


def stage_calls(backend, inputs: StageInputs) -> dict[str, Callable[[], Any]]:
    """Zero-argument calls per stage of a runtime backend, as ``convcrf-run`` runs them:
    ``"full"`` = ``backend.infer``, ``"unary"`` = ``infer_unary``, ``"crf"`` = ``infer_crf``
    for the stages the backend lists in ``backend.stages``."""
    feed = {"image": inputs.image}
    # Values checked once here, as Segmenter checks none (its images come from uint8 frames):
    # the timed call is the one convcrf-run makes, without a min/max pass over the image.
    check_image_values(inputs.image)
    calls = {"unary": lambda: backend.infer_unary(inputs.image),
             "crf": lambda: backend.infer_crf(inputs.logits, inputs.image),
             "full": lambda: backend.infer(feed, check_values=False)}
    return {stage: call for stage, call in calls.items()
            if stage in backend.stages and (stage != "crf" or backend.has_crf)}


#: the stage timed through a :class:`~convcrf_deploy.runtime.Segmenter` (batch 1): a BGR
#: frame to labels, as ``convcrf-run`` processes it, split into pre-processing, unary, CRF and
#: post-processing (``frame_split``: :meth:`convcrf_deploy.runtime.stats.LatencyStats.frame_split`).
FRAME_STAGE = "frame"


def frame_call(backend, inputs: StageInputs, warmup: int = 0):
    """``(call, split)``: a zero-argument call that runs ``inputs.image[0]`` (as a BGR uint8
    frame) through a ``Segmenter`` on ``backend`` at its own size, and the
    :class:`~convcrf_deploy.runtime.stats.LatencyStats` its calls after the first ``warmup``
    fill with their timings."""
    from .runtime import Segmenter
    from .runtime.stats import LatencyStats

    segmenter = Segmenter(backend, resize="none")
    frame = np.ascontiguousarray(np.clip(inputs.image[0].transpose(1, 2, 0)[:, :, ::-1], 0, 255)
                                 .astype(np.uint8))
    split = LatencyStats()
    calls = iter(range(-warmup, 1 << 62))

    def call() -> None:
        timings = segmenter(frame).timings
        if next(calls) >= 0:
            split.add_all(timings)
    return call, split


def backend_notes(backend, fp16: bool) -> list[str]:
    """What a reader of the table needs to know about how this backend ran."""
    described = backend.describe()
    notes = []
    if backend.has_crf:
        notes.append(f"CRF executor {described['crf_executor']} "
                     f"({described['crf_executor_detail']})")
    if "providers" in described:
        notes.append(f"{described.get('flavor')} export, providers {described['providers']}, "
                     "thread spinning off")
    missing = [stage for stage in ("unary", "crf") if stage not in backend.stages]
    if missing and backend.has_crf:
        notes.append(f"the {' and '.join(missing)} stage(s) are not timed alone: this backend "
                     "runs the model as one piece")
    if fp16 and backend.name == "torch":
        notes.append("fp16 applies to the exported backends: PyTorch ran in fp32")
    return notes


# ---- the benchmark -----------------------------------------------------------------------------

def _load(model, device: str, allow_pickle: bool):
    from .runtime.backends.torch.loader import load_segmentation_model
    return load_segmentation_model(model, device, allow_pickle=allow_pickle)


def _stage_inputs(model, size: tuple[int, int], batch: int, device: str, seed: int) -> StageInputs:
    import torch

    width, height = size
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, height, width, generator=generator) * 255
    with torch.inference_mode():
        x = image.to(device)
        logits = model.forward_unary(x)
        probabilities = model(x)
    return StageInputs(image.numpy(), logits.float().cpu().numpy(),
                       probabilities.float().cpu().numpy())


def benchmark_model(model: Any = "demo", *, backends: Sequence[str] = ("torch", "onnxruntime"),
                    sizes: Sequence[tuple[int, int]] = ((320, 240), (640, 480)), batch: int = 1,
                    iterations: int = 20, warmup: int = 3, fp16: bool = False,
                    threads: int | None = None, device: str = "cpu",
                    flavor: str = "single-file", allow_pickle: bool = False,
                    crf_references: Sequence[str] = (), crf_executor: str = "auto",
                    int8_calibration: Any = None, quality_frames: str | os.PathLike = "demo",
                    num_quality_frames: int = 8,
                    log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Latency of the unary, the CRF and the whole model per backend and image size.

    Args:
        model: ``"demo"``, a checkpoint path or a :class:`~convcrf_deploy.SegmentationModel`.
        backends: any of ``"torch"``, ``"onnxruntime"``, ``"tensorrt"``. A backend whose
            library is missing is reported as skipped (with the reason); when none can run,
            :class:`~convcrf_deploy.runtime.backends.BackendUnavailableError` is raised.
        sizes: ``(width, height)`` of the random RGB images (0..255).
        batch: images per call (``[batch, 3, H, W]``).
        iterations, warmup: timed and untimed calls per stage and size.
        fp16: fp16 ONNX exports for ONNX Runtime and TensorRT (PyTorch runs fp32).
        threads: intra-op threads of PyTorch and ONNX Runtime (``None``: their defaults).
        device: PyTorch device (``"cpu"`` or ``"cuda"``); ONNX Runtime then uses the CUDA
            provider, falling back to CPU.
        flavor: ONNX flavour for ONNX Runtime (``"single-file"`` or ``"portable"``).
        allow_pickle: let ``load_model`` unpickle an unregistered unary (trusted files only).
        crf_references: any of :data:`CRF_REFERENCES`, timed on the CPU in the same
            interleaved run as the backends' CRF stage, on the same logits and images
            (``"fullcrf"`` needs the ``[fullcrf]`` extra; it runs one image at a time).
        crf_executor: who runs the CRF on backends that offer the choice (ONNX Runtime):
            ``"auto"``, ``"native"`` or ``"graph"``; the others run theirs.
        int8_calibration: a folder of calibration frames (or BGR arrays, or a
            :class:`~convcrf_deploy.export.quantize.CalibrationSet`): also time an INT8-unary
            export in ONNX Runtime (row :data:`INT8_ROW`, same flavour, fp16 and threads; the
            fp32 ``onnxruntime`` row is added when missing) and measure its label agreement
            with fp32 on ``quality_frames`` (:func:`int8_quality`).
        quality_frames, num_quality_frames: labelled frames for the INT8 comparison
            (:func:`sweep_frames`: ``"demo"`` scenes at the first size, or a labelled folder).
        log: progress messages (e.g. ``print``); silent when ``None``.

    Returns:
        ``{"model", "settings", "machine", "backends": {name: {"status": "ok", "notes",
        "sizes": {"WxH": {stage: {mean_ms, p50_ms, p90_ms, p99_ms, min_ms, max_ms, fps,
        count, speedup_vs_torch}}, "frame_split", "max_abs_diff_vs_torch"}} or {"status":
        "skipped", "reason"}}, "crf_references": {name: {"WxH": {mean_ms, ...}}}}``. The
        stages are ``unary``, ``crf``, ``full`` (``infer``) and, at batch 1, ``frame`` (a BGR
        frame through a ``Segmenter``, as ``convcrf-run`` runs it), whose ``frame_split``
        (:meth:`~convcrf_deploy.runtime.stats.LatencyStats.frame_split`) says how much of it
        is pre-processing, unary, CRF and post-processing.
        ``speedup_vs_torch`` is PyTorch's median over this backend's median, from the same
        interleaved run (``None`` when torch was not benchmarked); a backend's CRF stage also
        carries ``speedup_vs_<reference>`` for each CRF reference. With ``int8_calibration``
        also ``"int8": {"calibration", "quantization", "sizes": {"WxH": {"unary_int8_vs_fp32",
        "frame_int8_vs_fp32", "frame_int8_vs_torch", "frame_fp32_vs_torch"}}, "quality"}``
        (ratios of medians of this run; ``quality`` from :func:`int8_quality`).

    Raises:
        BenchmarkError: invalid arguments, an unknown CRF reference, or a CRF reference that
            cannot run (a model without CRF).
        convcrf_deploy.fullcrf.FullCRFUnavailable (a ``MissingDependencyError``): the
            fullcrf reference without pydensecrf, naming the extra.
        BackendUnavailableError: none of the requested backends can run here.
    """
    import torch

    say = log or (lambda message: None)
    names = normalize_backends(backends)
    if int8_calibration is not None and INT8_BASELINE not in names:
        names.append(INT8_BASELINE)        # the INT8 row is compared with fp32 ONNX Runtime
    sizes = [tuple(int(v) for v in size) for size in sizes]
    if not sizes:
        raise BenchmarkError("no image size given")
    for label, value, minimum in (("batch", batch, 1), ("iterations", iterations, 1),
                                  ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise BenchmarkError(f"{label} must be an int >= {minimum}, got {value!r}")
    if threads is not None and threads < 1:
        raise BenchmarkError(f"threads must be >= 1, got {threads}")
    if crf_executor not in CRF_EXECUTOR_CHOICES:
        raise BenchmarkError(f"crf_executor must be one of {', '.join(CRF_EXECUTOR_CHOICES)}, "
                             f"got {crf_executor!r}")
    if crf_executor != "auto" and not any("crf_executor" in backend_spec(name).options
                                          for name in names):
        able = [name for name, spec in BACKENDS.items() if "crf_executor" in spec.options]
        raise BenchmarkError(f"crf_executor {crf_executor!r} applies to {', '.join(able)}, "
                             f"which is not among the backends {', '.join(names)}")
    crf_references = list(dict.fromkeys(crf_references))
    unknown = [name for name in crf_references if name not in CRF_REFERENCES]
    if unknown:
        raise BenchmarkError(f"unknown CRF reference(s) {unknown}; choose from "
                             f"{', '.join(CRF_REFERENCES)}")
    if "fullcrf" in crf_references:
        from .fullcrf import INSTALL_HINT, FullCRFUnavailable, fullcrf_available
        if not fullcrf_available():    # a missing library (status 3), not a bad argument
            raise FullCRFUnavailable(f"the fullcrf CRF reference needs pydensecrf: "
                                     f"{INSTALL_HINT}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchmarkError(f"device={device!r} but this torch has no usable CUDA; use "
                             "device='cpu'")
    if threads is not None:
        torch.set_num_threads(threads)

    # Missing libraries are found before the (slower) model loading and exports.
    unavailable = {name: backend_unavailable_reason(name) for name in names}
    if all(unavailable.values()):
        reasons = "; ".join(f"{name}: {reason}" for name, reason in unavailable.items())
        raise BackendUnavailableError(f"none of the requested backends can run here ({reasons})")
    loaded = _load(model, device, allow_pickle)
    calibration = None
    if int8_calibration is not None and unavailable[INT8_BASELINE] is None:
        from .export.quantize import CalibrationSet, calibration_set
        calibration = (int8_calibration if isinstance(int8_calibration, CalibrationSet)
                       else calibration_set(int8_calibration, loaded.metadata))
    if crf_references and loaded.crf is None:
        raise BenchmarkError("CRF references compare CRF stages, but this model has no CRF")
    result: dict[str, Any] = {
        "model": str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__,
        "settings": {"backends": names, "sizes": [size_key(s) for s in sizes], "batch": batch,
                     "iterations": iterations, "warmup": warmup, "fp16": fp16,
                     "threads": threads, "device": device, "flavor": flavor,
                     "crf_references": crf_references, "crf_executor": crf_executor,
                     "int8_calibration": None if calibration is None else calibration.describe(),
                     "crf_config": loaded.crf.config.to_dict() if loaded.crf is not None
                     else None},
        "machine": machine_info(threads),
        "backends": {},
        "crf_references": {name: {} for name in crf_references},
    }
    load, cpus = result["machine"]["load_average_1min"], result["machine"]["cpu_count"] or 1
    if load is not None and load >= cpus - 0.5 and (threads or torch.get_num_threads()) > 1:
        # Thread pools wait at every barrier for their slowest thread; on a busy machine one
        # of them is often descheduled, which inflates multi-threaded latencies several-fold.
        result["warnings"] = [f"the machine is busy (load average {load} on {cpus} CPUs): "
                              "multi-threaded timings are unreliable; compare with --threads 1"]
        say(result["warnings"][0])
    runners: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="convcrf-bench-") as tmp:
        try:
            for name in names:
                reason = unavailable[name]
                if reason is None:
                    say(f"preparing {name} ...")
                    try:
                        # Each backend converts the model as it needs (export, engine build).
                        runners[name] = backend_class(name).from_model(
                            loaded, Path(tmp) / name, flavor=flavor, fp16=fp16, threads=threads,
                            device=device, sizes=sizes, batch=batch,
                            crf_executor=crf_executor).activate()
                    except MissingDependencyError as exc:
                        reason = str(exc)
                if reason is not None:
                    result["backends"][name] = {"status": "skipped", "reason": reason}
                    say(f"skipping {name}: {reason}")
            if calibration is not None:
                say(f"preparing {INT8_ROW} (INT8 unary, {calibration.describe()}) ...")
                runners[INT8_ROW], result["int8"] = _int8_runner(
                    loaded, Path(tmp) / INT8_ROW, calibration, flavor=flavor, fp16=fp16,
                    threads=threads)
            elif int8_calibration is not None:
                result["backends"][INT8_ROW] = {"status": "skipped",
                                                "reason": unavailable[INT8_BASELINE]}
            if not runners:
                reasons = "; ".join(f"{n}: {v['reason']}" for n, v in result["backends"].items())
                raise BackendUnavailableError(
                    f"none of the requested backends can run here ({reasons})")
            for name, runner in runners.items():
                result["backends"][name] = {"status": "ok", "notes": backend_notes(runner, fp16),
                                            "sizes": {}}
            for index, size in enumerate(sizes):
                say(f"timing {size_key(size)} (batch {batch}, {iterations} iterations) ...")
                _time_size(loaded, runners, result, size, batch, iterations, warmup, device,
                           seed=index, references=crf_references)
            if INT8_ROW in runners and INT8_BASELINE in runners:
                say("INT8 label agreement and accuracy ...")
                _int8_ratios(result)
                frames = sweep_frames(loaded, quality_frames, size=sizes[0],
                                      num_frames=num_quality_frames)
                result["int8"]["quality"] = int8_quality(
                    {name: runners[name] for name in (INT8_ROW, INT8_BASELINE, REFERENCE_BACKEND)
                     if name in runners}, frames, loaded.num_classes,
                    source=str(quality_frames))
        finally:
            for runner in runners.values():
                runner.deactivate()
    # Report backends in the order requested.
    order = [*names, *([INT8_ROW] if INT8_ROW in result["backends"] else [])]
    result["backends"] = {name: result["backends"][name] for name in order}
    return result


def _int8_runner(model, folder: Path, calibration, *, flavor: str, fp16: bool,
                 threads: int | None):
    """The ONNX Runtime backend of an INT8-unary export of ``model`` (unverified: the
    benchmark reports agreement itself), and the start of the result's ``"int8"`` entry."""
    from .export import export_onnx
    from .runtime.backends.onnxrt import OnnxRuntimeBackend

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.int8.onnx"
    report = export_onnx(model, path, flavor=flavor, fp16=fp16, part="full", verify=False,
                         int8=True, calibration=calibration)
    runner = OnnxRuntimeBackend(path, threads=threads, spinning=False).activate()
    return runner, {"calibration": calibration.describe(),
                    "calibration_frames": len(calibration),
                    "quantization": report.int8.summary(), "sizes": {}}


def _int8_ratios(result: dict[str, Any]) -> None:
    """INT8/fp32 ratios of this run's medians per size, into ``result["int8"]["sizes"]``."""
    rows = result["backends"]
    for key, int8 in rows[INT8_ROW]["sizes"].items():
        fp32 = rows[INT8_BASELINE]["sizes"].get(key, {})
        torch_row = rows.get(REFERENCE_BACKEND, {}).get("sizes", {}).get(key, {})

        def ratio(a, b, stage_a, stage_b):
            return (a[stage_a]["p50_ms"] / b[stage_b]["p50_ms"]
                    if stage_a in a and stage_b in b else None)
        result["int8"]["sizes"][key] = {
            "unary_int8_vs_fp32": ratio(int8, fp32, "unary", "unary"),
            "frame_int8_vs_fp32": ratio(int8, fp32, "full", "full"),
            "frame_int8_vs_torch": ratio(int8, torch_row, "full", "full"),
            "frame_fp32_vs_torch": ratio(fp32, torch_row, "full", "full")}


def int8_quality(runners: dict[str, Any], frames, num_classes: int,
                 source: str = "demo") -> dict[str, Any]:
    """Labels of each runner on labelled frames, against the fp32 ONNX Runtime row and the
    ground truth.

    Args:
        runners: backends by row name; :data:`INT8_ROW` and :data:`INT8_BASELINE` are needed.
        frames: ``[(name, RGB uint8 [H, W, 3], labels int64 [H, W])]`` (:func:`sweep_frames`),
            fed as they are (float32 ``[1, 3, H, W]`` RGB 0..255).

    Returns:
        ``{"frames", "source", "label_agreement", "unary_label_agreement"`` (INT8 vs fp32,
        fractions of pixels), ``"accuracy": {row: pixel accuracy}, "miou": {row: mIoU}}``
        (void pixels excluded, :class:`~convcrf_deploy.metrics.SegmentationMetrics`).
    """
    from .metrics import SegmentationMetrics

    metrics = {name: SegmentationMetrics(num_classes) for name in runners}
    agree = unary_agree = pixels = 0
    for _, rgb, truth in frames:
        image = np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32)
        outputs = {name: runner.infer({"image": image}) for name, runner in runners.items()}
        for name, out in outputs.items():
            metrics[name].update(out["labels"][0], truth)
        int8, fp32 = outputs[INT8_ROW], outputs[INT8_BASELINE]
        agree += int((int8["labels"] == fp32["labels"]).sum())
        unary_agree += int((int8["unary_labels"] == fp32["unary_labels"]).sum())
        pixels += int8["labels"].size
    results = {name: m.result() for name, m in metrics.items()}
    return {"frames": len(frames), "source": source,
            "size": "x".join(str(v) for v in frames[0][1].shape[1::-1]) if frames else None,
            "label_agreement": agree / pixels if pixels else float("nan"),
            "unary_label_agreement": unary_agree / pixels if pixels else float("nan"),
            "accuracy": {name: r["accuracy"] for name, r in results.items()},
            "miou": {name: r["miou"] for name, r in results.items()}}


def crf_reference_calls(crf, inputs: StageInputs,
                        names: Sequence[str]) -> dict[str, Callable[[], Any]]:
    """Zero-argument CPU calls of the CRF references ``names`` (see :data:`CRF_REFERENCES`)
    on ``inputs.logits`` and ``inputs.image``, with ``crf``'s configuration (and, for
    ``"unfold"``, its trained parameters)."""
    import torch

    calls: dict[str, Callable[[], Any]] = {}
    logits = torch.from_numpy(inputs.logits)
    image = torch.from_numpy(inputs.image)
    if "unfold" in names:
        reference, _ = crf_with_config(crf, crf.config)
        reference = reference.cpu()
        reference.implementation = "reference"

        def unfold() -> Any:
            with torch.inference_mode():
                return reference(logits, image)
        calls["unfold"] = unfold
    if "fullcrf" in names:
        from .fullcrf import fullcrf_inference

        rgb = [np.ascontiguousarray(np.clip(frame.transpose(1, 2, 0), 0, 255).astype(np.uint8))
               for frame in inputs.image]
        calls["fullcrf"] = lambda: [fullcrf_inference(z, frame, crf.config)
                                    for z, frame in zip(inputs.logits, rgb)]
    return calls


def _time_size(model, runners, result, size, batch, iterations, warmup, device, seed,
               references: Sequence[str] = ()) -> None:
    inputs = _stage_inputs(model, size, batch, device, seed)
    calls = {}
    splits = {}
    for name, runner in runners.items():
        for stage, call in stage_calls(runner, inputs).items():
            calls[(name, stage)] = call
        if batch == 1:
            calls[(name, FRAME_STAGE)], splits[name] = frame_call(runner, inputs, warmup)
    for name, call in crf_reference_calls(model.crf, inputs, references).items():
        calls[("reference", name)] = call
    samples = time_interleaved(calls, iterations, warmup)
    key = size_key(size)
    for name in references:
        result["crf_references"][name][key] = latency_stats(samples[("reference", name)], batch)
    for name, runner in runners.items():
        entry: dict[str, Any] = {stage: latency_stats(samples[(name, stage)], batch)
                                 for stage in (*STAGES, FRAME_STAGE) if (name, stage) in samples}
        if name in splits:
            entry["frame_split"] = splits[name].frame_split()
        probabilities = runner.infer({"image": inputs.image})["probabilities"]
        entry["max_abs_diff_vs_torch"] = float(np.abs(probabilities - inputs.probabilities).max())
        result["backends"][name]["sizes"][key] = entry
    reference = result["backends"].get(REFERENCE_BACKEND, {}).get("sizes", {}).get(key)
    for name in runners:
        entry = result["backends"][name]["sizes"][key]
        for stage in (*STAGES, FRAME_STAGE):
            if stage in entry:
                base = reference.get(stage) if reference else None
                entry[stage]["speedup_vs_torch"] = (base["p50_ms"] / entry[stage]["p50_ms"]
                                                    if base else None)
        if "crf" in entry:
            # Named apart from ``reference`` above (the torch backend's entry), which this
            # loop used to overwrite with a string (issue 21).
            for ref_name in references:
                entry["crf"][f"speedup_vs_{ref_name}"] = (
                    result["crf_references"][ref_name][key]["p50_ms"] / entry["crf"]["p50_ms"])


# ---- the CRF-setting sweep --------------------------------------------------------------------

def crf_with_config(crf, config):
    """A new ConvCRF with ``config`` and every parameter/buffer of ``crf`` whose shape fits.

    Returns ``(new_crf, names_not_copied)``; the filter size, blur and iteration count do not
    change any parameter's shape, so the trained parameters carry over entirely for those.
    """
    from .model import ConvCRF

    new = ConvCRF(config, implementation=crf.implementation)
    target = new.state_dict()
    source = crf.state_dict()
    fitting = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
    new.load_state_dict(fitting, strict=False)
    skipped = sorted(set(target) - set(fitting))
    return new.to(next(iter(source.values())).device if source else "cpu").eval(), skipped


def sweep_frames(model, frames: str | os.PathLike = "demo", *, size: tuple[int, int] = (320, 240),
                 num_frames: int = 8, clip: bool = False):
    """Labelled frames ``[(name, image uint8 [H, W, 3], labels int64 [H, W])]`` for the sweep.

    ``"demo"``: :class:`~convcrf_deploy.data.scenes.SyntheticScene` frames at ``size`` (one
    per scene seed, with exact ground truth; with ``clip``, consecutive frames of one scene,
    a video for the warm start); a folder: the first ``num_frames`` pairs of a
    :class:`~convcrf_deploy.data.folder.LabelledFolder` in its order, at their own size.
    """
    if num_frames < 1:
        raise BenchmarkError(f"num_frames must be >= 1, got {num_frames}")
    if str(frames) == "demo":
        from .data.scenes import SyntheticScene

        if model.num_classes != len(SyntheticScene.CLASS_NAMES):
            raise BenchmarkError(
                f"demo frames have {len(SyntheticScene.CLASS_NAMES)} classes "
                f"({', '.join(SyntheticScene.CLASS_NAMES)}) but the model has "
                f"{model.num_classes}; pass labelled frames of your own with --frames DIR")
        width, height = size
        samples = []
        for index in range(num_frames):
            # Scene seeds far from the ones scripts/train_demo_model.py trains on.
            seed, t = (10_000, index) if clip else (10_000 + index, index * 7)
            rgb, labels = SyntheticScene(height, width, seed=seed).render(t)
            samples.append((f"scene{seed}" + (f"-t{t}" if clip else ""), rgb,
                            labels.astype(np.int64)))
        return samples
    from .data.folder import LabelledFolder

    folder = LabelledFolder(frames, num_classes=model.num_classes)
    return [(s.name, s.image, s.labels) for s in itertools.islice(iter(folder), num_frames)]


#: CRF executors the sweep runs, by backend: what each backend runs the CRF with.
SWEEP_BACKENDS = {
    "torch": "ConvCRF in PyTorch (its native CPU executor)",
    "onnxruntime": "the onnxruntime backend's native CRF (NativeCRF: NumPy and the native "
                   "library, no torch), with the same parameters",
}


def _sweep_executor(backend: str, threads: int | None):
    """``(build, as_input, labels)`` for the sweep on ``backend``: ``build(crf)`` -> the CRF
    callable (``crf(logits, image, initial_q=, ...)``) with ``crf``'s configuration and
    parameters; ``as_input(tensor)`` -> its input type; ``labels(q)`` -> ``[H, W]`` labels."""
    if backend not in SWEEP_BACKENDS:
        raise BenchmarkError(f"the sweep runs on {' or '.join(SWEEP_BACKENDS)}, not {backend!r}")
    if backend == "torch":
        return (lambda crf: crf), (lambda t: t), (lambda q: q[0].argmax(0).numpy())
    from .crf.native import NativeCRF, NativeCRFUnavailable, argmax_classes

    def build(crf):
        state = {name: value.detach().cpu().numpy() for name, value in crf.state_dict().items()}
        try:
            return NativeCRF(crf.config, state, threads)
        except NativeCRFUnavailable as exc:
            raise BenchmarkError(f"the onnxruntime backend's native CRF cannot run: {exc}") \
                from exc
    return build, (lambda t: t.numpy()), (lambda q: argmax_classes(q)[0])


def sweep_crf(model: Any = "demo", *, filter_sizes: Sequence[int] | None = None,
              blurs: Sequence[int] | None = None, crf_iterations: Sequence[int] | None = None,
              warm_start_iterations: Sequence[int] | None = None, warm_start_mix: float = 0.5,
              backend: str = "torch", frames: str | os.PathLike = "demo",
              size: tuple[int, int] = (320, 240), num_frames: int = 8, iterations: int = 10,
              warmup: int = 2, threads: int | None = None, allow_pickle: bool = False,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """CRF latency and quality gain over the unary for every combination of settings.

    Args:
        model: ``"demo"``, a checkpoint path or a SegmentationModel with a ConvCRF.
        filter_sizes, blurs, crf_iterations: values to combine (``None``: the model's own).
        warm_start_iterations: also each setting warm-started (video: mean-field from the
            previous frame's result, :class:`~convcrf_deploy.crf.WarmStartMeanField`) with
            these iteration counts; the frames are then a clip (consecutive demo frames, or
            the folder's frames in order) for every row, and latency is the mean over it.
        warm_start_mix: weight of the previous result in a warm start (0..1).
        backend: whose CRF runs, one of :data:`SWEEP_BACKENDS` (the unary is PyTorch's).
        frames: ``"demo"`` (SyntheticScene frames) or a labelled folder (LabelledFolder).
        size: ``(width, height)`` of the latency input (and of demo frames); frames of
            another size are resized to it.
        num_frames: frames used for the quality figures.
        iterations, warmup: timed and untimed CRF calls per setting (interleaved).
        threads: PyTorch intra-op threads (and the native CRF's).

    Returns:
        ``{"model", "settings", "machine", "unary": {"accuracy", "miou"}, "rows": [...]}``;
        rows sorted by CRF median latency, each with ``filter_size``, ``blur``,
        ``iterations``, ``warm_start_iterations`` (``None``: cold), the latency statistics
        (``*_ms``, ``fps``), ``accuracy``, ``miou``, ``accuracy_gain`` and ``miou_gain`` (CRF
        minus unary, fractions), ``pareto`` (no faster setting has as high an mIoU gain),
        ``is_model_setting`` and ``parameters_not_copied``.

    Raises:
        BenchmarkError: invalid settings or arguments; a model without CRF; the onnxruntime
            backend's native CRF cannot run (library not built).
    """
    import cv2
    import torch

    from .crf.warm_start import WarmStartMeanField
    from .metrics import SegmentationMetrics

    say = log or (lambda message: None)
    if threads is not None:
        if threads < 1:
            raise BenchmarkError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    for label, value, minimum in (("iterations", iterations, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise BenchmarkError(f"{label} must be an int >= {minimum}, got {value!r}")
    warm_counts = sorted(set(int(k) for k in warm_start_iterations or ()))
    if any(k < 1 for k in warm_counts):
        raise BenchmarkError(f"warm-start iterations must be >= 1, got {warm_start_iterations}")
    if not 0.0 <= warm_start_mix <= 1.0:
        raise BenchmarkError(f"warm_start_mix must be in 0..1, got {warm_start_mix}")
    build, as_input, labels_of = _sweep_executor(backend, threads)
    loaded = _load(model, "cpu", allow_pickle)
    if loaded.crf is None:
        raise BenchmarkError("the sweep varies the model's ConvCRF, but this model has none")
    base = loaded.crf.config
    grid = list(itertools.product(list(filter_sizes or [base.filter_size]),
                                  list(blurs or [base.blur]),
                                  list(crf_iterations or [base.iterations])))
    crfs = {}  # (filter, blur, iterations, warm-start iterations or None) -> (crf, skipped)
    for filter_size, blur, count in grid:
        try:
            config = base.replace(filter_size=int(filter_size), blur=int(blur),
                                  iterations=int(count))
        except ValueError as exc:
            raise BenchmarkError(f"invalid CRF setting filter_size={filter_size}, blur={blur}, "
                                 f"iterations={count}: {exc}") from exc
        crf, skipped = crf_with_config(loaded.crf, config)
        setting = (config.filter_size, config.blur, config.iterations)
        crfs[(*setting, None)] = (build(crf), skipped)
        for k in warm_counts:
            crfs[(*setting, k)] = (WarmStartMeanField(crfs[(*setting, None)][0], k,
                                                      warm_start_mix), skipped)
    samples = sweep_frames(loaded, frames, size=size, num_frames=num_frames,
                           clip=bool(warm_counts))
    if not samples:
        raise BenchmarkError(f"no labelled frames in {str(frames)!r}")

    def reset_warm_starts() -> None:
        for crf, _ in crfs.values():
            if isinstance(crf, WarmStartMeanField):
                crf.reset()

    say(f"quality on {len(samples)} frame(s), {len(crfs)} setting(s), CRF: "
        f"{SWEEP_BACKENDS[backend]} ...")
    unary_metrics = SegmentationMetrics(loaded.num_classes)
    crf_metrics = {key: SegmentationMetrics(loaded.num_classes) for key in crfs}
    with torch.inference_mode():
        for _, rgb, labels in samples:  # in order: a clip for the warm starts
            image = rgb_to_tensor(rgb)
            logits = loaded.forward_unary(image)
            unary_metrics.update(logits[0].argmax(0).numpy(), labels)
            for key, (crf, _) in crfs.items():
                crf_metrics[key].update(labels_of(crf(as_input(logits), as_input(image))),
                                        labels)
        reset_warm_starts()

        say(f"CRF latency at {size_key(size)} ...")
        inputs = []  # the latency input: the first frame, or the clip for warm starts
        for _, rgb, _ in samples[:len(samples) if warm_counts else 1]:
            if rgb.shape[:2] != (size[1], size[0]):
                rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)
            image = rgb_to_tensor(rgb)
            inputs.append((as_input(loaded.forward_unary(image)), as_input(image)))

        def crf_call(crf):
            frame = itertools.cycle(inputs)
            return lambda: crf(*next(frame))
        timings = time_interleaved({key: crf_call(crf) for key, (crf, _) in crfs.items()},
                                   iterations, warmup)

    unary = unary_metrics.result()
    rows = []
    model_key = (base.filter_size, base.blur, base.iterations, None)
    for key, (_, skipped) in crfs.items():
        quality = crf_metrics[key].result()
        rows.append({"filter_size": key[0], "blur": key[1], "iterations": key[2],
                     "warm_start_iterations": key[3],
                     **latency_stats(timings[key]),
                     "accuracy": quality["accuracy"], "miou": quality["miou"],
                     "accuracy_gain": quality["accuracy"] - unary["accuracy"],
                     "miou_gain": quality["miou"] - unary["miou"],
                     "is_model_setting": key == model_key, "parameters_not_copied": skipped})
    rows.sort(key=lambda row: row["p50_ms"])
    # The settings worth choosing: no other setting is both faster and at least as good.
    best_gain = float("-inf")
    for row in rows:
        gain = row["miou_gain"] if np.isfinite(row["miou_gain"]) else float("-inf")
        row["pareto"] = gain > best_gain
        best_gain = max(best_gain, gain)
    return {"model": str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__,
            "settings": {"frames": str(frames), "num_frames": len(samples), "size": size_key(size),
                         "iterations": iterations, "warmup": warmup, "threads": threads,
                         "backend": backend, "crf_executor": SWEEP_BACKENDS[backend],
                         "warm_start_iterations": warm_counts,
                         "warm_start_mix": warm_start_mix if warm_counts else None,
                         "clip": bool(warm_counts), "model_crf_config": base.to_dict()},
            "machine": machine_info(threads),
            "unary": {"accuracy": unary["accuracy"], "miou": unary["miou"]},
            "rows": rows}


# ---- output ------------------------------------------------------------------------------------

def _table(rows: list[list[str]], right_from: int) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i < right_from else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_benchmark(result: dict[str, Any]) -> str:
    """The benchmark as a text table (backend x size x stage), then notes and skipped backends."""
    header = ["backend", "size", "stage", "mean", "p50", "p90", "p99", "min", "max", "FPS",
              "vs torch"]
    rows = [header]
    notes = []
    for name, backend in result["backends"].items():
        if backend["status"] != "ok":
            notes.append(f"{name}: skipped: {backend['reason']}")
            continue
        notes.extend(f"{name}: {note}" for note in backend.get("notes", []))
        for key, entry in backend["sizes"].items():
            for stage in (*STAGES, FRAME_STAGE):
                if stage not in entry:
                    if stage != FRAME_STAGE:  # the frame stage runs at batch 1 only
                        rows.append([name, key, stage] + ["-"] * 8)
                    continue
                s = entry[stage]
                speedup = s.get("speedup_vs_torch")
                rows.append([name, key, stage] + [f"{s[k]:.2f}" for k in STAT_KEYS]
                            + [f"{s['fps']:.1f}", "-" if speedup is None else f"{speedup:.2f}x"])
            diff = entry.get("max_abs_diff_vs_torch")
            if diff is not None:
                notes.append(f"{name} {key}: max |probabilities - torch| = {diff:.2e}"
                             + (" (on the random timing input, unlike any calibration frame; "
                                "INT8 is judged by label agreement below)"
                                if name == INT8_ROW else ""))
    for reference, by_size in result.get("crf_references", {}).items():
        for key, s in by_size.items():
            rows.append([f"{reference} (CPU reference)", key, "crf"]
                        + [f"{s[k]:.2f}" for k in STAT_KEYS] + [f"{s['fps']:.1f}", "-"])
            speedups = [f"{name} {entry['sizes'][key]['crf'][f'speedup_vs_{reference}']:.1f}x"
                        for name, entry in result["backends"].items()
                        if entry["status"] == "ok" and "crf" in entry["sizes"].get(key, {})]
            if speedups:
                notes.append(f"CRF stage at {key}, speed-up over {reference} (its median / the "
                             f"backend's): {', '.join(speedups)}")
    notes.extend(format_int8(result))
    settings = result["settings"]
    machine = result.get("machine", {})
    title = (f"latency in ms (batch {settings['batch']}, {settings['iterations']} iterations "
             f"interleaved, threads {settings['threads'] or 'default'}, device "
             f"{settings['device']}, {machine.get('cpu_count')} CPUs, load average "
             f"{machine.get('load_average_1min')}); 'vs torch' = PyTorch eager median / "
             "backend median")
    notes.extend(f"warning: {warning}" for warning in result.get("warnings", []))
    return "\n".join([title, _table(rows, 3), *_format_frame_split(result), *notes])


def _format_frame_split(result: dict[str, Any]) -> list[str]:
    """The table of where a frame's time goes, per backend and size (empty at batch > 1)."""
    rows = [["backend", "size", "frame ms", "pre %", "unary %", "CRF %", "other %", "post %"]]
    for name, backend in result["backends"].items():
        for key, entry in backend.get("sizes", {}).items():
            split = entry.get("frame_split")
            if not split:
                continue
            parts = split["parts"]
            cells = [parts[part]["percent"] if part in parts else None
                     for part in ("preprocess", "unary", "crf", "other", "postprocess")]
            if "inference" in parts:  # the backend runs the model in one piece
                cells[3] = parts["inference"]["percent"]
            rows.append([name, key, f"{split['frame_ms']:.2f}"]
                        + ["-" if cell is None else f"{cell:.1f}" for cell in cells])
    if len(rows) == 1:
        return []
    return ["", "frame time (the 'frame' stage: a BGR frame to labels through Segmenter, as "
            "convcrf-run runs it), mean ms and its split; 'other' = the rest of the backend's "
            "call (label argmax, copies; all of it where the backend does not time the unary "
            "and the CRF apart)", _table(rows, 2)]


def format_int8(result: dict[str, Any]) -> list[str]:
    """The INT8 comparison of :func:`benchmark_model` as text lines (none without it)."""
    int8 = result.get("int8")
    if not int8:
        return []

    def x(value):
        return "-" if value is None else f"{value:.2f}x"
    lines = [f"{INT8_ROW}: {int8['quantization']}"]
    for key, r in int8.get("sizes", {}).items():
        lines.append(f"INT8 at {key} (medians of this run): unary INT8/fp32 "
                     f"{x(r['unary_int8_vs_fp32'])}, frame INT8/fp32 {x(r['frame_int8_vs_fp32'])}; "
                     f"frame vs PyTorch fp32: INT8 {x(r['frame_int8_vs_torch'])}, fp32 "
                     f"{x(r['frame_fp32_vs_torch'])}")
    quality = int8.get("quality")
    if quality:
        accuracy = quality["accuracy"]
        gap = (100 * (accuracy[INT8_ROW] - accuracy[INT8_BASELINE])
               if INT8_ROW in accuracy and INT8_BASELINE in accuracy else float("nan"))
        others = ", ".join(f"{name} {_percent(value)} %" for name, value in accuracy.items())
        lines.append(f"INT8 on {quality['frames']} labelled frame(s) of {quality['source']} at "
                     f"{quality['size']}: labels agree with fp32 on "
                     f"{_percent(quality['label_agreement'])} % (unary labels "
                     f"{_percent(quality['unary_label_agreement'])} %); pixel accuracy vs ground "
                     f"truth: {others} (INT8 - fp32: {gap:+.2f} points)")
    return lines


def _percent(value: float) -> str:
    return "-" if value is None or np.isnan(value) else f"{100 * value:.2f}"


def _gain(value: float) -> str:
    return "-" if value is None or np.isnan(value) else f"{100 * value:+.2f}"


def format_sweep(result: dict[str, Any]) -> str:
    """The sweep as a table sorted by CRF latency; ``*`` marks the model's own setting and
    ``<`` the settings no faster setting matches in mIoU gain (the ones worth choosing)."""
    rows = [["filter", "blur", "iter", "warm", "p50 ms", "mean ms", "p99 ms", "acc %",
             "acc gain", "mIoU VOC %", "mIoU gain"]]
    for row in result["rows"]:
        mark = "*" if row["is_model_setting"] else ""
        warm = row.get("warm_start_iterations")
        rows.append([f"{row['filter_size']}{mark}", str(row["blur"]), str(row["iterations"]),
                     "-" if warm is None else f"{warm} it",
                     f"{row['p50_ms']:.2f}", f"{row['mean_ms']:.2f}", f"{row['p99_ms']:.2f}",
                     _percent(row["accuracy"]), _gain(row["accuracy_gain"]),
                     _percent(row["miou"]), _gain(row["miou_gain"]) + (" <" if row["pareto"]
                                                                      else "  ")])
    settings, unary = result["settings"], result["unary"]
    warm = (f"; warm = warm-started from the previous frame (mix {settings['warm_start_mix']}) "
            "with that many iterations instead of 'iter', on a clip of consecutive frames"
            if settings.get("warm_start_iterations") else "")
    title = (f"CRF settings on {settings['num_frames']} frame(s) of {settings['frames']}, "
             f"latency at {settings['size']}; CRF: "
             f"{settings.get('crf_executor', SWEEP_BACKENDS['torch'])}{warm}; unary alone: "
             f"accuracy {_percent(unary['accuracy'])} %, mIoU VOC {_percent(unary['miou'])} %; "
             "gains in percentage points; * = the model's setting; < = no faster setting "
             f"gains as much mIoU; {MIOU_LEGEND['miou']}")
    return "\n".join([title, _table(rows, 0)])


#: Formats :func:`plot_benchmark` writes (matplotlib's, chosen by the suffix).
PLOT_SUFFIXES = (".png", ".svg", ".pdf", ".jpg", ".jpeg", ".eps", ".ps", ".tif", ".tiff",
                 ".webp")


def plot_benchmark(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """Bar chart of the median latency per stage and backend, one panel per size (PNG).

    Raises:
        ImportError: matplotlib is missing (``install_hint("plot")``).
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(f"--plot needs matplotlib ({exc}); install it with "
                          f"{install_hint('plot')}") from exc
    ran = {n: b for n, b in result["backends"].items() if b["status"] == "ok"}
    sizes = result["settings"]["sizes"]
    figure, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), squeeze=False)
    width = 0.8 / max(len(ran), 1)
    for axis, key in zip(axes[0], sizes):
        for index, (name, backend) in enumerate(ran.items()):
            entry = backend["sizes"].get(key, {})
            values = [entry[stage]["p50_ms"] if stage in entry else 0.0 for stage in STAGES]
            errors = [[entry[s]["p50_ms"] - entry[s]["min_ms"] if s in entry else 0.0
                       for s in STAGES],
                      [entry[s]["p90_ms"] - entry[s]["p50_ms"] if s in entry else 0.0
                       for s in STAGES]]
            positions = np.arange(len(STAGES)) + (index - (len(ran) - 1) / 2) * width
            axis.bar(positions, values, width, yerr=errors, capsize=3, label=name)
        axis.set_xticks(np.arange(len(STAGES)), STAGES)
        axis.set_ylabel("median latency [ms] (whiskers: min to p90)")
        axis.set_title(f"{key}, batch {result['settings']['batch']}")
        axis.legend()
    figure.tight_layout()
    path = Path(path)
    with atomic_write(path) as temporary:
        figure.savefig(temporary, dpi=100, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(figure)
    return path


__all__ = ["STAGES", "STAT_KEYS", "BenchmarkError", "StageInputs", "stage_calls", "benchmark_model",
           "sweep_crf", "sweep_frames", "SWEEP_BACKENDS", "FRAME_STAGE", "frame_call",
           "crf_with_config", "latency_stats", "time_interleaved",
           "format_benchmark", "format_sweep", "format_int8", "int8_quality", "plot_benchmark",
           "PLOT_SUFFIXES",
           "normalize_backends", "backend_unavailable_reason", "machine_info"]
