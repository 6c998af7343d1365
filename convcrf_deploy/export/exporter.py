"""`export_onnx`: a SegmentationModel (or a part of it) to an ONNX file, in one of three flavours.

Flavours (the ConvCRF ops, docs/ops.md, are the only difference):

* ``"single-file"`` (default): the ops are ``trt.plugins::ConvCRFKernel`` /
  ``ConvCRFMessagePassing`` nodes backed by model-local functions of standard ONNX ops. ONNX
  Runtime (any execution provider) inlines the functions and runs the file as is; TensorRT
  decides per version whether it imports the function bodies or our plugin, so
  ``convcrf-build`` strips the bodies before parsing (docs/tensorrt.md).
* ``"plugin"``: the same nodes without function bodies: only runtimes that have the plugin
  (TensorRT with our library, ONNX Runtime's TensorRT EP) can run it.
* ``"portable"``: the function bodies inlined: standard ONNX only, any runtime.

The graph is traced with the PyTorch dynamo exporter; ``torch.ops.convcrf.*`` calls become the
custom nodes through :func:`convcrf_deploy.export.onnx_ops.translation_table`, and the other
flavours are derived from that graph, so all three compute the same function.

Graph I/O (``part="full"``): ``image`` float32 ``[N, 3, H, W]`` RGB 0..255 (normalised inside
the graph) -> ``probabilities`` ``[N, C, H, W]`` float32, ``labels`` and ``unary_labels``
``[N, H, W]`` int64. ``part="unary"``: ``image`` -> ``logits``; ``part="crf"``: ``logits``,
``image`` -> ``probabilities``, ``labels``. N, H and W are dynamic unless ``static=True``.

The unary may return its logits in any convention of :mod:`convcrf_deploy.model.outputs`
(tensor, tuple, dict, ``.logits``) at any resolution: the graph selects and resizes them.
H and W must meet the unary's input constraints (:mod:`convcrf_deploy.model.constraints`:
probed unless given, recorded in the metadata); the graph is traced and verified at sizes
that do, and the runtime pads frames to them.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import io
import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import onnx
import torch
import torch.nn as nn

from .. import __version__
from ..errors import describe_error
from ..exported_model import GRAPH_IO
from ..install import MissingDependencyError
from ..metadata import ModelMetadata
from ..model.constraints import odd_multiple
from ..progress import Progress
from . import (DEFAULT_FLAVOR, DEFAULT_OPSET, FLAVORS, MAX_OPSET, MIN_OPSET, PARTS,
               onnx_ops, rewrites)

Flavor = Literal["single-file", "plugin", "portable"]  # the values of FLAVORS
Part = Literal["full", "unary", "crf"]  # the values of PARTS
#: ``fp16=`` values: False (fp32), True (unary network and ConvCRF op I/O in fp16), "crf"
#: (the ConvCRF op I/O only: the unary stays fp32, for networks that lose accuracy in fp16).
FP16_CHOICES = (False, True, "crf")


def precision_name(fp16) -> str:
    """The ``convcrf.precision`` metadata value of an ``fp16=`` choice: ``"fp32"``, ``"fp16"``
    (whole graph) or ``"fp16-crf"`` (the ConvCRF op I/O only)."""
    return {False: "fp32", True: "fp16", "crf": "fp16-crf"}[fp16]

#: Graph input and output names per part.
IO_NAMES = {part: (list(inputs), [*required, *optional])
            for part, (inputs, required, optional) in GRAPH_IO.items()}


#: Size at which graphs with dynamic H and W are traced when the unary has no input
#: constraints: distinct, odd, not multiples of any blur factor and not 1 or 2 (PyTorch
#: specialises sizes 0 and 1, and merges axes of equal size, e.g. H == W or H == the example
#: batch of 2, into one symbol). With constraints, :func:`trace_size` picks the nearest size
#: that meets them.
TRACE_SIZE = (61, 83)
#: Largest image side and area the export traces (static) or is asked to verify at (the
#: verification itself keeps within its memory budget: verify.plan_verification).
MAX_SIDE, MAX_PIXELS = 4096, 4096 * 4096


def ir_version_for_opset(opset: int) -> int:
    """The IR version of the first ONNX release that defines ``opset``
    (``onnx.helper.VERSION_TABLE``): what a file with that opset must declare."""
    for _release, ir_version, ai_onnx, *_ in onnx.helper.VERSION_TABLE:
        if ai_onnx >= opset:
            return ir_version
    raise ExportError(f"onnx {onnx.__version__} does not know opset {opset}")


class ExportError(RuntimeError):
    """The model could not be exported; the message names the cause and the fix."""


class ExportDependencyError(ExportError, MissingDependencyError):
    """A library the exporter needs (onnxscript) is not installed: an :class:`ExportError`
    for the API's callers, a :class:`~convcrf_deploy.install.MissingDependencyError` (status 3)
    for the commands."""


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote, and the result of the verification."""

    path: Path
    flavor: str
    part: str
    fp16: bool | str            # an FP16_CHOICES value
    opset: int
    inputs: dict[str, list]
    outputs: dict[str, list]
    node_count: int
    custom_nodes: dict[str, int] = field(default_factory=dict)
    local_functions: int = 0
    verification: object | None = None     # verify.VerificationResult
    #: the unary's input constraints written to the file (1: none), and where they came from
    #: in words ("given", "recorded in the model", "probed at 7 sizes", ...; "" for a CRF).
    pad_multiple: int = 1
    min_size: int = 1
    constraints_source: str = ""
    trace_size: tuple[int, int] | None = None
    unary_source: str = ""      # an ONNX unary the CRF was attached to (export.attach)
    int8: object | None = None              # quantize.QuantizationReport (int8=True)
    int8_verification: object | None = None  # quantize.Int8VerificationResult

    @property
    def ok(self) -> bool:
        """True when the export was verified and passed (or verification was skipped)."""
        return ((self.verification is None or bool(self.verification.passed))
                and (self.int8_verification is None or bool(self.int8_verification.passed)))

    def summary(self) -> str:
        io_text = ", ".join(f"{k} {v}" for k, v in self.inputs.items())
        out_text = ", ".join(f"{k} {v}" for k, v in self.outputs.items())
        precision = {"fp32": "fp32", "fp16": "fp16", "fp16-crf": "fp32 unary, fp16 CRF"}[
            precision_name(self.fp16)]
        if self.int8 is not None:
            crf = "fp16" if self.fp16 else "fp32"
            precision = "int8" if self.part == "unary" else f"int8 unary, {crf} CRF"
        lines = [f"wrote {self.path} ({self.flavor}, part={self.part}, {precision}, "
                 f"opset {self.opset})",
                 f"  inputs:  {io_text}", f"  outputs: {out_text}",
                 f"  {self.node_count} nodes; custom nodes: "
                 f"{self.custom_nodes or 'none'}; local functions: {self.local_functions}"]
        if self.constraints_source:
            words = ModelMetadata(["_"], pad_multiple=self.pad_multiple,
                                  min_size=self.min_size).describe_constraints()
            traced = (f"; traced at {self.trace_size[0]}x{self.trace_size[1]}"
                      if self.trace_size else "")
            lines.append(f"  input constraints: {words} ({self.constraints_source}){traced}")
        if self.unary_source:
            lines.append(f"  unary: {self.unary_source}")
        if self.int8 is not None:
            lines.append("  " + self.int8.summary())
        if self.verification is not None:
            lines.append("  " + self.verification.summary()
                         + (" (the float graph, before quantisation)" if self.int8 else ""))
        if self.int8_verification is not None:
            lines.append("  " + self.int8_verification.summary())
        return "\n".join(lines)


