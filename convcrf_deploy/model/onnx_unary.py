"""A unary network the user already has as an ONNX file (mmsegmentation, tf2onnx, a vendor,
``torch.onnx``): its interface read from the file, and the network run in ONNX Runtime.

Such a file is the unary alone: one image input and the class logits. Paper Sec. 5.2 trains
the CRF on a *fixed* unary, and a file is as fixed as a unary gets, so the toolkit takes it as
it is: :func:`inspect_onnx_unary` reads its interface, :class:`OnnxUnary` runs it as a
(frozen, non-differentiable) ``nn.Module`` so that a :class:`SegmentationModel` around it
trains a CRF (``convcrf-train crf --unary``) and serves as the reference the attached graph is
verified against, and :mod:`convcrf_deploy.export.attach` splices the CRF's graph after it
(``convcrf-export --unary``).

What the file may be (anything else is refused with one line naming what was found):

* **input**: one tensor (initializers listed as inputs by old exporters do not count),
  ``[N, 3, H, W]`` (NCHW) or ``[N, H, W, 3]`` (NHWC, as tf2onnx writes), of type float32 or
  float16 (the normalised image ``(rgb / 255 - mean) / std``, with ``mean``/``std`` from the
  metadata: ``--mean``/``--std``/``--metadata``) or uint8 (RGB 0..255 as it is: the network
  normalises itself). N, H and W may be fixed or dynamic (H and W both, or neither).
* **output**: the logits, ``[N, C, h, w]`` for an NCHW input, ``[N, h, w, C]`` for an NHWC one
  (or the other layout when the probe shows it), float32 or float16, at any resolution
  ``h x w`` (resized to the input bilinearly, ``align_corners=False``, as
  :class:`SegmentationModel` does for PyTorch unaries). A network that ends in a softmax gives
  probabilities; they are recognised (non-negative, summing to 1 over the classes on the probe
  image) and their log is taken as the logits. When the file has several outputs, name the
  logits (``logits_output``).

The class count and the layout of the logits come from running the file once on a probe image
(its fixed size, or the metadata's ``input_size``).

Loading an ONNX file runs no Python code from it; ONNX Runtime executes its operators (custom
domains only if their libraries are registered, which this module never does).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..errors import describe_error
from ..metadata import ModelMetadata
from .checkpoint import CheckpointError
from ..ort_session import inference_session

#: ONNX element types an image input may have -> numpy dtype.
INPUT_TYPES = {1: np.float32, 10: np.float16, 2: np.uint8}     # FLOAT, FLOAT16, UINT8
#: ONNX element types the logits may have.
OUTPUT_TYPES = {1: np.float32, 10: np.float16}
#: Probe size when neither the file nor the metadata fixes one: multiples of 128 (most
#: networks' strides divide it), height != width (so the layout of the logits shows).
PROBE_SIZE = (256, 384)

_TYPE_NAMES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64",
               9: "bool", 10: "float16", 11: "float64", 16: "bfloat16"}


class OnnxUnaryError(CheckpointError):
    """The file is not an ONNX unary this toolkit can use; the one-line message names what
    was found and what is supported."""


def _type_name(elem_type: int) -> str:
    return _TYPE_NAMES.get(elem_type, f"ONNX type {elem_type}")


@dataclass(frozen=True)
class OnnxUnaryInfo:
    """The interface of an ONNX unary (:func:`inspect_onnx_unary`).

    Attributes:
        path: the file.
        sha256: of the file's bytes (recorded in the attached graph's metadata).
        input_name, output_name: the image input and the logits output.
        input_layout, output_layout: ``"NCHW"`` or ``"NHWC"``.
        input_dtype: ``np.float32``, ``np.float16`` or ``np.uint8``.
        output_dtype: ``np.float32`` or ``np.float16``.
        batch: the fixed batch size, or ``None`` (dynamic).
        fixed_size: the fixed ``(H, W)``, or ``None`` (dynamic).
        num_classes: ``C``.
        output_size, probe_size: ``(h, w)`` of the logits for an input of ``probe_size``.
        probabilities: the output is a softmax (its log is taken as the logits).
        opset: the file's default-domain opset; ``producer``: who wrote it.
    """

    path: Path
    sha256: str
    input_name: str
    output_name: str
    input_layout: str
    output_layout: str
    input_dtype: Any
    output_dtype: Any
    batch: int | None
    fixed_size: tuple[int, int] | None
    num_classes: int
    output_size: tuple[int, int]
    probe_size: tuple[int, int]
    probabilities: bool
    opset: int
    producer: str

    @property
    def resized(self) -> bool:
        """Whether the logits come at another resolution than the input (then resized)."""
        return self.output_size != self.probe_size

    def describe(self) -> str:
        """One line for reports, e.g. ``"input 'x' float32 NCHW [N, 3, H, W] (normalised),
        logits 'y' float32 NCHW, 5 classes at 1/4 resolution (resized bilinearly)"``."""
        n = "N" if self.batch is None else str(self.batch)
        h, w = ("H", "W") if self.fixed_size is None else map(str, self.fixed_size)
        dims = [n, "3", h, w] if self.input_layout == "NCHW" else [n, h, w, "3"]
        kind = ("RGB 0..255" if self.input_dtype == np.uint8 else "normalised")
        ratio = self.probe_size[0] / self.output_size[0]
        scale = ("full resolution" if not self.resized else
                 f"1/{ratio:g} resolution (resized bilinearly)" if ratio == int(ratio) else
                 f"{self.output_size[0]}x{self.output_size[1]} for {self.probe_size[0]}x"
                 f"{self.probe_size[1]} (resized bilinearly)")
        what = "probabilities (their log is taken as logits)" if self.probabilities else "logits"
        return (f"input {self.input_name!r} {np.dtype(self.input_dtype).name} "
                f"{self.input_layout} [{', '.join(dims)}] ({kind}); {what} "
                f"{self.output_name!r} {np.dtype(self.output_dtype).name} {self.output_layout}, "
                f"{self.num_classes} classes at {scale}")


