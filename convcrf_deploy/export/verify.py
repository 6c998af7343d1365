"""Verification of an exported graph: ONNX checker, strict shape inference, parity with PyTorch.

* :func:`check_graph`: ``onnx.checker.check_model(full_check=True)`` and strict shape
  inference, with the schemas of our two ops registered (attributes validated, shapes
  propagated through them).
* :func:`run_graph`: evaluate a graph on CPU in ONNX Runtime: the portable and single-file
  flavours as they are (the single-file flavour's function bodies: what a plain ONNX Runtime
  runs), the plugin flavour with our custom-op library ``libconvcrf_ort_ops`` registered
  (docs/onnxruntime.md) or, where that library is not installed, with the single-file
  flavour's standard-op function bodies grafted onto its ConvCRF nodes (the same nodes, wired
  the same way: what is checked is the graph, and the function bodies are our op
  implementation in standard ONNX). Both take seconds and memory proportional to one
  inference. The stock ``onnx.reference.ReferenceEvaluator`` with our ``OpRun``
  implementations stays available (``runtime="reference"``) but is never chosen by itself:
  it needed minutes and gigabytes at 480x640 and was OOM-killed above 23 GB on a DeepLabV3+
  at 256x320. No standard op is patched: the exported graph avoids constructs runtimes compute
  differently (:mod:`.rewrites`).
* :func:`verify_export`: both, plus a comparison with the reference model (PyTorch, or an ONNX
  unary run in ONNX Runtime + our PyTorch ConvCRF) on a random image at an odd size (61 x 83
  by default: odd sizes exercise the partial blur windows and the cropped upsampling). A full
  graph's unary and CRF are also compared on their own (the graph's logits against the
  reference's; the graph's CRF fed the reference's logits against the reference CRF), so that
  a failure names the part that failed. Memory stays within a budget
  (:data:`MEMORY_BUDGET`, 2 GiB): large verification sizes run at batch 1 and, for graphs of
  dynamic size, at a smaller size that fits; the peak memory is measured and reported.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np
import onnx

from ..crf.native import argmax_classes
from ..errors import describe_error
from . import onnx_ops
from ..ort_session import inference_session

#: Parity thresholds, keyed by fp16: an error bound on |p_onnx - p_torch| (probabilities;
#: logits for part="unary", scaled by max(1, max |logits|)) and the fraction of pixels whose
#: argmax agrees. fp32 bounds the maximum error at 1e-3: ONNX Runtime and PyTorch sum in other
#: orders (k*k window, classes, five iterations), and on random images the maximum grows with
#: the image (demo model: 4.8e-7 at 61x83, 6.2e-5 at 375x500, 1.1e-4 at 480x640, 3.0e-4 at
#: 4096x4096, labels agreeing 100 %); the tests hold the default 61x83 check to < 1e-4. fp16 bounds the 99.9th percentile and reports
#: the maximum: fp16 rounds the unary logits to 2^-11 relative (~1e-2 absolute at the demo's
#: logit magnitudes), and on the few pixels where two classes are nearly tied the mean-field
#: iterations amplify that into probability differences of 0.02-0.13 (demo model, synthetic
#: scene, 480x640) while the 99.99th percentile stays <= 0.017 and >= 99.99 % of the labels
#: agree; on i.i.d. noise images (no real network sees those) the maximum reaches 0.6.
#: Any fp16 (``fp16=True`` or ``"crf"``) uses the fp16 bounds.
TOLERANCE = {False: 1e-3, True: 2e-2}
ERROR_STATISTIC = {False: "max", True: "p99.9"}
MIN_LABEL_AGREEMENT = {False: 0.999, True: 0.999}
PARITY_SIZE = (61, 83)
#: fp16 exports are checked at a deployment size on realistic input (the synthetic scene).
FP16_PARITY_SIZE = (480, 640)

#: Memory the parity run may take (bytes): the verification size and batch are chosen so that
#: :func:`estimated_memory` stays within it.
MEMORY_BUDGET = 2 * 1024 ** 3
#: Bytes per pixel per image the estimate allows for the unary network's own activations in
#: ONNX Runtime and PyTorch (which free them layer by layer). Measured: a DeepLabV3+ with a
#: ResNet-18-shaped encoder (64..512 channels, 21 classes) added 1918 MiB verifying batch 1 at
#: 1024x1280, ~800 bytes per pixel beyond the class tensors; the demo's FastFCN far less.
UNARY_BYTES_PER_PIXEL = 1024
#: Float tensors of ``C x H x W`` alive at once at the peak of the parity run: the reference
#: logits and probabilities, the graph's logits and probabilities, and ONNX Runtime's
#: mean-field buffers (unary term, full-resolution Q, upsampled messages).
_CLASS_TENSORS = 8
#: The smallest side the verification shrinks a dynamic graph's size to.
MIN_VERIFY_SIDE = 32


class VerificationError(RuntimeError):
    """An exported graph is invalid (checker or shape inference failed)."""


# ---- peak memory ---------------------------------------------------------------------------

@dataclass
class MemoryUse:
    """Resident memory (RSS) of this process during a verification, in bytes.

    Attributes:
        peak: the largest RSS while it ran.
        before: the RSS when it started (the model, the libraries).
        method: how ``peak`` was measured: ``"VmHWM"`` (Linux: the kernel's high-water mark,
            reset to the current RSS before the verification through ``/proc/self/clear_refs``;
            exact) or ``"ru_maxrss"`` (the whole process's peak so far: an upper bound).
    """

    peak: int
    before: int
    method: str

    @property
    def added(self) -> int:
        """What the verification added to the RSS it started with (at its peak)."""
        return max(0, self.peak - self.before)

    def summary(self) -> str:
        mib = 1024 ** 2
        bound = "" if self.method == "VmHWM" else " (an upper bound: the process's peak so far)"
        return (f"peak memory {self.peak / mib:.0f} MiB RSS during verification{bound}, "
                f"{self.added / mib:.0f} MiB above the {self.before / mib:.0f} MiB before it")


def _proc_status(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _ru_maxrss() -> int | None:
    try:
        import resource
    except ImportError:   # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024   # bytes on macOS, KiB elsewhere


class PeakMemory:
    """Context manager measuring the peak RSS of this process while its block runs
    (:class:`MemoryUse` in :attr:`result`, ``None`` where the platform tells nothing).

    On Linux the kernel's high-water mark (``VmHWM``) is reset to the current RSS on entry by
    writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0; it touches nothing else), so
    ``VmHWM`` on exit is the peak of the block alone. Elsewhere (or when that write is refused)
    ``ru_maxrss`` is reported, the process's peak so far: an upper bound. Resetting the mark
    also lowers what ``ru_maxrss`` reports later in this process.
    """

    def __enter__(self) -> "PeakMemory":
        self.result: MemoryUse | None = None
        self._before = _proc_status("VmRSS")
        self._reset = False
        if self._before is not None:
            try:
                with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
                    handle.write("5")
                self._reset = True
            except OSError:
                pass
        return self

    def __exit__(self, *exc) -> None:
        peak = _proc_status("VmHWM") if self._reset else None
        method = "VmHWM"
        if peak is None:
            peak, method = _ru_maxrss(), "ru_maxrss"
        if peak is not None:
            self.result = MemoryUse(peak=peak, before=self._before or 0, method=method)


def estimated_memory(batch: int, channels: int, height: int, width: int) -> int:
    """Bytes the parity run of a graph with ``channels`` classes needs at ``batch`` x
    ``height`` x ``width`` (beyond the model itself): :data:`_CLASS_TENSORS` float tensors of
    ``C x H x W``, the images and labels, and :data:`UNARY_BYTES_PER_PIXEL` for the unary."""
    per_pixel = 4 * channels * _CLASS_TENSORS + 3 * 4 * 3 + 3 * 8 + UNARY_BYTES_PER_PIXEL
    return batch * height * width * per_pixel


@dataclass(frozen=True)
class VerificationPlan:
    """Where the parity run happens (:func:`plan_verification`): ``size`` and ``batch``, or
    ``size=None`` when it cannot run within the budget; ``note`` says what was changed."""

    size: tuple[int, int] | None
    batch: int
    note: str = ""


def plan_verification(size: tuple[int, int], batch: int, channels: int, dynamic: bool,
                      budget: int = MEMORY_BUDGET, pad_multiple: int = 1,
                      min_size: int = 1) -> VerificationPlan:
    """The size and batch to verify at within ``budget`` bytes (:func:`estimated_memory`):
    ``size`` at ``batch`` when it fits; else batch 1; else, for a graph of dynamic size, the
    largest size of the same aspect ratio that fits and meets the unary's input constraints
    (``pad_multiple``, ``min_size``; without them each side keeps the largest power of two up
    to 32 that divides both asked sides), as the graph computes the same function at every
    size, so a smaller image checks it as well, except for effects of the size itself; else
    (a fixed-size graph) no parity run."""
    height, width = size
    mib = 1024 ** 2
    if estimated_memory(batch, channels, height, width) <= budget:
        return VerificationPlan(size, batch)
    need = estimated_memory(1, channels, height, width)
    if need <= budget:
        return VerificationPlan(size, 1, f"batch 1 (batch {batch} would need "
                                         f"~{estimated_memory(batch, channels, height, width) / mib:.0f} "
                                         f"MiB, over the {budget / mib:.0f} MiB budget)")
    if not dynamic:
        return VerificationPlan(None, 1, f"the graph's fixed size {height}x{width} needs "
                                         f"~{need / mib:.0f} MiB to verify, over the "
                                         f"{budget / mib:.0f} MiB budget")
    # Keep what the asked size is a multiple of (up to 32): networks of output stride 16 or 32
    # run only at such sizes, and the size asked for is one the network runs at.
    multiple = pad_multiple if pad_multiple > 1 else \
        min(32, math.gcd(height, width) & -math.gcd(height, width))
    floor = -(-max(MIN_VERIFY_SIDE, min_size) // multiple) * multiple
    scale = math.sqrt(budget / need)
    smaller = tuple(max(floor, int(side * scale) // multiple * multiple)
                    for side in (height, width))
    return VerificationPlan(smaller, 1, f"at {smaller[0]}x{smaller[1]}, batch 1, instead of "
                                        f"{height}x{width} (which needs ~{need / mib:.0f} MiB, "
                                        f"over the {budget / mib:.0f} MiB budget; the graph's "
                                        "size is dynamic)")


# ---- error statistics without full-size temporaries -----------------------------------------

class ErrorStatistics:
    """The maximum and a quantile (exact, as ``np.quantile``'s default linear interpolation)
    of absolute differences fed in chunks, and how many were not finite (NaN/inf on either
    side count as not finite; they make the maximum NaN). Memory: the chunk plus the largest
    ``(1 - q) * count`` differences."""

    def __init__(self, count: int, quantile: float = 0.999):
        self.count, self.quantile = count, quantile
        position = quantile * (count - 1)
        self._low = int(math.floor(position))
        self._fraction = position - self._low
        self._keep = count - self._low           # the top values that hold both neighbours
        self._top = np.empty(0, np.float32)
        self.max = 0.0
        self.nonfinite = 0
        self.seen = 0

    def add(self, got: np.ndarray, want: np.ndarray, scale: float = 1.0) -> None:
        error = np.abs(got.astype(np.float32) - want.astype(np.float32)).ravel()
        if scale != 1.0:
            error /= scale
        bad = ~np.isfinite(error)
        if bad.any():
            self.nonfinite += int(bad.sum())
            error = np.where(bad, np.float32(np.inf), error)
        self.seen += error.size
        self.max = max(self.max, float(error.max())) if error.size else self.max
        if error.size > self._keep:
            error = np.partition(error, error.size - self._keep)[error.size - self._keep:]
        self._top = np.concatenate([self._top, error])
        if self._top.size > 4 * self._keep:
            cut = self._top.size - self._keep
            self._top = np.partition(self._top, cut)[cut:]

    def value(self) -> float:
        """The quantile of all differences added (``count`` of them)."""
        if self.seen != self.count:
            raise ValueError(f"ErrorStatistics: {self.seen} values added, {self.count} expected")
        top = np.sort(self._top)[-self._keep:]
        low = float(top[0])
        high = float(top[1]) if top.size > 1 else low
        if math.isinf(low) or math.isinf(high):
            return math.inf
        return low + (high - low) * self._fraction

    @property
    def max_error(self) -> float:
        return math.nan if self.nonfinite else self.max


def _compare(got: np.ndarray, want: np.ndarray, scale: float = 1.0
             ) -> tuple[float, float, float, int]:
    """``(max error, 99.9th percentile, argmax agreement, non-finite count)`` of two
    ``[N, C, H, W]`` arrays, one channel image at a time (no full-size temporaries)."""
    if got.shape != want.shape:
        raise VerificationError(f"ONNX shape {got.shape} != reference {want.shape}")
    stats = ErrorStatistics(got.size)
    for n in range(got.shape[0]):
        for c in range(got.shape[1]):
            stats.add(got[n, c], want[n, c], scale)
    agreement = float(np.mean([(_argmax(got[n]) == _argmax(want[n])).mean()
                               for n in range(got.shape[0])]))
    return stats.max_error, stats.value(), agreement, stats.nonfinite


def _argmax(x: np.ndarray) -> np.ndarray:
    """``[C, H, W] -> [H, W]``: :func:`~convcrf_deploy.crf.native.argmax_classes` on one image
    (per image: no ``[N, H, W]`` temporaries beside the graph's outputs)."""
    return argmax_classes(x[None])[0]


@dataclass
class PartResult:
    """One part of a full graph compared on its own: ``unary`` (the graph's logits against
    the reference's, error scaled by ``max(1, max |logits|)``) or ``crf`` (the graph's CRF fed
    the reference's logits, against the reference CRF; probabilities)."""

    name: str
    max_abs_error: float
    p999_abs_error: float
    label_agreement: float
    nonfinite: int = 0

    def summary(self) -> str:
        what = "logits (scaled)" if self.name == "unary" else "probabilities"
        bad = f", {self.nonfinite} values not finite" if self.nonfinite else ""
        return (f"{self.name} alone: {what} error max {self.max_abs_error:.3g}, 99.9th "
                f"percentile {self.p999_abs_error:.3g}, labels agree on "
                f"{100 * self.label_agreement:.3f} %{bad}")


@dataclass
class VerificationResult:
    """Outcome of :func:`verify_export`."""

    backend: str
    size: tuple[int, int]
    batch: int
    compared: str                   # "probabilities" or "logits"
    max_abs_error: float
    label_agreement: float
    tolerance: float
    min_label_agreement: float
    unary_label_agreement: float | None = None
    p999_abs_error: float | None = None     # 99.9th percentile of the absolute error
    error_statistic: str = "max"            # which of the two the tolerance bounds
    input_kind: str = "random image"
    reference: str = "PyTorch"
    fp16: bool | str = False                # as exported: False, True (whole graph), "crf"
    nonfinite: int = 0                      # values of the compared output not finite
    unary: PartResult | None = None         # the parts on their own (full graphs with a CRF)
    crf: PartResult | None = None
    memory: MemoryUse | None = None
    plan_note: str = ""                     # what the memory budget changed (size, batch)
    skipped: str = ""                       # why the parity run did not happen at all

    @property
    def checked_error(self) -> float:
        return self.p999_abs_error if self.error_statistic == "p99.9" else self.max_abs_error

    @property
    def passed(self) -> bool:
        if self.skipped:
            return True   # checker and shape inference passed; the summary says parity did not run
        return (self.checked_error <= self.tolerance
                and self.label_agreement >= self.min_label_agreement
                and (self.unary_label_agreement is None
                     or self.unary_label_agreement >= self.min_label_agreement))

    def failed_criteria(self) -> list[str]:
        """The criteria that failed, each as one phrase with the value and the bound."""
        failed = []
        statistic = "99.9th-percentile" if self.error_statistic == "p99.9" else "maximum"
        if self.nonfinite:
            failed.append(f"{self.nonfinite} {self.compared} values are NaN or infinite")
        elif not self.checked_error <= self.tolerance:
            failed.append(f"the {statistic} {self.compared} error {self.checked_error:.3g} "
                          f"exceeds the tolerance {self.tolerance:g}")
        if not self.label_agreement >= self.min_label_agreement:
            failed.append(f"labels agree on {100 * self.label_agreement:.3f} % (need "
                          f"{100 * self.min_label_agreement:g} %)")
        if self.unary_label_agreement is not None and not \
                self.unary_label_agreement >= self.min_label_agreement:
            failed.append(f"unary labels agree on {100 * self.unary_label_agreement:.3f} % "
                          f"(need {100 * self.min_label_agreement:g} %)")
        return failed

    def _part_fails(self, part: PartResult | None) -> bool:
        if part is None:
            return False
        if part.name == "unary":   # logits: judged by the labels they give
            return bool(part.nonfinite) or not part.label_agreement >= self.min_label_agreement
        error = part.p999_abs_error if self.error_statistic == "p99.9" else part.max_abs_error
        return (bool(part.nonfinite) or not error <= self.tolerance
                or not part.label_agreement >= self.min_label_agreement)

    def failed_part(self) -> str | None:
        """Which part of a full graph the failure comes from: ``"unary"`` (its logits are not
        finite or give other labels, or the CRF alone passes: the unary's error, amplified by
        the mean-field iterations), ``"crf"`` (the CRF fails on its own, fed the reference's
        logits, with most of the error), ``"both"``, or ``None`` (passed, or the parts were
        not compared)."""
        if self.passed or self.unary is None:
            return None
        if self._part_fails(self.unary):
            return "unary"
        if not self._part_fails(self.crf):
            return "unary"
        crf = self.crf.p999_abs_error if self.error_statistic == "p99.9" else self.crf.max_abs_error
        return "crf" if crf >= 0.5 * self.checked_error else "both"

    def advice(self) -> str:
        """What to do about a failure, by part and precision."""
        part = self.failed_part()
        if part == "unary" and self.fp16 is True:
            return ("the unary's own fp16 error causes it (fp16 rounding or overflow in the "
                    "network): keep the unary in fp32 and the CRF in fp16 with --fp16 crf "
                    "(fp16='crf'), or export in fp32")
        if part == "both" and self.fp16 is True:
            return ("the CRF's fp16 I/O fails on its own and the unary's fp16 error adds to it: "
                    "try --fp16 crf (fp32 unary), else export in fp32 (without --fp16)")
        if part in ("crf", "both") and self.fp16:
            return "the CRF's fp16 I/O causes it: export in fp32 (without --fp16)"
        if part is not None:
            what = {"unary": "unary", "crf": "CRF", "both": "unary and CRF"}[part]
            return (f"the graph's {what} differs from the reference: please report it to the "
                    "convcrf-deploy authors with the model")
        return ""

    def failure(self) -> str:
        """One phrase naming the failed criteria, the part and the fix ("" when passed)."""
        if self.passed:
            return ""
        part = self.failed_part()
        where = {None: "", "unary": " in the unary network", "crf": " in the CRF",
                 "both": " in the CRF and the unary network"}[part]
        advice = self.advice()
        return (f"{'; '.join(self.failed_criteria())}; the failure is{where}"
                + (f": {advice}" if advice else ""))

    def summary(self) -> str:
        lines = []
        if self.skipped:
            lines.append(f"parity NOT RUN: {self.skipped} (raise it with --verify-memory GB, "
                         "verify_memory=); checker and strict shape inference passed")
        else:
            verdict = "PASSED" if self.passed else "FAILED"
            unary = ("" if self.unary_label_agreement is None
                     else f", unary labels agree on {100 * self.unary_label_agreement:.3f} %")
            bound = ("max" if self.error_statistic == "max"
                     else f"99.9th percentile {self.p999_abs_error:.3g} (tolerance "
                          f"{self.tolerance:g}), max")
            tolerance = f" (tolerance {self.tolerance:g})" if self.error_statistic == "max" else ""
            lines.append(
                f"parity {verdict} ({self.backend} vs {self.reference}, batch {self.batch} at "
                f"{self.size[0]}x{self.size[1]}, {self.input_kind}): abs error on "
                f"{self.compared}: {bound} {self.max_abs_error:.3g}{tolerance}, labels agree on "
                f"{100 * self.label_agreement:.3f} % (need {100 * self.min_label_agreement:g} %)"
                f"{unary}; checker and strict shape inference passed")
            if not self.passed:
                lines.append(f"  FAILED: {self.failure()}")
            parts = [p.summary() for p in (self.unary, self.crf) if p is not None]
            if parts:
                lines.append("  parts: " + "; ".join(parts))
            if self.plan_note:
                lines.append(f"  verified {self.plan_note}")
        if self.memory is not None:
            lines.append("  " + self.memory.summary())
        return "\n".join(lines)


# ---- structural checks ---------------------------------------------------------------------------

def check_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run the ONNX checker (full check) and strict shape inference; return the inferred model.

    Raises:
        VerificationError: naming the checker's or shape inference's complaint.
    """
    onnx_ops.register_schemas()
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise VerificationError(describe_error(exc, "ONNX checker rejected the graph")) from exc
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True,
                                                 data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        raise VerificationError(describe_error(exc, "strict shape inference failed")) from exc


# ---- evaluation ---------------------------------------------------------------------------------

def run_graph(model: onnx.ModelProto, feeds: dict[str, np.ndarray], flavor: str,
              runtime: str = "auto", outputs: list[str] | None = None) -> tuple[str, list]:
    """Evaluate ``model`` on CPU; returns ``(backend name, outputs in graph order)`` (or in
    the order of ``outputs``, names of graph outputs).

    Args:
        runtime: ``"onnxruntime"`` (graphs whose ConvCRF nodes have no function body, the
            plugin flavour, with ``libconvcrf_ort_ops`` registered), ``"reference"`` (the stock
            ``onnx.reference.ReferenceEvaluator``, with our two ops as ``new_ops``; minutes and
            gigabytes on real networks) or ``"auto"``: ONNX Runtime, with the custom-op library
            for a plugin-flavour graph where it is installed, else with the standard-op function
            bodies grafted on (:func:`~convcrf_deploy.export.onnx_ops.with_function_bodies`).

    Raises:
        convcrf_deploy._native.NativeError: ``runtime="onnxruntime"`` for a plugin-flavour
            graph and the custom-op library is not installed.
    """
    from .. import _native
    from ..exported_model import needs_custom_ops

    custom_ops = needs_custom_ops(model)
    library = None
    backend_note = ""
    if custom_ops and runtime in ("auto", "onnxruntime"):
        try:
            library = _native.ort_ops_library()
        except _native.NativeError:
            if runtime == "onnxruntime":
                raise
            model = onnx_ops.with_function_bodies(model)
            backend_note = " (ConvCRF nodes as their standard-op function bodies: " \
                           "libconvcrf_ort_ops is not installed)"
    if runtime == "reference":
        from onnx.reference import ReferenceEvaluator
        evaluator = ReferenceEvaluator(model, new_ops=onnx_ops.REFERENCE_OPS)
        ops = "native" if _native.cpu_library() is not None else "NumPy"
        return f"onnx.reference + {ops} ConvCRF ops", evaluator.run(outputs, feeds)
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    backend = f"ONNX Runtime {ort.__version__} CPU"
    if library is not None:
        options.register_custom_ops_library(library)
        backend += " + libconvcrf_ort_ops"
    session = inference_session(model.SerializeToString(), options)
    return backend + backend_note, session.run(outputs, feeds)


# ---- parity -----------------------------------------------------------------------------------

def _reference_name(reference) -> str:
    from ..model.onnx_unary import OnnxUnary
    unary = getattr(reference, "unary", None)
    if isinstance(unary, OnnxUnary):
        return f"{unary.info.path.name} in ONNX Runtime + PyTorch ConvCRF"
    return "PyTorch"


def _graph_dims(model: onnx.ModelProto) -> tuple[int | None, tuple[int, int] | None]:
    """``(fixed batch or None, fixed (H, W) or None)`` of the graph's ``image`` input."""
    value = next((v for v in model.graph.input if v.name == "image"), None)
    if value is None:
        return None, None
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in value.type.tensor_type.shape.dim]
    if len(dims) != 4:
        return None, None
    fixed = (dims[2], dims[3]) if dims[2] and dims[3] else None
    return dims[0] or None, fixed


def _images(batch: int, height: int, width: int, fp16: bool, seed: int):
    import torch
    if fp16:
        from ..data.scenes import SyntheticScene
        scene = SyntheticScene(height=height, width=width, seed=seed)
        return torch.from_numpy(np.stack([scene.render(40 * i)[0].transpose(2, 0, 1)
                                          for i in range(batch)]).astype(np.float32))
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, height, width, generator=generator) * 255


