"""INT8 unary: static QDQ quantisation of the unary part of an exported graph, the CRF left float.

The unary network is what limits the frame rate on a CPU (the native CRF is 8-15 % of a frame
on real networks), and it tolerates 8-bit arithmetic; the CRF's message passing does not need
it and its probabilities should not be rounded. So only the unary is quantised:

1. :func:`calibration_set` reads the user's frames (a folder of images, or BGR arrays) and
   preprocesses them exactly as the runtime feeds the graph (:class:`~convcrf_deploy.runtime.
   Segmenter`: BGR -> RGB float32 0..255 ``[1, 3, h, w]``, the model's resize policy and input
   size from its metadata).
2. :func:`quantize_unary` finds the unary/CRF boundary (the unary logits: the input of the
   ``ArgMax`` producing ``unary_labels``, or a tensor named by the caller), extracts the
   unary subgraph ``image -> logits``, quantises it with ONNX Runtime's
   ``quantize_static`` (QDQ format, MinMax calibration on the frames, per-channel int8 weights,
   uint8 activations: ONNX Runtime's recommendation for x86-64 CPUs) and splices the result
   back in place of the float unary. The CRF nodes, their initialisers and every tensor they
   read stay float (fp16 where the export asked for it), and the graph works in every flavour
   (the calibration runs only the unary, which has no ConvCRF node).
3. :func:`verify_int8` compares the INT8 graph with the float graph it came from on the
   calibration frames by *label agreement* (unary labels and CRF labels; the float graph's
   own parity with PyTorch is checked by :func:`~convcrf_deploy.export.verify.verify_export`).

What stays float, and why (:func:`float_nodes`): the *head* before the first weighted layer
(input normalisation), the *stem* (a convolution reading the image
with <= 4 input channels: an int8 GEMM with K = 27 is slower than ONNX Runtime's fp32 NCHWc
kernel, 2.1 vs 0.3 ms on the demo model, and quantising the image costs a full-resolution
pass) and the *tail* (everything between the last weighted layer and the logits, e.g. the
bilinear upsampling to the input size: int8 Resize is no faster in ONNX Runtime and 8-bit
logits would be the CRF's input). Relu nodes are kept in the file
(``QDQKeepRemovableActivations``; ONNX Runtime folds them) so that the graph keeps its
meaning when a runtime re-derives symmetric scales (TensorRT, :mod:`convcrf_deploy.tensorrt.
builder`). Biases stay float (``QuantizeBias=False``: ONNX Runtime and TensorRT quantise them
themselves).

Needs onnx, numpy, OpenCV and onnxruntime (its ``onnxruntime.quantization`` tools); no torch.
Source: ONNX Runtime, "Quantize ONNX models" (static quantisation, QDQ format, data type
selection); TensorRT, "Working with quantized types" (explicit quantisation).

Example:
    >>> calibration = calibration_set("frames/", metadata)     # >= 8 images
    >>> quantized = quantize_unary(onnx.load("model.onnx"), calibration)
    >>> print(quantized.report.summary())
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import onnx

from ..errors import describe_error
from ..metadata import ONNX_KEYS, ModelMetadata
from ..ort_session import inference_session

#: Fewest frames a calibration may use: MinMax ranges from a handful of frames miss the
#: brighter, darker and busier scenes the camera will see.
MIN_CALIBRATION_FRAMES = 8
#: Frames used when a folder holds more (evenly spaced over the sorted file names): the
#: calibration runs the unary once per frame with every activation as an output.
DEFAULT_MAX_CALIBRATION_FRAMES = 64
#: Frames :func:`verify_int8` compares on (the first of the calibration set).
VERIFY_FRAMES = 8
#: Label agreement with the float graph that INT8 must reach (per pixel, unary and CRF
#: labels): quantisation moves decision boundaries by a few pixels, not whole regions.
MIN_LABEL_AGREEMENT = 0.98
#: Weighted layers (their weight input is an initialiser): what INT8 accelerates.
WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
#: Largest channel count of an image-reading convolution that stays float (the stem).
STEM_MAX_CHANNELS = 4
#: Graph input of exported models (the unary's input).
IMAGE_INPUT = "image"
#: metadata_props key recording the quantisation (JSON, see :class:`QuantizationReport`).
QUANTIZATION_KEY = ONNX_KEYS["quantization"]


class CalibrationError(ValueError):
    """The calibration frames are missing, too few or unreadable (one line: problem and fix)."""


class QuantizationError(RuntimeError):
    """The graph cannot be quantised as asked (no unary/CRF boundary, the tool failed)."""


# ---- calibration frames -------------------------------------------------------------------------

@dataclass
class CalibrationSet:
    """Preprocessed calibration frames.

    Attributes:
        inputs: one float32 ``[1, 3, h, w]`` RGB 0..255 array per frame, as the runtime feeds
            the graph (``h, w``: the model's input size, or the frame's with ``resize="none"``).
        source: where the frames came from (a folder or ``"N arrays"``).
        names: file names (or ``frame<i>``), one per input.
        available: frames the source held (``len(inputs)`` of them were used).
    """

    inputs: list[np.ndarray]
    source: str
    names: list[str] = field(default_factory=list)
    available: int = 0

    def __len__(self) -> int:
        return len(self.inputs)

    def describe(self) -> str:
        """E.g. ``"16 frames from frames/ (of 120, evenly spaced)"``."""
        extra = (f" (of {self.available}, evenly spaced)" if self.available > len(self.inputs)
                 else "")
        return f"{len(self.inputs)} frames from {self.source}{extra}"


def _runtime_preprocessor(metadata: ModelMetadata, resize: str | None, input_size):
    """A :class:`~convcrf_deploy.runtime.Segmenter` over a backend that only carries the
    metadata: its ``preprocess`` (the code the runtime runs) prepares the calibration frames."""
    from ..runtime.backends.base import Backend
    from ..runtime.segmenter import Segmenter

    class _MetadataOnly(Backend):
        name = "calibration"
        has_crf = False

        def _activate(self) -> None: ...

        def _deactivate(self) -> None: ...

        def _infer(self, image):  # pragma: no cover - Segmenter.preprocess never infers
            raise RuntimeError("the calibration preprocessor runs no model; it only prepares "
                               "frames as the runtime does (Segmenter.preprocess)")

    return Segmenter(_MetadataOnly(metadata), resize=resize, input_size=input_size)


def _evenly_spaced(count: int, limit: int) -> list[int]:
    if count <= limit:
        return list(range(count))
    return sorted({int(round(i * (count - 1) / (limit - 1))) for i in range(limit)}) \
        if limit > 1 else [0]


def calibration_set(frames: str | os.PathLike | Sequence[np.ndarray], metadata: ModelMetadata, *,
                    min_frames: int = MIN_CALIBRATION_FRAMES,
                    max_frames: int = DEFAULT_MAX_CALIBRATION_FRAMES,
                    resize: str | None = None,
                    input_size: tuple[int, int] | None = None) -> CalibrationSet:
    """Calibration frames, preprocessed as the runtime preprocesses frames for ``metadata``.

    Args:
        frames: a folder of images (``.png``, ``.jpg``, ... as ``convcrf-run`` reads them:
            8/16-bit, grey or colour, EXIF orientation applied; other files are ignored), or
            a sequence of BGR uint8 ``[H, W, 3]`` arrays.
        metadata: the model's :class:`~convcrf_deploy.metadata.ModelMetadata` (resize policy
            and input size).
        min_frames: fewest frames accepted (default :data:`MIN_CALIBRATION_FRAMES`).
        max_frames: most frames used; a folder with more is sampled evenly over its sorted
            file names (default :data:`DEFAULT_MAX_CALIBRATION_FRAMES`).
        resize, input_size: override the metadata's (as ``convcrf-run --resize`` would).

    Raises:
        CalibrationError: the folder is missing or not a folder, holds fewer than
            ``min_frames`` images, or one of the chosen images cannot be decoded; an array is
            not BGR uint8. One line naming the problem and the fix.
    """
    if max_frames < min_frames or min_frames < 1:
        raise CalibrationError(f"need 1 <= min_frames <= max_frames, got {min_frames} and "
                               f"{max_frames}")
    if isinstance(frames, (str, os.PathLike)):
        images, names, source, available = _read_folder(Path(frames), min_frames, max_frames)
    else:
        frames = list(frames)
        source, available = f"{len(frames)} arrays", len(frames)
        _require_count(len(frames), min_frames, source)
        chosen = _evenly_spaced(len(frames), max_frames)
        images, names = [frames[i] for i in chosen], [f"frame{i}" for i in chosen]
    segmenter = _runtime_preprocessor(metadata, resize, input_size)
    inputs = []
    for image, name in zip(images, names):
        try:
            inputs.append(segmenter.preprocess(image).copy())   # the buffer is reused
        except ValueError as exc:
            raise CalibrationError(f"calibration frame {name}: {exc}") from None
    return CalibrationSet(inputs, source, names, available)


def _require_count(count: int, min_frames: int, source: str) -> None:
    if count < min_frames:
        raise CalibrationError(
            f"{source} holds {count} calibration frame(s); INT8 calibration needs at least "
            f"{min_frames} frames like those the model will see (add frames saved from the "
            "camera or a recording to the folder)")


def _read_folder(folder: Path, min_frames: int, max_frames: int):
    import cv2

    from ..runtime.streams.base import IMAGE_SUFFIXES, as_bgr

    if not folder.exists():
        raise CalibrationError(f"calibration folder {str(folder)!r} does not exist: pass "
                               f"--calibration DIR, a folder of at least {min_frames} frames "
                               "(.png/.jpg) from the camera the model will run on")
    if not folder.is_dir():
        raise CalibrationError(f"--calibration {str(folder)!r} is a file; pass the folder "
                               "that holds the calibration frames")
    paths = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    _require_count(len(paths), min_frames, f"{folder}")
    chosen = [paths[i] for i in _evenly_spaced(len(paths), max_frames)]
    images = []
    for path in chosen:
        # As convcrf-run's image sources read frames (EXIF orientation applied, 16-bit and
        # grey images converted): calibration must see what inference will see.
        image = as_bgr(cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH))
        if image is None:
            raise CalibrationError(f"calibration frame {path} cannot be read as an image "
                                   "(corrupt, truncated or not an image); replace it or "
                                   "remove it from the folder")
        images.append(image)
    return images, [p.name for p in chosen], f"{folder}", len(paths)


# ---- the unary/CRF boundary ---------------------------------------------------------------------

def unary_boundary(model: onnx.ModelProto, logits: str | None = None) -> str:
    """The name of the unary logits: ``logits`` if given (checked to exist), else the input of
    the ``ArgMax`` producing ``unary_labels`` (what ``convcrf-export`` writes).

    Raises:
        QuantizationError: no such tensor, or no ``unary_labels`` output to find it by.
    """
    from ..exported_model import unary_logits_name

    if logits is None:
        logits = unary_logits_name(model)
        if logits is None:
            raise QuantizationError(
                "cannot find the unary/CRF boundary: the graph has no 'unary_labels' output "
                "(ArgMax of the unary logits, as convcrf-export writes); pass logits= the "
                "name of the tensor holding the unary logits")
        return logits
    produced = {o for node in model.graph.node for o in node.output}
    if logits not in produced and logits not in {i.name for i in model.graph.input}:
        raise QuantizationError(f"the graph has no tensor {logits!r} (logits=)")
    return logits


def _weight_shape(node: onnx.NodeProto, initializers: dict) -> tuple[int, ...] | None:
    """Shape of the constant weight of a weighted node, or None when it is not constant."""
    if node.op_type not in WEIGHTED_OPS or len(node.input) < 2:
        return None
    weight = initializers.get(node.input[1])
    return tuple(weight.dims) if weight is not None else None


def float_nodes(unary: onnx.ModelProto, logits: str) -> dict[str, str]:
    """Nodes of the unary subgraph that stay float, with the reason:

    * the head: nodes before the first weighted layer (input normalisation, shape arithmetic);
    * the stem: convolutions reading the image (no weighted layer before them) with <=
      :data:`STEM_MAX_CHANNELS` input channels;
    * the tail: nodes from which the logits are reached without passing a weighted layer
      (e.g. the upsampling to the input size).
    """
    graph = unary.graph
    initializers = {t.name: t for t in graph.initializer}
    producer = {o: node for node in graph.node for o in node.output}
    weighted = {id(n) for n in graph.node if _weight_shape(n, initializers) is not None}
    after_weighted: set[int] = set()       # nodes with a weighted layer upstream
    for node in graph.node:                # graph order is topological
        sources = [producer[name] for name in node.input if name in producer]
        if any(id(p) in weighted or id(p) in after_weighted for p in sources):
            after_weighted.add(id(node))
    kept: dict[str, str] = {}
    for node in graph.node:
        if id(node) in after_weighted:
            continue
        shape = _weight_shape(node, initializers)
        if shape is None:
            kept[node.name] = "head: before the first weighted layer"
        elif (node.op_type == "Conv" and len(shape) >= 2
              and shape[1] * _group(node) <= STEM_MAX_CHANNELS):
            kept[node.name] = (f"stem: reads the image ({shape[1] * _group(node)} input "
                               "channels; int8 is slower there)")
    # The tail: walk back from the logits, stopping at weighted layers.
    stack, seen = [logits], set()
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in seen or id(node) in weighted:
            continue
        seen.add(id(node))
        kept.setdefault(node.name, "tail: after the last weighted layer (the CRF reads "
                                   "float logits)")
        stack.extend(node.input)
    return kept


def _group(node: onnx.NodeProto) -> int:
    for attribute in node.attribute:
        if attribute.name == "group":
            return int(attribute.i)
    return 1


# ---- quantisation -------------------------------------------------------------------------------

@dataclass
class QuantizationReport:
    """What :func:`quantize_unary` did (also stored as JSON under :data:`QUANTIZATION_KEY`)."""

    calibration_frames: int
    calibration_source: str
    quantized_nodes: dict[str, int]          # op type -> nodes running in int8
    float_nodes: dict[str, str]              # node name -> why it stays float
    logits: str
    per_channel: bool = True
    reduce_range: bool = False
    activations: str = "uint8, asymmetric, per tensor"
    weights: str = "int8, symmetric, per output channel"
    calibration_method: str = "MinMax"
    tool: str = ""

    def to_json(self) -> str:
        return json.dumps({
            "unary": "int8", "format": "QDQ", "activations": self.activations,
            "weights": self.weights if self.per_channel else "int8, symmetric, per tensor",
            "reduce_range": self.reduce_range, "calibration_method": self.calibration_method,
            "calibration_frames": self.calibration_frames,
            "quantized_nodes": self.quantized_nodes,
            "float_nodes": sorted(self.float_nodes), "logits": self.logits,
            "tool": self.tool})

    def summary(self) -> str:
        ops = ", ".join(f"{n} {op}" for op, n in sorted(self.quantized_nodes.items()))
        reasons = [r.split(":")[0] for r in self.float_nodes.values()]
        kept = ", ".join(f"{reasons.count(what)} {what}" for what in ("head", "stem", "tail",
                                                                       "asked")
                         if reasons.count(what))
        weights = self.weights if self.per_channel else "int8, symmetric, per tensor"
        return (f"INT8 unary (QDQ; activations {self.activations}; weights {weights}): "
                f"{ops} in int8, calibrated ({self.calibration_method}) on "
                f"{self.calibration_frames} frames from {self.calibration_source}; kept float: "
                f"{kept or 'nothing'}; everything after the logits ({self.logits}, the CRF) "
                "is unchanged")


@dataclass
class QuantizedModel:
    """The INT8 graph and its :class:`QuantizationReport`."""

    model: onnx.ModelProto
    report: QuantizationReport


def quantize_unary(model: onnx.ModelProto, calibration: CalibrationSet, *,
                   logits: str | None = None, per_channel: bool = True,
                   reduce_range: bool = False, keep_float: Iterable[str] = ()) -> QuantizedModel:
    """Quantise the unary part of ``model`` to INT8 (QDQ), leaving everything after the
    unary logits (the CRF) as it is.

    Args:
        model: an ONNX graph whose input ``image`` (float32 ``[N, 3, H, W]`` RGB 0..255) feeds
            a unary network producing ``logits``; the rest of the graph (the CRF, in any
            export flavour) is kept. Not modified.
        calibration: frames from :func:`calibration_set`.
        logits: the unary/CRF boundary; default :func:`unary_boundary` (``unary_labels``'s
            ArgMax input). For a unary-only graph, its output.
        per_channel: one weight scale per output channel (default; needed for accuracy on
            networks whose channels differ in range, e.g. after folded batch norm).
        reduce_range: 7-bit weights, ONNX Runtime's advice for x86-64 CPUs *without* VNNI
            (their 16-bit intermediate sums can saturate).
        keep_float: names of further unary nodes to leave float.

    Returns:
        :class:`QuantizedModel`: a new ``ModelProto`` whose metadata gains
        :data:`QUANTIZATION_KEY` (resealed when ``model`` carried a digest:
        :func:`convcrf_deploy.exported_model.seal`), and the report.

    Raises:
        QuantizationError: no boundary, the unary contains custom-domain (ConvCRF) nodes, or
            ONNX Runtime's quantiser failed or changed the opset.
    """
    from onnxruntime import __version__ as ort_version
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)

    from ..exported_model import extract_part

    if not len(calibration):
        raise CalibrationError("no calibration frames")
    logits = unary_boundary(model, logits)
    unary = extract_part(model, [IMAGE_INPUT], [logits])
    del unary.metadata_props[:]
    del unary.functions[:]
    _name_nodes(unary)
    custom = sorted({n.op_type for n in unary.graph.node if n.domain not in ("", "ai.onnx")})
    if custom:
        raise QuantizationError(f"the unary part (image -> {logits}) contains {custom} nodes: "
                                "the boundary is wrong; pass logits= the unary's output")
    keep = float_nodes(unary, logits)
    names = {n.name for n in unary.graph.node}
    for name in keep_float:
        if name not in names:
            raise QuantizationError(f"keep_float: the unary has no node {name!r}")
        keep.setdefault(name, "asked")

    class Frames(CalibrationDataReader):
        def __init__(self):
            self._iterator = iter(calibration.inputs)

        def get_next(self):
            image = next(self._iterator, None)
            return None if image is None else {IMAGE_INPUT: image}

    with tempfile.TemporaryDirectory(prefix="convcrf-int8-") as folder, _quiet_quantizer():
        source, target = Path(folder) / "unary.onnx", Path(folder) / "unary.int8.onnx"
        onnx.save(unary, str(source))
        try:
            quantize_static(
                str(source), str(target), Frames(), quant_format=QuantFormat.QDQ,
                per_channel=per_channel, reduce_range=reduce_range,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                nodes_to_exclude=sorted(keep), calibrate_method=CalibrationMethod.MinMax,
                calibration_providers=["CPUExecutionProvider"],
                extra_options={"QuantizeBias": False, "QDQKeepRemovableActivations": True,
                               "WeightSymmetric": True})
        except Exception as exc:  # noqa: BLE001 - the quantiser raises many kinds
            raise QuantizationError(describe_error(
                exc, f"ONNX Runtime's quantize_static failed on the unary "
                     f"({type(exc).__name__})")) from exc
        quantized = onnx.load(str(target))
    _check_opsets(unary, quantized)
    _drop_logits_qdq(quantized, logits)
    spliced = _splice(model, unary, quantized)
    counts: dict[str, int] = {}
    for node in _quantized_compute_nodes(quantized):
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    report = QuantizationReport(
        calibration_frames=len(calibration), calibration_source=calibration.source,
        quantized_nodes=counts, float_nodes=keep, logits=logits, per_channel=per_channel,
        reduce_range=reduce_range, tool=f"onnxruntime {ort_version} quantize_static")
    props = {p.key: p.value for p in spliced.metadata_props}
    props[QUANTIZATION_KEY] = report.to_json()
    del spliced.metadata_props[:]
    onnx.helper.set_model_props(spliced, props)
    from ..exported_model import DIGEST_KEY, LEGACY_DIGEST_KEY, seal
    if DIGEST_KEY in props or LEGACY_DIGEST_KEY in props:
        seal(spliced)           # a sealed input stays loadable: its digest covers the new graph
    return QuantizedModel(spliced, report)


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give every node a unique name (the quantiser selects nodes by name; other tools'
    graphs often leave names empty or repeat them)."""
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            base = node.name or f"{node.op_type}_{index}"
            name, suffix = base, 1
            while name in seen:
                name, suffix = f"{base}_{suffix}", suffix + 1
            node.name = name
        seen.add(node.name)