def read_onnx_unary(path: str | Path):
    """The ``ModelProto`` of an ONNX unary file (external data loaded from beside it).

    Raises:
        OnnxUnaryError: the file is missing, empty or not ONNX.
    """
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        from .checkpoint import CheckpointNotFoundError
        raise CheckpointNotFoundError(f"ONNX unary not found: {path}")
    if path.stat().st_size == 0:
        raise OnnxUnaryError(f"{path} is empty (0 bytes), not an ONNX model")
    with open(path, "rb") as handle:
        if handle.read(4) == b"PK\x03\x04":
            raise OnnxUnaryError(f"{path} is a zip archive (a PyTorch checkpoint, .pt2 or "
                                 "TorchScript?), not ONNX: give it as the model, not as the "
                                 "ONNX unary (convcrf-export MODEL, convcrf-train crf "
                                 "--unary-model MODEL)")
    try:
        model = onnx.load(str(path))
    except onnx.checker.ValidationError as exc:   # not a ValueError: external data it names
        raise OnnxUnaryError(describe_error(   # is missing, or lies outside the model's folder
            exc, f"{path}'s external data cannot be read", "keep the data file(s) saved with "
            "the model beside it, or save the model again as one file")) from None
    except (DecodeError, ValueError, RuntimeError, EOFError, UnicodeDecodeError, OSError) as exc:
        raise OnnxUnaryError(describe_error(exc, f"{path} is not a readable ONNX model",
                                            "export it again, or give the intact file")) from None
    if not model.graph.node and not model.graph.output:
        raise OnnxUnaryError(f"{path} is not an ONNX model (it holds no graph)")
    if not _names_are_text(model.graph):
        # protobuf hands back bytes for a string field that is not valid UTF-8; ONNX tools
        # (the opset converter, ONNX Runtime's Python API) then fail with a traceback.
        raise OnnxUnaryError(f"{path} is damaged: a name in its graph is not valid UTF-8 text "
                             "(changed bytes); export it again, or give the intact file")
    return model


def _names_are_text(graph) -> bool:
    """Whether every name, input and output of ``graph``'s nodes, values and initializers
    (and of its subgraphs) decoded as text."""
    values = [*graph.input, *graph.output, *graph.value_info, *graph.initializer]
    if any(not isinstance(v.name, str) for v in values):
        return False
    for node in graph.node:
        strings = [node.name, node.op_type, node.domain, *node.input, *node.output]
        if any(not isinstance(text, str) for text in strings):
            return False
        if any(a.HasField("g") and not _names_are_text(a.g) for a in node.attribute):
            return False
    return True