# ---- the traced modules ------------------------------------------------------------------------

class _HalfPrecision(nn.Module):
    """Runs a unary in fp16: input cast to fp16, its logits (selected from its output
    convention by ``output_key``) back to fp32."""

    def __init__(self, module: nn.Module, output_key: str | None):
        super().__init__()
        self.module = module.half()
        self.output_key = output_key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ..model.outputs import select_logits
        return select_logits(self.module(x.half()), self.output_key).float()


def _crf_probabilities(crf, logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """ConvCRF inference through its differentiable path: ``ConvCRF.forward`` also validates
    its inputs with data-dependent checks (finite logits) and may take the fused native path,
    neither of which can be traced."""
    z = logits.float()
    if crf.config.iterations == 0:
        return torch.softmax(z, dim=1)
    kernel = crf.pairwise_kernel(image.float(), z.shape[2], z.shape[3])
    return crf._forward_differentiable(z, kernel)


class _FullGraph(nn.Module):
    """``image [N,3,H,W]`` -> probabilities, labels, unary_labels."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        # unary_logits, not forward_unary: the graph's sizes meet the input constraints (the
        # runtime pads frames), so there is no padding to trace.
        logits = self.model.unary_logits(image)
        crf = self.model.crf
        if crf is None or not self.model.crf_enabled:
            probabilities = torch.softmax(logits.float(), dim=1)
        else:
            probabilities = _crf_probabilities(crf, logits, image)
        return probabilities, probabilities.argmax(dim=1), logits.argmax(dim=1)


class _UnaryGraph(nn.Module):
    """``image [N,3,H,W]`` -> logits ``[N,C,H,W]``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        return self.model.unary_logits(image).float()


class _CRFGraph(nn.Module):
    """``logits [N,C,H,W]``, ``image [N,3,H,W]`` -> probabilities, labels."""

    def __init__(self, crf):
        super().__init__()
        self.crf = crf

    def forward(self, logits: torch.Tensor, image: torch.Tensor):
        probabilities = _crf_probabilities(self.crf, logits, image)
        return probabilities, probabilities.argmax(dim=1)


# ---- trace size ---------------------------------------------------------------------------------

def _side(metadata: ModelMetadata, target: int, blur: int, avoid: tuple[int, ...]) -> int:
    """The smallest valid side >= ``target``: an odd multiple of ``pad_multiple``, >= 3 (not
    1 or 2, which PyTorch specialises or merges with the example batch of 2), not in
    ``avoid``, and not a multiple of the CRF's ``blur`` unless every valid side is one."""
    multiple = metadata.pad_multiple
    side = odd_multiple(multiple, max(target, metadata.min_size, 3), avoid)
    while side % blur == 0 and multiple % blur != 0 or side in avoid:
        side = odd_multiple(multiple, side + 1, avoid)
    return side


def trace_size(metadata: ModelMetadata, blur: int = 1) -> tuple[int, int]:
    """``(H, W)`` at which a graph with dynamic H and W is traced.

    Distinct sides (PyTorch merges axes of equal size into one symbol), none 1 or 2
    (specialised), none a multiple of the CRF's blur factor (its pooling branches on that),
    unless the input constraints make every valid size one; and meeting the constraints:
    :data:`TRACE_SIZE` (61 x 83) without constraints, e.g. 96 x 160 for multiples of 32.
    """
    if not metadata.constrained:
        return TRACE_SIZE
    height = _side(metadata, TRACE_SIZE[0], blur, ())
    return height, _side(metadata, TRACE_SIZE[1], blur, (height,))


# ---- model handling ----------------------------------------------------------------------------

def load_exportable(model):
    """A SegmentationModel or ConvCRF from an object, a checkpoint path or ``"demo"``.

    A path may hold a full model (:func:`convcrf_deploy.save_model`) or a CRF-only checkpoint
    (:func:`convcrf_deploy.training.save_crf`, exported with ``part="crf"``).

    Raises:
        convcrf_deploy.model.CheckpointError: the file is missing or not a checkpoint.
    """
    from ..model import CheckpointError, ConvCRF, SegmentationModel, load_model
    if isinstance(model, (SegmentationModel, ConvCRF)):
        return model
    if isinstance(model, (str, Path)):
        try:
            return load_model(model)
        except CheckpointError as model_error:
            if isinstance(model, str) and model == "demo" or not Path(model).is_file():
                raise
            from ..model.checkpoint import load_crf
            try:
                return load_crf(model)
            except (ValueError, OSError):
                raise model_error from None
    raise ExportError(f"export_onnx: model must be a SegmentationModel, a ConvCRF, a checkpoint "
                      f"path or 'demo', got {type(model).__name__}")


def _prepare(model, part: str, fp16: bool | str):
    """An eval-mode copy arranged for tracing; returns ``(graph module, crf or None)``."""
    from ..model import ConvCRF
    model = copy.deepcopy(model).cpu().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if isinstance(model, ConvCRF):
        if part != "crf":
            raise ExportError(f"a bare ConvCRF has no unary network: export it with part='crf' "
                              f"(got part={part!r})")
        crf = model
    else:
        crf = model.crf if model.crf_enabled else None
        if fp16 is True:        # "crf": the unary stays fp32
            model.unary = _HalfPrecision(model.unary, model.output_key)
            model.output_key = None     # selected inside _HalfPrecision
    if crf is not None and crf.implementation == "reference":
        # The custom ops, not the F.unfold reference, become the ConvCRF nodes.
        crf.implementation = "auto"
    if part == "crf":
        if crf is None:
            raise ExportError("part='crf' needs a model with a ConvCRF (this model has none or "
                              "has crf_enabled=False)")
        return _CRFGraph(crf), crf
    if part == "unary":
        return _UnaryGraph(model), None
    return _FullGraph(model), crf


def _example_inputs(part: str, num_classes: int, height: int, width: int, batch: int = 1):
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(batch, 3, height, width, generator=generator) * 255
    if part == "crf":
        return (torch.randn(batch, num_classes, height, width, generator=generator), image)
    return (image,)


def _dynamic_shapes(part: str, static: bool):
    # Dim.AUTO rather than named Dims: PyTorch's pooling and cropping code branches on
    # properties of the example size (e.g. "W is not a multiple of blur"); those branches
    # all lower to the same ONNX ops (ceil-mode AveragePool, Resize + Slice), so the guards
    # they produce are harmless here but would make named Dims fail. The axes are named and
    # checked to be dynamic after export (_name_dynamic_axes).
    auto = torch.export.Dim.AUTO
    axes = {0: auto} if static else {0: auto, 2: auto, 3: auto}
    if part == "crf":
        return {"logits": dict(axes), "image": dict(axes)}
    return {"image": axes}


#: ONNX names of the dynamic axes of every graph input and output (by rank).
_AXIS_NAMES = {4: ("batch", None, "height", "width"), 3: ("batch", "height", "width")}


def _name_dynamic_axes(model: onnx.ModelProto, static: bool) -> None:
    """Rename the exporter's symbols (s0, s1, ...) to batch/height/width on the graph I/O and
    fail if an axis that should be dynamic was specialised to a constant."""
    graph = model.graph
    renames: dict[str, str] = {}
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        for dim, name in zip(dims, _AXIS_NAMES[len(dims)]):
            if name is None or (static and name != "batch"):
                continue
            if not dim.dim_param:
                raise ExportError(
                    f"the model fixes the {name} of input '{value.name}' to {dim.dim_value}: "
                    "some layer reads that size as a constant (e.g. a reshape with a literal "
                    "size); use the tensor's shape instead, or export with --static")
            if renames.setdefault(dim.dim_param, name) != name:
                raise ExportError(
                    f"the traced graph ties the {renames[dim.dim_param]} and the {name} of "
                    f"input '{value.name}' together (PyTorch merged them into one symbol); "
                    "export with --static, or report the model to the convcrf-deploy authors")
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]