@contextlib.contextmanager
def _quiet_quantizer():
    """quantize_static advises pre-processing (symbolic shape inference, graph optimisation)
    through the root logger on every call; the exported graph is already optimised (batch
    norm folded, constants folded by the exporter), so the advice is noise here."""
    class Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "pre-process" not in record.getMessage()

    drop = Drop()
    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _default_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _check_opsets(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    if _default_opset(after) != _default_opset(before):
        raise QuantizationError(f"ONNX Runtime's quantiser changed the opset from "
                                f"{_default_opset(before)} to {_default_opset(after)}; export "
                                f"with --opset {_default_opset(after)}")
    extra = {o.domain for o in after.opset_import} - {o.domain for o in before.opset_import}
    if extra - {"", "ai.onnx"}:
        raise QuantizationError(f"ONNX Runtime's quantiser added operator domains {sorted(extra)}"
                                " that other runtimes lack")


def _quantized_compute_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes that compute on int8 data: weighted layers whose data and weight come from
    DequantizeLinear nodes, and other nodes between a DequantizeLinear and a QuantizeLinear
    (ONNX Runtime fuses such groups into QLinear* kernels, TensorRT into int8 layers)."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    quantized_inputs = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    chosen = []
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or not node.input:
            continue
        if node.op_type in WEIGHTED_OPS:
            if node.input[0] in dequantized and len(node.input) > 1 \
                    and node.input[1] in dequantized:
                chosen.append(node)
        elif node.input[0] in dequantized and node.input[0] not in initializers \
                and any(o in quantized_inputs for o in node.output):
            chosen.append(node)
    return chosen


def _drop_logits_qdq(model: onnx.ModelProto, logits: str) -> None:
    """If the logits come out of a QuantizeLinear -> DequantizeLinear pair (a network whose
    last weighted layer produces them), drop the pair: the CRF reads the float tensor."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    dq = producer.get(logits)
    if dq is None or dq.op_type != "DequantizeLinear":
        return
    q = producer.get(dq.input[0])
    if q is None or q.op_type != "QuantizeLinear":
        return
    consumers = [n for n in graph.node if q.output[0] in n.input]
    if consumers != [dq]:
        return  # the quantised tensor is used elsewhere: keep the pair, add a float path
    float_name = q.input[0]
    for node in graph.node:
        if node is not q:
            for index, name in enumerate(node.output):
                if name == float_name:
                    node.output[index] = logits
            for index, name in enumerate(node.input):
                if name == float_name:
                    node.input[index] = logits
    graph.node.remove(dq)
    graph.node.remove(q)


def _tensor_names(nodes: Iterable[onnx.NodeProto]) -> set[str]:
    return {name for node in nodes for name in (*node.input, *node.output) if name}


def _splice(model: onnx.ModelProto, unary: onnx.ModelProto,
            quantized: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with the nodes of ``unary`` replaced by those of ``quantized``: the quantised
    unary first (it reads only ``image`` and its initialisers), then the rest in its order.
    Names the quantiser introduced that the rest of the graph also uses are renamed."""
    graph = model.graph
    unary_outputs = {o for n in unary.graph.node for o in n.output}
    rest = [n for n in graph.node if not set(n.output) & unary_outputs]
    rest_names = _tensor_names(rest) | {o.name for o in graph.output} | {
        n.name for n in rest}
    original = _tensor_names(unary.graph.node) | {t.name for t in unary.graph.initializer}
    originals = {t.name: t for t in graph.initializer}

    renames: dict[str, str] = {}

    def fresh(name: str) -> str:
        candidate, index = f"{name}_int8", 1
        while candidate in rest_names or candidate in renames.values():
            candidate, index = f"{name}_int8_{index}", index + 1
        return candidate

    new_initializers = []
    for tensor in quantized.graph.initializer:
        same = (tensor.name in originals
                and originals[tensor.name].SerializeToString() == tensor.SerializeToString())
        if same:
            continue                         # unchanged float initialiser, kept below
        if tensor.name in rest_names:
            renames[tensor.name] = fresh(tensor.name)
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        copy.name = renames.get(tensor.name, tensor.name)
        new_initializers.append(copy)
    for name in _tensor_names(quantized.graph.node) - original:
        if name in rest_names and name not in renames:
            renames[name] = fresh(name)
    nodes = []
    for node in quantized.graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        for index, name in enumerate(copy.input):
            copy.input[index] = renames.get(name, name)
        for index, name in enumerate(copy.output):
            copy.output[index] = renames.get(name, name)
        if copy.name in rest_names:
            copy.name = fresh(copy.name)
        nodes.append(copy)

    result = onnx.ModelProto()
    result.CopyFrom(model)
    del result.graph.node[:]
    result.graph.node.extend([*nodes, *rest])
    used = _tensor_names(result.graph.node)
    kept = [t for t in graph.initializer if t.name in used]
    del result.graph.initializer[:]
    result.graph.initializer.extend([*kept, *new_initializers])
    produced = {o for n in result.graph.node for o in n.output}
    value_info = [v for v in graph.value_info if v.name in produced]
    del result.graph.value_info[:]
    result.graph.value_info.extend(value_info)
    return result


# ---- verification --------------------------------------------------------------------------------

@dataclass
class Int8VerificationResult:
    """INT8 graph vs the float graph it was made from, on calibration frames."""

    backend: str
    frames: int
    size: tuple[int, int]
    label_agreement: float              # CRF labels (``labels``)
    unary_label_agreement: float | None  # ``unary_labels``, when the graph has them
    min_label_agreement: float = MIN_LABEL_AGREEMENT

    @property
    def failed(self) -> list[str]:
        """The criteria that failed, each naming its figure and its threshold."""
        need = f"need {100 * self.min_label_agreement:g} %"
        failed = []
        if not self.label_agreement >= self.min_label_agreement:
            failed.append(f"CRF labels agree with the float graph on "
                          f"{100 * self.label_agreement:.2f} % of pixels ({need})")
        if self.unary_label_agreement is not None \
                and not self.unary_label_agreement >= self.min_label_agreement:
            failed.append(f"unary labels agree with the float graph on "
                          f"{100 * self.unary_label_agreement:.2f} % of pixels ({need})")
        return failed

    @property
    def passed(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        unary = ("" if self.unary_label_agreement is None
                 else f", unary labels {100 * self.unary_label_agreement:.2f} %")
        head = (f"INT8 check {'PASSED' if self.passed else 'FAILED'} ({self.backend}, INT8 vs "
                f"float graph on {self.frames} calibration frame(s) at {self.size[0]}x"
                f"{self.size[1]}): labels agree on {100 * self.label_agreement:.2f} %{unary} "
                f"(need {100 * self.min_label_agreement:g} % each)")
        return head if self.passed else f"{head}; failed: {'; '.join(self.failed)}"


def verify_int8(float_model: onnx.ModelProto, int8_model: onnx.ModelProto,
                calibration: CalibrationSet, *, flavor: str,
                frames: int = VERIFY_FRAMES,
                min_label_agreement: float = MIN_LABEL_AGREEMENT) -> Int8VerificationResult:
    """Run both graphs on the first ``frames`` calibration frames (batch 1) and compare their
    labels: per-pixel agreement of ``labels`` (after the CRF; the output's argmax for a
    unary-only graph) and of ``unary_labels``. Quantisation moves logits by design, so the
    criterion is agreement of decisions, not a bound on values.

    Both graphs run in ONNX Runtime; a plugin-flavour graph (whose ConvCRF nodes no CPU runtime
    has) runs with the standard-op bodies of those nodes attached, i.e. as the single-file
    flavour of the same graph (:func:`~convcrf_deploy.export.onnx_ops.local_functions`).

    Raises:
        convcrf_deploy.export.verify.VerificationError: the INT8 graph fails the ONNX checker
            or strict shape inference.
    """
    import onnxruntime as ort

    from .verify import check_graph

    check_graph(int8_model)
    inputs = calibration.inputs[:max(1, frames)]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sessions = [inference_session(_with_crf_bodies(model).SerializeToString(), options)
                for model in (float_model, int8_model)]
    backend = f"ONNX Runtime {ort.__version__} CPU" + (
        ", ConvCRF nodes as their standard-op bodies" if flavor == "plugin" else "")
    agree = unary_agree = pixels = 0
    has_unary = False
    for image in inputs:
        results = []
        for session in sessions:
            outputs = session.run(None, {IMAGE_INPUT: image})
            named = dict(zip([o.name for o in session.get_outputs()], outputs))
            labels = named["labels"] if "labels" in named else outputs[0].argmax(1)
            results.append((labels, named.get("unary_labels")))
        (float_labels, float_unary), (int8_labels, int8_unary) = results
        agree += int((float_labels == int8_labels).sum())
        pixels += float_labels.size
        if float_unary is not None:
            has_unary = True
            unary_agree += int((float_unary == int8_unary).sum())
    size = tuple(int(v) for v in inputs[0].shape[2:])
    return Int8VerificationResult(
        backend=backend, frames=len(inputs), size=size, label_agreement=agree / pixels,
        unary_label_agreement=unary_agree / pixels if has_unary else None,
        min_label_agreement=min_label_agreement)


def _with_crf_bodies(model: onnx.ModelProto) -> onnx.ModelProto:
    """:func:`~convcrf_deploy.export.onnx_ops.with_function_bodies`, its refusal as a
    :class:`QuantizationError`."""
    from . import onnx_ops

    try:
        return onnx_ops.with_function_bodies(model)
    except ValueError as exc:
        raise QuantizationError(str(exc)) from None


def is_int8(model: onnx.ModelProto) -> bool:
    """Whether ``model`` was quantised by :func:`quantize_unary` (its metadata says so)."""
    return any(p.key == QUANTIZATION_KEY for p in model.metadata_props)


def quantization_info(model: onnx.ModelProto) -> dict | None:
    """The :data:`QUANTIZATION_KEY` record of ``model`` (``None`` when it is not INT8)."""
    for prop in model.metadata_props:
        if prop.key == QUANTIZATION_KEY:
            return json.loads(prop.value)
    return None


__all__ = ["MIN_CALIBRATION_FRAMES", "DEFAULT_MAX_CALIBRATION_FRAMES", "MIN_LABEL_AGREEMENT",
           "CalibrationError", "QuantizationError", "CalibrationSet", "QuantizationReport",
           "QuantizedModel", "Int8VerificationResult", "calibration_set", "unary_boundary",
           "float_nodes", "quantize_unary", "verify_int8", "is_int8", "quantization_info"]