def _dims(value) -> list:
    """A value's shape: ints for fixed axes, ``None`` for dynamic ones; ``None`` for no shape."""
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in tensor.shape.dim]


def _image_input(model, path: Path) -> tuple[str, str, Any, int | None, tuple | None]:
    """``(name, layout, dtype, batch, fixed_size)`` of the one image input."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    if len(inputs) != 1:
        names = ", ".join(f"{v.name!r}" for v in inputs) or "none"
        raise OnnxUnaryError(
            f"{path.name} has {len(inputs)} inputs ({names}); an ONNX unary takes one image "
            "input: export the network with its other inputs fixed (as constants)")
    value = inputs[0]
    if not value.type.HasField("tensor_type"):
        raise OnnxUnaryError(f"{path.name}: input {value.name!r} is not a tensor")
    elem = value.type.tensor_type.elem_type
    if elem not in INPUT_TYPES:
        raise OnnxUnaryError(
            f"{path.name}: input {value.name!r} is {_type_name(elem)}; supported image inputs "
            "are float32 or float16 (normalised) and uint8 (RGB 0..255)")
    dims = _dims(value)
    if dims is None or len(dims) != 4:
        raise OnnxUnaryError(
            f"{path.name}: input {value.name!r} has shape {dims}; an image input is "
            "[N, 3, H, W] (NCHW) or [N, H, W, 3] (NHWC)")
    if dims[1] == 3 or (dims[1] is None and dims[3] != 3):
        layout, spatial = "NCHW", dims[2:]
    elif dims[3] == 3:
        layout, spatial = "NHWC", dims[1:3]
    else:
        raise OnnxUnaryError(
            f"{path.name}: input {value.name!r} has shape {dims}, with no axis of 3 channels "
            "at 1 (NCHW) or 3 (NHWC); an ONNX unary takes an RGB image")
    if (spatial[0] is None) != (spatial[1] is None):
        raise OnnxUnaryError(
            f"{path.name}: input {value.name!r} fixes one side of the image only (shape "
            f"{dims}); export the network with both height and width fixed, or both dynamic")
    fixed = tuple(spatial) if spatial[0] is not None else None
    return value.name, layout, INPUT_TYPES[elem], dims[0], fixed


def _logits_output(model, path: Path, wanted: str | None) -> tuple[str, Any]:
    """``(name, dtype)`` of the logits output."""
    outputs = list(model.graph.output)
    names = ", ".join(f"{v.name!r}" for v in outputs)
    if wanted is not None:
        chosen = [v for v in outputs if v.name == wanted]
        if not chosen:
            raise OnnxUnaryError(f"{path.name} has no output {wanted!r} (its outputs: {names})")
    else:
        chosen = [v for v in outputs if v.type.tensor_type.elem_type in OUTPUT_TYPES
                  and (_dims(v) is None or len(_dims(v)) == 4)]
        if not chosen:
            kinds = ", ".join(f"{v.name!r} {_type_name(v.type.tensor_type.elem_type)} "
                              f"{_dims(v)}" for v in outputs)
            raise OnnxUnaryError(
                f"{path.name} has no float [N, C, h, w] output (its outputs: {kinds}); the CRF "
                "needs the unary's class logits: export the network without its final argmax")
        if len(chosen) > 1:
            raise OnnxUnaryError(
                f"{path.name} has {len(chosen)} float 4-D outputs ({names}); name the logits "
                "(convcrf-export --output-key NAME, logits_output=NAME)")
    value = chosen[0]
    elem = value.type.tensor_type.elem_type
    if elem not in OUTPUT_TYPES:
        raise OnnxUnaryError(f"{path.name}: output {value.name!r} is {_type_name(elem)}; the "
                             "logits must be float32 or float16")
    return value.name, OUTPUT_TYPES[elem]


def _session(model_bytes: bytes, path: Path, threads: int | None = None):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 4     # failures are reported by the caller, in one line
    if threads:
        options.intra_op_num_threads = threads
    try:
        return inference_session(model_bytes, options)
    except Exception as exc:  # onnxruntime's errors share no useful base class
        raise OnnxUnaryError(describe_error(
            exc, f"ONNX Runtime cannot load {path.name}",
            "export it again, or give the intact file")) from None


def _spatial_layout(shape: tuple[int, ...], probe: tuple[int, int], preferred: str,
                    classes: int | None) -> str:
    """Which axes of a 4-D output are its height and width, for an input of ``probe``: the
    layout whose spatial axes keep the input's aspect ratio (ties: ``preferred``)."""
    def misfit(layout: str) -> float:
        h, w = shape[2:] if layout == "NCHW" else shape[1:3]
        c = shape[1] if layout == "NCHW" else shape[3]
        if h < 1 or w < 1 or (classes is not None and c != classes):
            return float("inf")
        return abs(np.log((h / probe[0]) / (w / probe[1])))
    other = "NHWC" if preferred == "NCHW" else "NCHW"
    return other if misfit(other) + 1e-6 < misfit(preferred) else preferred


