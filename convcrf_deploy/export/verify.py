"""Verification of an exported graph: ONNX checker, strict shape inference, parity with PyTorch.

* :func:`check_graph`: ``onnx.checker.check_model(full_check=True)`` and strict shape
  inference, with the schemas of our two ops registered (attributes validated, shapes
  propagated through them).
* :func:`run_graph`: evaluate a graph on CPU: ONNX Runtime for the portable and single-file
  flavours, ``onnx.reference.ReferenceEvaluator`` with our ``OpRun`` implementations for the
  plugin flavour (which no CPU runtime has the ops for).
* :func:`verify_export`: both, plus a comparison with the PyTorch model on a random image at
  an odd size (61 x 83 by default: odd sizes exercise the partial blur windows and the
  cropped upsampling).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx.reference.ops.op_average_pool import AveragePool_19

from . import onnx_ops

#: Parity thresholds: max |p_onnx - p_torch| on probabilities (logits for part="unary",
#: scaled by max(1, max |logits|)) and the fraction of pixels whose argmax agrees.
TOLERANCE = {False: 1e-4, True: 2e-2}
MIN_LABEL_AGREEMENT = {False: 0.999, True: 0.99}
PARITY_SIZE = (61, 83)


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

    @property
    def passed(self) -> bool:
        return (self.max_abs_error <= self.tolerance
                and self.label_agreement >= self.min_label_agreement
                and (self.unary_label_agreement is None
                     or self.unary_label_agreement >= self.min_label_agreement))

    def summary(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        unary = ("" if self.unary_label_agreement is None
                 else f", unary labels agree on {100 * self.unary_label_agreement:.3f} %")
        return (f"parity {verdict} ({self.backend} vs PyTorch, batch {self.batch} at "
                f"{self.size[0]}x{self.size[1]}): max abs error on {self.compared} "
                f"{self.max_abs_error:.3g} (tolerance {self.tolerance:g}), labels agree on "
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

class AveragePool(AveragePool_19):
    """``onnx.reference``'s AveragePool with ceil_mode=1, count_include_pad=0 fixed.

    onnx 1.23's reference divides the windows that overhang the input (ceil mode) by the full
    window size; PyTorch and ONNX Runtime divide by the number of pixels inside, which is what
    the ConvCRF's blur pooling means. Other configurations use the reference unchanged.
    """

    op_domain = ""

    def _run(self, x, auto_pad=None, ceil_mode=None, count_include_pad=None, dilations=None,
             kernel_shape=None, pads=None, strides=None):
        plain = (not auto_pad or auto_pad in ("NOTSET", b"NOTSET")) and not any(pads or []) \
            and not any(d != 1 for d in (dilations or [])) and x.ndim == 4 \
            and len(kernel_shape) == 2
        if not (ceil_mode and not count_include_pad and plain):
            return super()._run(x, auto_pad=auto_pad, ceil_mode=ceil_mode,
                                count_include_pad=count_include_pad, dilations=dilations,
                                kernel_shape=kernel_shape, pads=pads, strides=strides)
        (kh, kw), (sh, sw) = kernel_shape, (strides or [1, 1])
        h, w = x.shape[2:]
        out_h, out_w = -(-(h - kh) // sh) + 1, -(-(w - kw) // sw) + 1
        # A window must start inside the input (the ceil-mode rule of ONNX and PyTorch).
        out_h -= (out_h - 1) * sh >= h
        out_w -= (out_w - 1) * sw >= w
        ph, pw = (out_h - 1) * sh + kh, (out_w - 1) * sw + kw
        padded = np.zeros(x.shape[:2] + (ph, pw), np.float64)
        padded[:, :, :h, :w] = x
        inside = np.zeros((ph, pw))
        inside[:h, :w] = 1
        total = np.zeros(x.shape[:2] + (out_h, out_w))
        count = np.zeros((out_h, out_w))
        for i in range(kh):
            for j in range(kw):
                rows = slice(i, i + (out_h - 1) * sh + 1, sh)
                cols = slice(j, j + (out_w - 1) * sw + 1, sw)
                total += padded[:, :, rows, cols]
                count += inside[rows, cols]
        return ((total / count).astype(x.dtype),)


def run_graph(model: onnx.ModelProto, feeds: dict[str, np.ndarray], flavor: str) -> tuple[str, list]:
    """Evaluate ``model`` on CPU; returns ``(backend name, outputs in graph order)``."""
    if flavor == "plugin":
        from onnx.reference import ReferenceEvaluator
        evaluator = ReferenceEvaluator(model, new_ops=[*onnx_ops.REFERENCE_OPS, AveragePool])
        from .. import _native
        ops = "native" if _native.cpu_library() is not None else "NumPy"
        return f"onnx.reference + {ops} ConvCRF ops", evaluator.run(None, feeds)
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return f"ONNX Runtime {ort.__version__} CPU", session.run(None, feeds)


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
        size: ``(H, W)`` of the random test image; default 61 x 83 (graphs with fixed sizes
            pass theirs).
        batch: images per run (2 also exercises a dynamic batch axis).

    Raises:
        VerificationError: the checker or strict shape inference rejected the graph.
    """
    import torch
    from ..model import ConvCRF
    check_graph(model)
    height, width = size or PARITY_SIZE
    generator = torch.Generator().manual_seed(seed)
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
    max_error = float(np.abs(got - want).max()) / scale
    labels = named.get("labels", got.argmax(1))
    agreement = float((labels == want.argmax(1)).mean())
    unary_agreement = None
    if "unary_labels" in named:
        unary_agreement = float((named["unary_labels"] == expected["unary_logits"].argmax(1)).mean())
    return VerificationResult(backend=backend, size=(height, width), batch=batch,
                              compared=compared, max_abs_error=max_error,
                              label_agreement=agreement, tolerance=TOLERANCE[fp16],
                              min_label_agreement=MIN_LABEL_AGREEMENT[fp16],
                              unary_label_agreement=unary_agreement)