# ---- error mapping -----------------------------------------------------------------------------

class _ModuleTracker:
    """Records which submodules are executing, so a tracing failure can name the layer."""

    def __init__(self, root: nn.Module):
        self.stack: list[str] = []
        self.failed_in: str | None = None
        self._handles = []
        for name, module in root.named_modules():
            if name:
                self._handles.append(module.register_forward_pre_hook(self._enter(name)))
                self._handles.append(module.register_forward_hook(self._leave()))

    def _enter(self, name):
        def hook(module, args):
            self.stack.append(name)
        return hook

    def _leave(self):
        def hook(module, args, output):
            if self.stack:
                self.stack.pop()
        return hook

    def remove(self):
        for h in self._handles:
            h.remove()


def _display_name(path: str) -> str:
    """Module path as the user knows it (without our wrappers' prefixes)."""
    for prefix in ("model.", "crf.", "module."):
        path = path.replace(prefix, "", 1) if path.startswith(prefix) else path
    return path.replace(".module.", ".")


def _layer_description(root: nn.Module, path: str) -> str:
    module = root.get_submodule(path)
    return f"layer '{_display_name(path)}' ({type(module).__name__})"


def _failing_node_module(exported, message: str) -> str | None:
    """Module path of the FX node named in a translation error, from its nn_module_stack."""
    match = re.search(r"translating node %(\w+)", message)
    if not match or exported is None:
        return None
    for node in exported.graph.nodes:
        if node.name == match.group(1):
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                path = list(stack.values())[-1][0]
                return path.removeprefix("L['self'].").removeprefix("L__self__.") or None
    return None


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {describe_error(exc).rstrip('.')}"


