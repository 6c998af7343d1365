"""Verification of an exported graph: ONNX checker, strict shape inference, parity with PyTorch.

* :func:`check_graph`: ``onnx.checker.check_model(full_check=True)`` and strict shape
  inference, with the schemas of our two ops registered (attributes validated, shapes
  propagated through them).
* :func:`run_graph`: evaluate a graph on CPU in ONNX Runtime: the portable and single-file
  flavours as they are (the single-file flavour's function bodies: what a plain ONNX Runtime
  runs), the plugin flavour with our custom-op library ``libconvcrf_ort_ops`` registered
  (docs/onnxruntime.md; seconds and bounded memory). Where that library is not installed, the
  plugin flavour runs in the stock ``onnx.reference.ReferenceEvaluator`` with our ``OpRun``
  implementations of the two ops (minutes and gigabytes at 480x640). No standard op is patched:
  the exported graph avoids constructs runtimes compute differently (:mod:`.rewrites`).
* :func:`verify_export`: both, plus a comparison with the PyTorch model on a random image at
  an odd size (61 x 83 by default: odd sizes exercise the partial blur windows and the
  cropped upsampling).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from . import onnx_ops

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
TOLERANCE = {False: 1e-3, True: 2e-2}
ERROR_STATISTIC = {False: "max", True: "p99.9"}
MIN_LABEL_AGREEMENT = {False: 0.999, True: 0.999}
PARITY_SIZE = (61, 83)
#: fp16 exports are checked at a deployment size on realistic input (the synthetic scene).
FP16_PARITY_SIZE = (480, 640)


class VerificationError(RuntimeError):
    """An exported graph is invalid (checker or shape inference failed)."""


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

    @property
    def checked_error(self) -> float:
        return self.p999_abs_error if self.error_statistic == "p99.9" else self.max_abs_error

    @property
    def passed(self) -> bool:
        return (self.checked_error <= self.tolerance
                and self.label_agreement >= self.min_label_agreement
                and (self.unary_label_agreement is None
                     or self.unary_label_agreement >= self.min_label_agreement))

    def summary(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        unary = ("" if self.unary_label_agreement is None
                 else f", unary labels agree on {100 * self.unary_label_agreement:.3f} %")
        bound = ("max" if self.error_statistic == "max"
                 else f"99.9th percentile {self.p999_abs_error:.3g} (tolerance "
                      f"{self.tolerance:g}), max")
        tolerance = f" (tolerance {self.tolerance:g})" if self.error_statistic == "max" else ""
        return (f"parity {verdict} ({self.backend} vs PyTorch, batch {self.batch} at "
                f"{self.size[0]}x{self.size[1]}, {self.input_kind}): abs error on "
                f"{self.compared}: {bound} {self.max_abs_error:.3g}{tolerance}, labels agree on "
                f"{100 * self.label_agreement:.3f} % (need {100 * self.min_label_agreement:g} %)"
                f"{unary}; checker and strict shape inference passed")


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
        raise VerificationError(f"ONNX checker rejected the graph: {exc}") from exc
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True,
                                                 data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        raise VerificationError(f"strict shape inference failed: {exc}") from exc


# ---- evaluation ---------------------------------------------------------------------------------

def run_graph(model: onnx.ModelProto, feeds: dict[str, np.ndarray], flavor: str,
              runtime: str = "auto") -> tuple[str, list]:
    """Evaluate ``model`` on CPU; returns ``(backend name, outputs in graph order)``.

    Args:
        runtime: ``"onnxruntime"`` (graphs whose ConvCRF nodes have no function body, the
            plugin flavour, with ``libconvcrf_ort_ops`` registered), ``"reference"`` (the stock
            ``onnx.reference.ReferenceEvaluator``, with our two ops as ``new_ops``) or
            ``"auto"``: ONNX Runtime, except for a plugin-flavour graph where the custom-op
            library is not installed (then the reference evaluator).

    Raises:
        convcrf_deploy._native.NativeError: ``runtime="onnxruntime"`` for a plugin-flavour
            graph and the custom-op library is not installed.
    """
    from .. import _native
    from ..exported_model import needs_custom_ops

    custom_ops = needs_custom_ops(model)
    if runtime == "auto":
        runtime = "onnxruntime"
        if custom_ops:
            try:
                _native.ort_ops_library()
            except _native.NativeError:
                runtime = "reference"
    if runtime == "reference":
        from onnx.reference import ReferenceEvaluator
        evaluator = ReferenceEvaluator(model, new_ops=onnx_ops.REFERENCE_OPS)
        ops = "native" if _native.cpu_library() is not None else "NumPy"
        return f"onnx.reference + {ops} ConvCRF ops", evaluator.run(None, feeds)
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    backend = f"ONNX Runtime {ort.__version__} CPU"
    if custom_ops:
        options.register_custom_ops_library(_native.ort_ops_library())
        backend += " + libconvcrf_ort_ops"
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return backend, session.run(None, feeds)


# ---- parity -----------------------------------------------------------------------------------

def _torch_outputs(reference, part: str, image, logits):
    """Outputs of the PyTorch model (its usual inference path, under no_grad)."""
    import torch
    from ..model import ConvCRF
    with torch.no_grad():
        if part == "crf":
            crf = reference if isinstance(reference, ConvCRF) else reference.crf
            return {"probabilities": crf(logits, image)}
        unary_logits = reference.forward_unary(image)
        if part == "unary":
            return {"logits": unary_logits}
        return {"probabilities": reference(image), "unary_logits": unary_logits}


def verify_export(model: onnx.ModelProto, reference, *, flavor: str, part: str = "full",
                  fp16: bool = False, size: tuple[int, int] | None = None, batch: int = 2,
                  seed: int = 0) -> VerificationResult:
    """Check an exported graph and compare it with the PyTorch model it came from.

    Args:
        model: the exported ``ModelProto``.
        reference: the ``SegmentationModel`` (or ``ConvCRF`` for ``part="crf"``) exported.
        flavor, part, fp16: as given to :func:`~convcrf_deploy.export.export_onnx`.
        size: ``(H, W)`` of the test images; default 61 x 83 for fp32 (random images: the
            hardest input), 480 x 640 for fp16 (frames of the synthetic scene: realistic input,
            see :data:`TOLERANCE`). Graphs with fixed sizes pass theirs.
        batch: images per run (2 also exercises a dynamic batch axis).

    Raises:
        VerificationError: the checker or strict shape inference rejected the graph.
    """
    import torch
    from ..model import ConvCRF
    check_graph(model)
    height, width = size or (FP16_PARITY_SIZE if fp16 else PARITY_SIZE)
    generator = torch.Generator().manual_seed(seed)
    if fp16:
        from ..data.scenes import SyntheticScene
        scene = SyntheticScene(height=height, width=width, seed=seed)
        image = torch.from_numpy(np.stack([scene.render(40 * i)[0].transpose(2, 0, 1)
                                           for i in range(batch)]).astype(np.float32))
    else:
        image = torch.rand(batch, 3, height, width, generator=generator) * 255
    feeds = {"image": image.numpy()}
    logits = None
    if part == "crf":
        if isinstance(reference, ConvCRF):
            # No unary network: random logits, smoothed so that they look like a network's
            # (i.i.d. noise is the least realistic, most ill-conditioned input a CRF gets).
            noise = torch.randn(batch, reference.config.num_classes, height, width,
                                generator=generator) * 3
            logits = torch.nn.functional.avg_pool2d(noise, 5, stride=1, padding=2,
                                                    count_include_pad=False)
        else:
            with torch.no_grad():
                logits = reference.forward_unary(image)
        feeds["logits"] = logits.numpy()
    backend, outputs = run_graph(model, feeds, flavor)
    named = dict(zip([o.name for o in model.graph.output], outputs))
    expected = {k: v.float().numpy() for k, v in _torch_outputs(reference, part, image,
                                                                logits).items()}

    compared = "logits" if part == "unary" else "probabilities"
    got, want = named[compared].astype(np.float32), expected[compared]
    if got.shape != want.shape:
        raise VerificationError(f"{compared}: ONNX shape {got.shape} != PyTorch {want.shape}")
    scale = max(1.0, float(np.abs(want).max())) if part == "unary" else 1.0
    error = np.abs(got - want) / scale
    max_error, p999_error = float(error.max()), float(np.quantile(error, 0.999))
    labels = named.get("labels", got.argmax(1))
    agreement = float((labels == want.argmax(1)).mean())
    unary_agreement = None
    if "unary_labels" in named:
        unary_agreement = float((named["unary_labels"] == expected["unary_logits"].argmax(1)).mean())
    return VerificationResult(backend=backend, size=(height, width), batch=batch,
                              compared=compared, max_abs_error=max_error,
                              label_agreement=agreement, tolerance=TOLERANCE[fp16],
                              min_label_agreement=MIN_LABEL_AGREEMENT[fp16],
                              unary_label_agreement=unary_agreement,
                              p999_abs_error=p999_error, error_statistic=ERROR_STATISTIC[fp16],
                              input_kind="synthetic scene" if fp16 else "random image")
