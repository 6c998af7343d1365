"""ONNX export of ConvCRF segmentation models, and its verification.

* :func:`export_onnx`: model -> ``.onnx`` in the ``single-file`` (default), ``plugin`` or
  ``portable`` flavour, optionally fp16, verified against PyTorch.
* :mod:`.onnx_ops`: the ``trt.plugins::ConvCRFKernel`` / ``ConvCRFMessagePassing`` ops on the
  ONNX side (schemas, exporter translations, standard-op lowering, reference evaluator);
  needs only onnx and numpy.
* :func:`attach_crf`: the ConvCRF attached to a unary the user has as ONNX (:mod:`.attach`),
  written and verified like an export.
* :mod:`.verify`: checker, strict shape inference and parity runs (bounded memory, peak
  reported, the unary and the CRF compared on their own).
* :mod:`.quantize`: INT8 unary (static QDQ quantisation with ONNX Runtime's tools, calibrated
  on the user's frames; the CRF stays float), for exported graphs or any graph whose
  unary/CRF boundary is known.

The exporter needs torch, onnx, onnxscript and onnxruntime. Names are imported lazily so that
``convcrf_deploy.export.onnx_ops`` stays usable without torch (e.g. by the runtime).
"""
from __future__ import annotations

import importlib

#: export flavours (docs/export.md) and graph parts; torch-free so the CLI's argument parser
#: does not load the exporter.
FLAVORS: tuple[str, ...] = ("single-file", "plugin", "portable")
DEFAULT_FLAVOR = "single-file"
PARTS: tuple[str, ...] = ("full", "unary", "crf")
#: Standard-ONNX opsets the export supports, each tested in ONNX Runtime against PyTorch (18:
#: the floor of the ConvCRF function bodies, Split num_outputs and Pad/ReduceSum with tensor
#: inputs), and the default: the newest TensorRT 10.3's parser (JetPack 6) imports.
MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 18, 28, 20

_LAZY = {
    "export_onnx": "exporter", "load_exportable": "exporter", "ExportReport": "exporter",
    "ExportError": "exporter", "ExportDependencyError": "exporter",
    "VerificationError": "verify", "VerificationResult": "verify", "verify_export": "verify",
    "check_graph": "verify", "attach_crf": "attach",
    "quantize_unary": "quantize", "calibration_set": "quantize", "CalibrationSet": "quantize",
    "CalibrationError": "quantize", "QuantizationError": "quantize",
}

__all__ = ["FLAVORS", "DEFAULT_FLAVOR", "PARTS", "MIN_OPSET", "MAX_OPSET", "DEFAULT_OPSET",
           *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