# ---- graph post-processing ---------------------------------------------------------------------

def _custom_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    return [n for n in graph.node if n.domain == onnx_ops.DOMAIN]


def _default_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _apply_flavor(model: onnx.ModelProto, flavor: str, filter_size: int | None) -> onnx.ModelProto:
    if flavor == "plugin" or filter_size is None:
        return model
    model.functions.extend(onnx_ops.local_functions(filter_size, _default_opset(model)))
    if flavor == "single-file":
        return model
    import onnx.inliner
    inlined = onnx.inliner.inline_local_functions(model)
    del inlined.functions[:]
    kept = [o for o in inlined.opset_import if o.domain != onnx_ops.DOMAIN]
    del inlined.opset_import[:]
    inlined.opset_import.extend(kept)
    return inlined


def _io_shapes(values) -> dict[str, list]:
    out = {}
    for v in values:
        dims = v.type.tensor_type.shape.dim
        out[v.name] = [d.dim_param or d.dim_value for d in dims]
    return out


def _set_metadata(model: onnx.ModelProto, source, crf, flavor: str, fp16: bool | str) -> None:
    """Our metadata entries (:func:`convcrf_deploy.exported_model.set_metadata`); the CRF's
    configuration and trained parameters only when the graph contains the CRF."""
    from ..exported_model import set_metadata
    from ..model import SegmentationModel
    set_metadata(model, metadata=source.metadata if isinstance(source, SegmentationModel) else None,
                 flavor=flavor, precision=precision_name(fp16), version=__version__,
                 crf_config=crf.config if crf is not None else None,
                 crf_state=({name: value.detach().cpu().float().numpy()
                             for name, value in crf.state_dict().items()}
                            if crf is not None else None))


# ---- public API --------------------------------------------------------------------------------