def _looks_like_probabilities(output: np.ndarray, layout: str) -> bool:
    axis = 1 if layout == "NCHW" else 3
    values = output.astype(np.float32)
    return bool(values.min() >= 0 and values.max() <= 1 + 1e-3
                and np.abs(values.sum(axis=axis) - 1).max() < 1e-2 and output.shape[axis] > 1)


def probe_image(batch: int, size: tuple[int, int], layout: str, dtype) -> np.ndarray:
    """A smooth random image (seeded) in the unary's input convention, for probing."""
    rng = np.random.default_rng(0)
    height, width = size
    small = rng.uniform(0, 255, (batch, 3, max(1, height // 8), max(1, width // 8)))
    rgb = torch.nn.functional.interpolate(torch.from_numpy(small).float(), size=size,
                                          mode="bilinear", align_corners=False).numpy()
    if dtype == np.uint8:
        image = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    else:
        mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
        std = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
        image = ((rgb / 255 - mean) / std).astype(dtype)
    return image.transpose(0, 2, 3, 1).copy() if layout == "NHWC" else image


def inspect_onnx_unary(path: str | Path, *, probe_size: tuple[int, int] | None = None,
                       logits_output: str | None = None, num_classes: int | None = None,
                       model=None, session=None) -> OnnxUnaryInfo:
    """Read the interface of an ONNX unary and run it once on a probe image.

    Args:
        probe_size: ``(H, W)`` to probe a dynamic-size file at (default :data:`PROBE_SIZE`);
            a fixed-size file is probed at its size.
        logits_output: the output holding the logits when the file has several.
        num_classes: the class count expected (from the CRF or the class names), to tell
            the layout of the logits apart when the probe alone cannot.
        model, session: the already loaded ``ModelProto`` / ONNX Runtime session.

    Raises:
        OnnxUnaryError: the file is not an ONNX unary of the module docstring's kind, or
            running it on the probe image fails (the message names the size; give another
            with the metadata's ``input_size``).
    """
    path = Path(path)
    model = model if model is not None else read_onnx_unary(path)
    input_name, layout, dtype, batch, fixed = _image_input(model, path)
    output_name, out_dtype = _logits_output(model, path, logits_output)
    size = fixed or tuple(probe_size or PROBE_SIZE)
    session = session or _session(model.SerializeToString(), path)
    image = probe_image(batch or 1, size, layout, dtype)
    try:
        (output,) = session.run([output_name], {input_name: image})
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors share no useful base class
        raise OnnxUnaryError(describe_error(
            exc, f"{path.name}: running it on a {size[1]}x{size[0]} (WxH) probe image failed",
            "give a size it runs at as the metadata's input_size (--metadata with "
            "\"input_size\": [H, W])")) from None
    if output.ndim != 4 or output.shape[0] != image.shape[0]:
        raise OnnxUnaryError(
            f"{path.name}: output {output_name!r} has shape {list(output.shape)} for an input "
            f"of {list(image.shape)}; the logits are [N, C, h, w] (or [N, h, w, C])")
    out_layout = _spatial_layout(output.shape, size, layout, num_classes)
    classes = output.shape[1] if out_layout == "NCHW" else output.shape[3]
    out_size = tuple(output.shape[2:] if out_layout == "NCHW" else output.shape[1:3])
    if classes < 2:
        raise OnnxUnaryError(
            f"{path.name}: output {output_name!r} has shape {list(output.shape)}, one channel "
            "(a label map or one score), not one logit per class; the CRF needs the class "
            "logits: export the network without its final argmax (a single foreground class: "
            "2 logits, background and foreground)")
    if not np.isfinite(output.astype(np.float32)).all():
        raise OnnxUnaryError(f"{path.name}: its output on the probe image holds NaN or "
                             "infinite values")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    producer = " ".join(filter(None, [model.producer_name, model.producer_version])) or "unknown"
    return OnnxUnaryInfo(
        path=path, sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        input_name=input_name, output_name=output_name, input_layout=layout,
        output_layout=out_layout, input_dtype=dtype, output_dtype=out_dtype, batch=batch,
        fixed_size=fixed, num_classes=int(classes), output_size=(int(out_size[0]),
                                                                 int(out_size[1])),
        probe_size=tuple(size), probabilities=_looks_like_probabilities(output, out_layout),
        opset=opset, producer=producer)


class OnnxUnary(nn.Module):
    """An ONNX unary run in ONNX Runtime (CPU) as a frozen ``nn.Module``.

    Shapes: normalised image float ``(N, 3, H, W)`` (``SegmentationModel.normalize``; for a
    uint8 input the "normalisation" is the identity, see :func:`metadata_for_onnx_unary`)
    -> logits float32 ``(N, C, h, w)`` at the network's own resolution (the
    ``SegmentationModel`` around it resizes them). Converts to the file's layout and type,
    runs a file of fixed batch image by image, takes the log of probability outputs. No
    gradient flows through it (the unary is fixed: paper Sec. 5.2).

    Thread-safe: calls only run its ONNX Runtime session (``InferenceSession.run`` is). Deep
    copies and pickles carry the file's bytes and open a session of their own.

    Raises (on call):
        ValueError: the image size differs from a fixed-size file's, or ONNX Runtime fails
            (one line).
    """

    def __init__(self, info: OnnxUnaryInfo, model_bytes: bytes, threads: int | None = None,
                 session=None):
        super().__init__()
        self.info = info
        self._model_bytes = model_bytes
        self.threads = threads
        self.session = session or _session(model_bytes, info.path, threads)

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["session"]
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.session = _session(self._model_bytes, self.info.path, self.threads)

    def train(self, mode: bool = True) -> "OnnxUnary":
        self.training = bool(mode)   # nothing to switch: the file is an inference graph
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        info = self.info
        if info.fixed_size is not None and tuple(x.shape[-2:]) != info.fixed_size:
            raise ValueError(
                f"{info.path.name} takes {info.fixed_size[0]}x{info.fixed_size[1]} (HxW) images "
                f"only, got {x.shape[-2]}x{x.shape[-1]}: resize the image to its size first")
        array = x.detach().float().cpu().numpy()
        if info.input_dtype == np.uint8:
            array = np.clip(np.round(array), 0, 255).astype(np.uint8)
        else:
            array = array.astype(info.input_dtype)
        if info.input_layout == "NHWC":
            array = np.ascontiguousarray(array.transpose(0, 2, 3, 1))
        chunks = ([array] if info.batch is None else
                  [array[i:i + info.batch] for i in range(0, len(array), info.batch)])
        if info.batch is not None and len(array) % info.batch:
            raise ValueError(f"{info.path.name} takes batches of {info.batch} images, got "
                             f"{len(array)}")
        outputs = []
        for chunk in chunks:
            try:
                (out,) = self.session.run([info.output_name], {info.input_name: chunk})
            except Exception as exc:  # noqa: BLE001 - onnxruntime's errors share no base class
                    raise ValueError(describe_error(
                    exc, f"{info.path.name} failed in ONNX Runtime on an input of shape "
                    f"{list(chunk.shape)}")) from None
            outputs.append(out)
        logits = np.concatenate(outputs).astype(np.float32)
        if info.output_layout == "NHWC":
            logits = logits.transpose(0, 3, 1, 2)
        if info.probabilities:
            logits = np.log(np.maximum(logits, PROBABILITY_FLOOR))
        return torch.from_numpy(np.ascontiguousarray(logits)).to(x.device)

    def extra_repr(self) -> str:
        return f"{self.info.path.name}: {self.info.describe()}"


#: Probabilities are clamped to this before their log is taken as logits (log 0 = -inf).
PROBABILITY_FLOOR = 1e-8


def metadata_for_onnx_unary(settings, info: OnnxUnaryInfo) -> ModelMetadata:
    """The :class:`ModelMetadata` of ``settings`` (a :class:`~convcrf_deploy.model.
    UnarySettings`) for the unary ``info``: as for other unary files, with the file's fixed
    size as the default ``input_size`` (resize ``"stretch"``); for a uint8 input the
    normalisation is the identity (``mean`` 0, ``std`` 1/255: the graph feeds RGB 0..255 and
    the network normalises itself), and ``--mean``/``--std`` are refused.

    Raises:
        OnnxUnaryError: mean/std given for a uint8 input; see also
            :func:`~convcrf_deploy.model.unary_files.metadata_for_unary`.
    """
    from dataclasses import replace as _replace

    from .unary_files import UnarySettings, metadata_for_unary
    fields = dict(settings.metadata)
    if info.input_dtype == np.uint8:
        given = [name for name in ("mean", "std") if name in fields]
        if given:
            raise OnnxUnaryError(
                f"{info.path.name} takes uint8 RGB 0..255 and normalises the image itself; "
                f"--{'/--'.join(given)} do not apply to it")
        fields.update(mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3)
    settings = _replace(settings, metadata=fields) if isinstance(settings, UnarySettings) \
        else UnarySettings(metadata=fields)
    return metadata_for_unary(settings, info.num_classes, info.path, info.fixed_size)


def load_onnx_unary(path: str | Path, settings=None, *, logits_output: str | None = None,
                    threads: int | None = None, probe_constraints: bool = True):
    """A :class:`SegmentationModel` whose unary is the ONNX file ``path`` run in ONNX Runtime
    (:class:`OnnxUnary`), with the CRF and metadata of ``settings`` (a
    :class:`~convcrf_deploy.model.UnarySettings`: ``--crf``, ``--crf-config``, ``--metadata``,
    ``--class-names``, ``--mean``, ``--std``), in eval mode. Its ``unary_file`` attribute
    names ``path`` (``convcrf-train`` then writes a CRF-only checkpoint) and its
    ``onnx_unary`` attribute holds the :class:`OnnxUnaryInfo`; a unary of one fixed size sets
    ``fixed_input_size`` ``(H, W)``, as the constraint probe does for a PyTorch network of one
    size.

    The probe image has the metadata's ``input_size`` when given (else :data:`PROBE_SIZE`).
    With ``probe_constraints`` a unary of dynamic size whose metadata records no input
    constraints gets the ones found by running it at a few sizes
    (:func:`convcrf_deploy.model.constraints.with_probed_constraints`), so that
    ``forward`` pads images to sizes it runs at, as the runtime does.

    Raises:
        OnnxUnaryError, CheckpointError (``ValueError``\\ s): a file of another kind, class
            counts that disagree (the unary's output, the CRF checkpoint, ``num_classes``,
            the class names), invalid settings.
    """
    from .segmentation import SegmentationModel
    from .unary_files import UnarySettings, crf_for_unary

    settings = settings or UnarySettings()
    path = Path(path)
    model_proto = read_onnx_unary(path)
    size = settings.metadata.get("input_size")
    expected = len(settings.metadata["class_names"]) \
        if settings.metadata.get("class_names") else settings.crf_config.get("num_classes")
    model_bytes = model_proto.SerializeToString()
    session = _session(model_bytes, path, threads)
    info = inspect_onnx_unary(path, probe_size=tuple(size) if size else None,
                              logits_output=logits_output, num_classes=expected,
                              model=model_proto, session=session)
    crf = crf_for_unary(settings, info.num_classes, path)
    metadata = metadata_for_onnx_unary(settings, info)
    try:
        model = SegmentationModel(OnnxUnary(info, model_bytes, threads, session), crf,
                                  metadata, unary_spec=None).eval()
    except ValueError as exc:
        raise OnnxUnaryError(f"{path}: {exc}") from None
    model.unary_file = str(path)
    model.onnx_unary = info
    if info.fixed_size is not None:
        model.fixed_input_size = info.fixed_size   # what every consumer of a fixed size reads
    elif probe_constraints:
        from .constraints import with_probed_constraints
        model = with_probed_constraints(model)
    return model