def _crf_logits(reference, batch: int, height: int, width: int, seed: int):
    """Logits for a bare CRF's verification: random, smoothed so that they look like a
    network's (i.i.d. noise is the least realistic, most ill-conditioned input a CRF gets)."""
    import torch
    generator = torch.Generator().manual_seed(seed + 1)
    noise = torch.randn(batch, reference.config.num_classes, height, width,
                        generator=generator) * 3
    return torch.nn.functional.avg_pool2d(noise, 5, stride=1, padding=2,
                                          count_include_pad=False)


def verify_export(model: onnx.ModelProto, reference, *, flavor: str, part: str = "full",
                  fp16: bool | str = False, size: tuple[int, int] | None = None,
                  batch: int = 2, seed: int = 0,
                  memory_budget: int | None = None) -> VerificationResult:
    """Check an exported graph and compare it with the model it came from.

    Args:
        model: the exported ``ModelProto``.
        reference: the ``SegmentationModel`` (or ``ConvCRF`` for ``part="crf"``) exported; for
            a CRF attached to an ONNX unary, a ``SegmentationModel`` whose unary is that file
            run in ONNX Runtime (:class:`~convcrf_deploy.model.onnx_unary.OnnxUnary`).
        flavor, part, fp16: as given to :func:`~convcrf_deploy.export.export_onnx`
            (``fp16``: ``False``, ``True`` or ``"crf"``).
        size: ``(H, W)`` of the test images; default 61 x 83 for fp32 (random images: the
            hardest input), 480 x 640 for fp16 (frames of the synthetic scene: realistic input,
            see :data:`TOLERANCE`). Graphs with fixed sizes pass theirs.
        batch: images per run (2 also exercises a dynamic batch axis; a graph of fixed batch
            runs at its own).
        memory_budget: bytes the parity run may take (default :data:`MEMORY_BUDGET`): see
            :func:`plan_verification`; the result reports the peak measured.

    Raises:
        VerificationError: the checker or strict shape inference rejected the graph, or ONNX
            Runtime could not run it.
    """
    from ..model import ConvCRF
    check_graph(model)
    fixed_batch, fixed_size = _graph_dims(model)
    height, width = size or fixed_size or (FP16_PARITY_SIZE if fp16 else PARITY_SIZE)
    batch = fixed_batch or batch
    channels = (reference.config.num_classes if isinstance(reference, ConvCRF)
                else reference.num_classes)
    metadata = getattr(reference, "metadata", None)
    plan = plan_verification((height, width), batch, channels,
                             dynamic=fixed_size is None and fixed_batch is None,
                             budget=MEMORY_BUDGET if memory_budget is None else memory_budget,
                             pad_multiple=metadata.pad_multiple if metadata else 1,
                             min_size=metadata.min_size if metadata else 1)
    if fixed_batch is not None and plan.batch != fixed_batch:
        plan = VerificationPlan(None, fixed_batch, plan.note or "the graph's fixed batch")
    tolerance_key = bool(fp16)   # any fp16 (True or "crf") has the fp16 tolerances
    common = dict(tolerance=TOLERANCE[tolerance_key],
                  min_label_agreement=MIN_LABEL_AGREEMENT[tolerance_key],
                  error_statistic=ERROR_STATISTIC[tolerance_key],
                  input_kind="synthetic scene" if fp16 else "random image",
                  reference=_reference_name(reference), fp16=fp16)
    if plan.size is None:
        return VerificationResult(backend="none", size=(height, width), batch=plan.batch,
                                  compared="logits" if part == "unary" else "probabilities",
                                  max_abs_error=math.nan, label_agreement=math.nan,
                                  skipped=plan.note, **common)
    with PeakMemory() as memory:
        result = _parity(model, reference, flavor=flavor, part=part, fp16=fp16,
                         size=plan.size, batch=plan.batch, seed=seed, common=common)
    result.memory = memory.result
    result.plan_note = plan.note
    return result