def export_onnx(model, path, *, flavor: Flavor = DEFAULT_FLAVOR, fp16: bool | str = False,
                opset: int | None = None, height: int | None = None, width: int | None = None,
                static: bool = False, part: Part = "full", verify: bool = True,
                verify_memory: int | None = None, int8: bool = False, calibration=None,
                reduce_range: bool = False, pad_multiple: int | None = None,
                min_size: int | None = None, output_key: str | None = None) -> ExportReport:
    """Export a segmentation model (or its unary or CRF part) to ONNX and verify it.

    Args:
        model: a :class:`~convcrf_deploy.SegmentationModel`, a :class:`~convcrf_deploy.ConvCRF`
            (``part="crf"`` only), a checkpoint path or ``"demo"``.
        path: output ``.onnx`` file.
        flavor: ``"single-file"`` (custom nodes + standard-op function bodies; runs in ONNX
            Runtime and, with our plugin, in TensorRT), ``"plugin"`` (custom nodes only) or
            ``"portable"`` (standard ONNX only).
        fp16: ``True``: unary network and ConvCRF op I/O in FLOAT16 (graph I/O stays
            float32); ``"crf"``: the ConvCRF op I/O only, the unary stays float32 (for networks
            that lose accuracy in fp16: the verification names the part that failed).
        opset: standard ONNX opset, :data:`MIN_OPSET`..:data:`MAX_OPSET` (18..28; default
            :data:`DEFAULT_OPSET` = 20); the file declares the IR version of the first ONNX
            release with that opset.
        height, width: with ``static=True`` the fixed size (default ``metadata.input_size``,
            padded to the input constraints); otherwise the size the parity check runs at (the
            graph accepts any size that meets the constraints; it is traced at
            :func:`trace_size`, 61 x 83 without constraints). Both must meet the
            input constraints. At most :data:`MAX_SIDE` per side and :data:`MAX_PIXELS` in all.
        static: fix H and W (N stays dynamic).
        part: ``"full"``, ``"unary"`` (``image -> logits``) or ``"crf"``
            (``logits, image -> probabilities, labels``).
        verify: run :func:`convcrf_deploy.export.verify.verify_export` (checker, strict shape
            inference, parity against PyTorch on a random image); with ``int8`` on the float
            graph, then :func:`convcrf_deploy.export.quantize.verify_int8` (INT8 vs float
            label agreement on the calibration frames).
        verify_memory: bytes the parity run may take (default
            :data:`convcrf_deploy.export.verify.MEMORY_BUDGET`, 2 GiB): larger verification
            sizes run at batch 1 and, for dynamic graphs, at a smaller size; the report gives
            the peak measured.
        int8: quantise the unary network to INT8 (static QDQ quantisation,
            :func:`convcrf_deploy.export.quantize.quantize_unary`); the CRF stays fp32 (fp16
            with ``fp16``, which then applies to the ConvCRF op I/O only). Not for
            ``part="crf"``. The metadata records it (``convcrf.quantization``).
        calibration: with ``int8``: a folder of at least 8 frames from the camera, a sequence
            of BGR uint8 frames, or a :class:`~convcrf_deploy.export.quantize.CalibrationSet`;
            preprocessed as the runtime does for this model (its resize policy and size).
        reduce_range: with ``int8``, 7-bit weights: ONNX Runtime's advice for x86-64 CPUs
            without VNNI (AVX2 only), whose 16-bit intermediate sums can saturate.
        pad_multiple, min_size: the unary's input constraints (height and width multiples of
            ``pad_multiple`` and at least ``min_size``; 1 = none), written to the file's
            metadata. When not given they come from the model's metadata if it records any,
            else they are detected by :func:`convcrf_deploy.model.constraints.probe_constraints`.
        output_key: the dict key or attribute of the unary's output that holds the logits
            (default: the model's ``output_key``, else ``"out"``, ``"logits"``, ``.logits``,
            the first element of a tuple, or the tensor itself).

    Returns:
        :class:`ExportReport`. ``path`` is written atomically (a failed write keeps the
        previous file) with the content digest in its metadata (``convcrf.content_sha256``,
        :mod:`convcrf_deploy.exported_model`), and read back with the runtime's reader before
        it replaces anything.
        When verification fails, ``path`` is left as it was and the failing graph is written
        beside it as ``<name>.failed-verification.onnx`` (``report.path``; ``report.ok`` is
        False) so that it can be inspected.

    Raises:
        ExportError: onnxscript is missing (:class:`ExportDependencyError`), invalid arguments (an unsupported opset, a size
            out of range or not meeting the input constraints, ``int8`` without
            ``calibration``), the unary's output is not logits, the unary runs at no probed
            size, or the exporter or the quantiser failed (the message names the layer); no
            file is written.
        convcrf_deploy.export.quantize.CalibrationError: (a ``ValueError``) too few or
            unreadable calibration frames; raised before tracing.
        convcrf_deploy.files.OutputIsInputError: ``path`` is the checkpoint ``model`` names.
        convcrf_deploy.model.CheckpointError: the checkpoint cannot be loaded.
    """
    import importlib.util
    if importlib.util.find_spec("onnxscript") is None:
        from ..install import install_hint
        raise ExportDependencyError("ONNX export needs onnxscript (PyTorch's ONNX exporter "
                                    "translates with it), which is not installed: "
                                    f"{install_hint('torch')}")
    if flavor not in FLAVORS:
        raise ExportError(f"flavor must be one of {list(FLAVORS)}, got {flavor!r}")
    if not any(fp16 is choice or (isinstance(fp16, str) and fp16 == choice)
               for choice in FP16_CHOICES):
        raise ExportError(f"fp16 must be one of {list(FP16_CHOICES)}, got {fp16!r}")
    if part not in PARTS:
        raise ExportError(f"part must be one of {list(PARTS)}, got {part!r}")
    if (height is None) != (width is None):
        raise ExportError("give both height and width, or neither")
    for name, value in (("height", height), ("width", width)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 2):
            raise ExportError(f"{name} must be an int >= 2, got {value!r}")
    opset = _checked_opset(opset)

    if isinstance(model, (str, os.PathLike)):
        from ..files import refuse_output_overwriting_input
        refuse_output_overwriting_input({"output": path}, {"model": model})
    source = load_exportable(model)
    from ..model import ConvCRF
    source, constraints_source = _with_input_conventions(
        source, part, pad_multiple, min_size, output_key,
        fixed_size=(height, width) if static and height is not None else None)
    metadata = getattr(source, "metadata", None)
    if height is None and static:
        height, width = (metadata.padded_size(*metadata.input_size) if metadata
                         else TRACE_SIZE)
    _check_size(height, width, static)
    verify_size = (height, width) if height is not None else None
    if metadata is not None and part != "crf":
        _check_constraints(metadata, height, width, static)
        if verify_size is None and metadata.constrained:
            from .verify import FP16_PARITY_SIZE, PARITY_SIZE
            verify_size = metadata.padded_size(*(FP16_PARITY_SIZE if fp16 else PARITY_SIZE))
    calibration_frames = _calibration_frames(source, part, int8, calibration, reduce_range,
                                             (height, width) if static else None)
    crf_config = (source.config if isinstance(source, ConvCRF)
                  else source.crf.config if source.crf is not None else None)
    # Dynamic graphs are traced at a size of their own whatever size was asked for (which is
    # then the size the parity check runs at): a size like 2x2 would merge H, W and the batch
    # into one symbol, and sizes below the blur factor specialise the pooled grid.
    traced_at = (height, width) if static else (
        trace_size(metadata, crf_config.blur if crf_config else 1)
        if metadata is not None and part != "crf" else TRACE_SIZE)
    num_classes = (source.config.num_classes if isinstance(source, ConvCRF)
                   else source.num_classes)
    # With int8 the unary is traced in float (its quantisation scales are float32); fp16 then
    # applies to the ConvCRF op I/O only.
    unary_fp16 = False if int8 else fp16     # not `fp16 and not int8`: that turns "crf" into True
    module, crf = _prepare(source, part, unary_fp16)
    key = _trace_key(source, part, unary_fp16, *traced_at, static)
    if key not in _TRACED:
        with Progress("export: tracing the model and translating it to ONNX"):
            # Batch 2 in the example: PyTorch specialises sizes 0 and 1 to constants.
            example = _example_inputs(part, num_classes, *traced_at, batch=2)
            exported = _trace(module, example, _dynamic_shapes(part, static))
            input_names, output_names = IO_NAMES[part]
            # Translated once at the lowest opset; _convert_opset lifts it to the one asked for.
            base = _to_onnx(module, exported, input_names, output_names, MIN_OPSET)
            _name_dynamic_axes(base, static)
            _remember(key, base.SerializeToString())
    onnx_model = _convert_opset(onnx.ModelProto.FromString(_TRACED[key]), opset)

    filter_size = crf.config.filter_size if crf is not None and crf.config.iterations else None
    try:
        rewrites.replace_ceil_mode_pooling(onnx_model)
    except rewrites.UnsupportedPoolingError as exc:
        raise ExportError(str(exc)) from None
    if fp16 and filter_size is not None:
        rewrites.cast_custom_nodes_to_fp16(onnx_model)
    if flavor != "plugin":
        # plugin graphs are for TensorRT, which fuses a plain Softmax itself.
        rewrites.decompose_channel_softmax(onnx_model)
    onnx_model = _apply_flavor(onnx_model, flavor, filter_size)
    onnx_model.ir_version = ir_version_for_opset(opset)
    _set_metadata(onnx_model, source, crf, flavor, fp16)
    float_model, int8_report = onnx_model, None
    if int8:
        from .quantize import QuantizationError, quantize_unary
        try:
            quantized = quantize_unary(float_model, calibration_frames,
                                       logits="logits" if part == "unary" else None,
                                       reduce_range=reduce_range)
        except QuantizationError as exc:
            raise ExportError(str(exc)) from exc
        onnx_model, int8_report = quantized.model, quantized.report

    # Data safety (issue 11): the digest lets loaders detect a damaged file; the graph is
    # verified in memory and written atomically only when it passed, so a failed export
    # keeps the previous file and puts the failing graph beside it under a telling name.
    from ..exported_model import seal
    seal(onnx_model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    custom = {}
    for node in _custom_nodes(onnx_model.graph):
        custom[node.op_type] = custom.get(node.op_type, 0) + 1
    report = ExportReport(path=path, flavor=flavor, part=part, fp16=fp16,
                          opset=_default_opset(onnx_model),
                          inputs=_io_shapes(onnx_model.graph.input),
                          outputs=_io_shapes(onnx_model.graph.output),
                          node_count=len(onnx_model.graph.node), custom_nodes=custom,
                          local_functions=len(onnx_model.functions), int8=int8_report,
                          pad_multiple=metadata.pad_multiple if metadata else 1,
                          min_size=metadata.min_size if metadata else 1,
                          constraints_source=constraints_source,
                          trace_size=None if static else traced_at)

    def verification():
        from .verify import verify_export
        with Progress("export: verifying the graph against PyTorch"):
            report.verification = verify_export(
                float_model, source.eval(), flavor=flavor, part=part, fp16=fp16,
                size=verify_size, memory_budget=verify_memory)
            if int8:
                from .quantize import verify_int8
                report.int8_verification = verify_int8(float_model, onnx_model,
                                                       calibration_frames, flavor=flavor)

    write_verified(onnx_model, report, verification if verify else None)
    return report


def write_verified(graph: onnx.ModelProto, report: ExportReport, verification=None) -> None:
    """Write a sealed graph to ``report.path`` once ``verification`` passed (issue 11).

    ``verification()`` fills ``report.verification`` (and ``int8_verification``) or raises
    :class:`~convcrf_deploy.export.verify.VerificationError`. A graph whose verification raised
    or did not pass is written instead beside the path as ``<stem>.failed-verification.onnx``
    (``report.path`` then names it), so a failed export keeps the user's previous file. The
    write is atomic, with the runtime reader's read-back check (digest, metadata against the
    graph) before it replaces anything.
    """
    from ..exported_model import write
    path = report.path
    path.parent.mkdir(parents=True, exist_ok=True)
    failed_path = path.with_name(f"{path.stem}.failed-verification{path.suffix}")
    if verification is not None:
        from .verify import VerificationError
        try:
            verification()
        except VerificationError:
            from ..files import atomic_write     # a diagnostic copy, not a usable model
            with atomic_write(failed_path) as temporary:
                onnx.save(graph, str(temporary))
            raise
    if not report.ok:
        report.path = failed_path
    with Progress(f"export: writing {report.path.name}"):
        write(graph, report.path, seal_it=False)


def _calibration_frames(source, part: str, int8: bool, calibration, reduce_range: bool,
                        static_size: tuple[int, int] | None):
    """The preprocessed calibration frames of an int8 export (``None`` without int8); read
    before tracing, so that a bad folder fails in a second, not after a minute. A static
    graph's size replaces the metadata's input size (what the graph accepts)."""
    if not int8:
        if calibration is not None:
            raise ExportError("calibration= is used by int8=True exports only")
        if reduce_range:
            raise ExportError("reduce_range= applies to int8=True exports only")
        return None
    from ..model import ConvCRF
    if part == "crf" or isinstance(source, ConvCRF):
        raise ExportError("int8 quantises the unary network, and a part='crf' export has none; "
                          "export part='full' or 'unary' with int8")
    if calibration is None:
        raise ExportError("int8=True needs calibration=: a folder of at least 8 frames from "
                          "the camera the model will run on (convcrf-export --calibration DIR)")
    from .quantize import CalibrationSet, calibration_set
    if isinstance(calibration, CalibrationSet):
        return calibration
    return calibration_set(calibration, source.metadata, input_size=static_size)


def _checked_opset(opset: int | None) -> int:
    """``opset`` (default :data:`DEFAULT_OPSET`) if the export supports it, else ExportError."""
    if opset is None:
        return DEFAULT_OPSET
    if isinstance(opset, bool) or not isinstance(opset, int) \
            or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset must be an int in {MIN_OPSET}..{MAX_OPSET}, got {opset!r}")
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise ExportError(f"opset {opset} needs a newer onnx (onnx {onnx.__version__} knows opsets "
                          f"up to {newest}): pip install -U onnx, or export with --opset {newest}")
    return opset


def _with_input_conventions(source, part: str, pad_multiple: int | None,
                            min_size: int | None, output_key: str | None,
                            fixed_size: tuple[int, int] | None = None):
    """``(model, constraints_source)``: a shallow copy of the SegmentationModel ``source``
    with ``output_key`` and the input constraints set in its metadata (given, recorded in the
    model, or probed), and where the constraints came from (see :class:`ExportReport`).
    A ConvCRF, and ``part="crf"`` (no unary runs), are returned as they are. A unary that
    runs at no probed size is accepted without constraints for a static graph of
    ``fixed_size`` when it runs at that size (e.g. a fixed-size ``.pt2`` program)."""
    from ..model import SegmentationModel
    if not isinstance(source, SegmentationModel):
        return source, ""
    source = copy.copy(source)      # shares the modules; attributes set below are its own
    if output_key is not None:
        if not isinstance(output_key, str) or not output_key:
            raise ExportError(f"output_key must be a non-empty string, got {output_key!r}")
        source.output_key = output_key
    if part == "crf":
        return source, ""
    from ..metadata import MAX_CONSTRAINT
    for name, value in (("pad_multiple", pad_multiple), ("min_size", min_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 1 <= value <= MAX_CONSTRAINT):
            raise ExportError(f"{name} must be an int in 1..{MAX_CONSTRAINT}, got {value!r}")
    recorded = source.metadata
    if pad_multiple is not None and min_size is not None:
        where = "given"
    elif recorded.constrained:
        pad_multiple = recorded.pad_multiple if pad_multiple is None else pad_multiple
        min_size = recorded.min_size if min_size is None else min_size
        where = "recorded in the model"
    else:
        from ..model.constraints import ConstraintError, probe_constraints
        from ..model.outputs import UnaryOutputError
        try:
            probe = probe_constraints(source, pad_multiple, min_size)
        except UnaryOutputError as exc:
            raise ExportError(str(exc)) from None
        except ConstraintError as exc:
            if fixed_size is None or not _runs_at(source, fixed_size):
                raise ExportError(str(exc)) from None
            probe = None
        if probe is None:
            pad_multiple, min_size = pad_multiple or 1, min_size or 1
            where = (f"none found by probing: the unary runs at the fixed "
                     f"{fixed_size[0]}x{fixed_size[1]} only")
        else:
            pad_multiple, min_size = probe.pad_multiple, probe.min_size
            where = f"probed at {probe.probes} sizes"
    source.metadata = dataclasses.replace(recorded, pad_multiple=pad_multiple,
                                          min_size=min_size)
    return source, where


def _runs_at(model, size: tuple[int, int]) -> bool:
    """Whether ``model``'s unary runs on one image of ``size``."""
    try:
        with torch.no_grad():
            model.unary(model.normalize(torch.zeros(1, 3, *size, device=model.mean.device)))
    except Exception:   # noqa: BLE001 - the user's network failed at this size
        return False
    return True


def _check_constraints(metadata, height: int | None, width: int | None, static: bool) -> None:
    """Refuse a size that does not meet the input constraints, naming them and a size that
    does."""
    if height is None or metadata.satisfied_by(height, width):
        return
    good = metadata.padded_size(height, width)
    what = "the fixed size" if static else "the size the parity check runs at"
    raise ExportError(
        f"{height}x{width} ({what}) does not meet the unary's input constraints "
        f"({metadata.describe_constraints()}): use --height {good[0]} --width {good[1]}, or "
        "change the constraints with --pad-multiple / --min-size if they are wrong")


def _check_size(height: int | None, width: int | None, static: bool) -> None:
    """Refuse sizes the export cannot trace or verify at (see :data:`MAX_SIDE`)."""
    if height is None:
        return
    if max(height, width) > MAX_SIDE or height * width > MAX_PIXELS:
        what = "traced and verified" if static else "verified"
        raise ExportError(
            f"{height}x{width} is too large: the export is {what} at that size, which is "
            f"limited to {MAX_SIDE} pixels per side and {MAX_PIXELS // 10**6} megapixels; "
            + ("export with dynamic axes (without --static) and choose the size at run time"
               if static else "give a smaller --height/--width (the graph itself accepts any "
               "size)"))


# Tracing dominates the export time (tens of seconds with dynamic sizes), and every flavour
# and opset starts from the same traced graph: exporting one model in several flavours or
# opsets in one process traces it once. Keyed by the model's content, not its identity, so
# edits are seen. Values: the serialised opset-18 ONNX model.
_TRACED: dict[tuple, bytes] = {}
_TRACED_MAX = 4


def _remember(key: tuple, value) -> None:
    if len(_TRACED) >= _TRACED_MAX:
        _TRACED.pop(next(iter(_TRACED)))
    _TRACED[key] = value


def _trace_key(source: nn.Module, part, fp16, height, width, static) -> tuple:
    digest = hashlib.sha1()
    for name, tensor in source.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
                      .tobytes())
    config = getattr(source, "config", None) or getattr(getattr(source, "crf", None), "config",
                                                        None)
    return (type(source).__name__, repr(source), digest.hexdigest(),
            config.to_json() if config else None, getattr(source, "crf_enabled", None),
            part, fp16, height, width, static)


def _trace(module: nn.Module, example, dynamic_shapes):
    """``torch.export`` the module. A failure is reported by its real cause: a unary output
    that is not logits, a model that fails at the example size even without tracing (e.g. an
    input-size constraint), or a layer the tracer cannot follow (named)."""
    from ..model.outputs import UnaryOutputError
    tracker = _ModuleTracker(module)
    try:
        with _quiet():
            return torch.export.export(module, example, dynamic_shapes=dynamic_shapes,
                                       strict=False)
    except Exception as exc:    # noqa: BLE001 - re-raised with its cause named
        layer = tracker.stack[-1] if tracker.stack else None
        failure = exc
    finally:
        tracker.remove()
    cause = failure
    while cause.__cause__ is not None and not isinstance(cause, UnaryOutputError):
        cause = cause.__cause__
    if isinstance(cause, UnaryOutputError):
        raise ExportError(str(cause)) from failure
    size = "x".join(str(d) for d in example[-1].shape[-2:])
    eager = _ModuleTracker(module)
    try:
        with torch.no_grad(), _quiet():
            module(*example)
    except UnaryOutputError as exc:
        raise ExportError(str(exc)) from failure
    except Exception as exc:    # noqa: BLE001 - the model itself fails: not a tracing problem
        where = f" in {_layer_description(module, eager.stack[-1])}" if eager.stack else ""
        raise ExportError(
            f"the model fails on a {size} input{where} even without tracing: "
            f"{_root_cause(exc)}. If the network needs other input sizes, give its input "
            "constraints: --pad-multiple N (height and width multiples of N) and --min-size "
            "N (at least N px)") from failure
    finally:
        eager.remove()
    where = (f"{_layer_description(module, layer)} cannot be exported" if layer
             else "the model cannot be traced")
    raise ExportError(
        f"{where}: {_root_cause(failure)}. Replace it with standard PyTorch operations "
        "(no custom autograd Functions, NumPy calls or data-dependent Python control "
        "flow), or register an ONNX translation for it.") from failure


def _convert_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """``model`` converted to standard opset ``opset`` with onnxscript's version converter
    (what PyTorch's exporter itself uses); ExportError when the result is not at ``opset``."""
    if _default_opset(model) != opset:
        from onnxscript import ir, version_converter
        ir_model = ir.serde.deserialize_model(model)
        with _quiet():
            version_converter.convert_version(ir_model, opset, fallback=True)
        model = ir.serde.serialize_model(ir_model)
    if _default_opset(model) != opset:
        # The converter logs its failure and returns the graph unconverted.
        raise ExportError(f"the graph could not be converted to opset {opset} (it stayed at "
                          f"{_default_opset(model)}); choose another --opset in "
                          f"{MIN_OPSET}..{MAX_OPSET}")
    return model


def _to_onnx(module: nn.Module, exported, input_names, output_names, opset) -> onnx.ModelProto:
    try:
        with _quiet():
            program = torch.onnx.export(
                exported, dynamo=True, input_names=input_names, output_names=output_names,
                opset_version=opset, custom_translation_table=onnx_ops.translation_table(),
                optimize=True, verbose=False, report=False)
    except Exception as exc:    # noqa: BLE001 - re-raised with the layer's name
        layer = _failing_node_module(exported, str(exc))
        where = (f"{_layer_description(module, layer)} uses an operation with no ONNX "
                 "translation" if layer else "the exporter failed")
        raise ExportError(f"{where}: {_root_cause(exc)}. Replace the operation with standard "
                          "PyTorch operations or register an ONNX translation for it.") from exc
    return _convert_opset(program.model_proto, opset)


@contextlib.contextmanager
def _quiet():
    """Silence PyTorch's exporter chatter (progress prints, "torchvision is not installed"
    log lines, deprecation warnings of its internals): the report says what matters, and
    real failures still raise."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export",
                                                    "torch._export", "torch.fx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"torch\..*|copyreg|onnxscript\..*")
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