def _run(model, feeds, flavor):
    """:func:`run_graph`; an ONNX Runtime failure is a :class:`VerificationError`."""
    from .. import _native
    try:
        return run_graph(model, feeds, flavor)
    except _native.NativeError:
        raise
    except Exception as exc:   # noqa: BLE001 - onnxruntime's errors share no useful base class
        raise VerificationError(describe_error(
            exc, "ONNX Runtime could not run the exported graph")) from None


def _parity(model, reference, *, flavor, part, fp16, size, batch, seed, common
            ) -> VerificationResult:
    import torch
    from ..model import ConvCRF
    from ..exported_model import extract_part, unary_logits_name

    height, width = size
    image = _images(batch, height, width, bool(fp16), seed)
    feeds = {"image": image.numpy()}
    compared = "logits" if part == "unary" else "probabilities"
    with torch.no_grad():
        if part == "crf":
            crf = reference if isinstance(reference, ConvCRF) else reference.crf
            logits = (_crf_logits(reference, batch, height, width, seed)
                      if isinstance(reference, ConvCRF) else reference.forward_unary(image))
            feeds["logits"] = logits.float().numpy()
            want = crf(logits, image).float().numpy()
            want_logits = None
        else:
            want_logits = reference.forward_unary(image).float()
            if part == "unary":
                want = want_logits.numpy()
            elif reference.crf is None or not reference.crf_enabled:
                want = torch.softmax(want_logits, dim=1).numpy()
            else:
                want = reference.crf(want_logits, image).float().numpy()
            want_logits = want_logits.numpy()

    # The graph's own logits as an extra output (full graphs), so that the unary is compared
    # on its own in the same run.
    logits_name = unary_logits_name(model) if part == "full" else None
    graph = model
    if logits_name is not None and logits_name not in {o.name for o in model.graph.output}:
        graph = onnx.ModelProto()
        graph.CopyFrom(model)
        graph.graph.output.append(onnx.helper.make_tensor_value_info(logits_name,
                                                                     onnx.TensorProto.FLOAT, None))
    names = [o.name for o in graph.graph.output]
    backend, outputs = _run(graph, feeds, flavor)
    named = dict(zip(names, outputs))
    del outputs
    got = named.pop(compared)
    scale = max(1.0, float(np.nanmax(np.abs(want)))) if part == "unary" else 1.0
    max_error, p999_error, agreement, nonfinite = _compare(got, want, scale)
    labels = named.pop("labels", None)
    if labels is not None:   # the graph's own labels output, where it has one
        agreement = float(np.mean([(labels[n] == _argmax(want[n])).mean() for n in range(batch)]))
    del got, labels
    unary_agreement = unary_part = crf_part = None
    if "unary_labels" in named and want_logits is not None:
        unary_labels = named.pop("unary_labels")
        unary_agreement = float(np.mean([(unary_labels[n] == _argmax(want_logits[n])).mean()
                                         for n in range(batch)]))
    if logits_name is not None and want_logits is not None:
        graph_logits = named.pop(logits_name)
        unary_part = PartResult("unary", *_unary_stats(graph_logits, want_logits))
        del graph_logits
        if compared == "probabilities" and reference.crf is not None and reference.crf_enabled:
            crf_graph = extract_part(model, [logits_name, "image"], ["probabilities"])
            _, (crf_got,) = _run(crf_graph, {logits_name: want_logits, "image": feeds["image"]},
                                 flavor)
            crf_part = PartResult("crf", *_compare(crf_got, want))
            del crf_got
    named.clear()
    return VerificationResult(backend=backend, size=(height, width), batch=batch,
                              compared=compared, max_abs_error=max_error,
                              label_agreement=agreement, unary_label_agreement=unary_agreement,
                              p999_abs_error=p999_error, nonfinite=nonfinite, unary=unary_part,
                              crf=crf_part, **common)


def _unary_stats(got: np.ndarray, want: np.ndarray) -> tuple[float, float, float, int]:
    scale = max(1.0, float(np.nanmax(np.abs(want))))
    return _compare(got, want, scale)
