"""`export_onnx`: a SegmentationModel (or a part of it) to an ONNX file, in one of three flavours.

Flavours (the ConvCRF ops, docs/ops.md, are the only difference):

* ``"single-file"`` (default): the ops are ``trt.plugins::ConvCRFKernel`` /
  ``ConvCRFMessagePassing`` nodes backed by model-local functions of standard ONNX ops. ONNX
  Runtime (any execution provider) inlines the functions and runs the file as is; TensorRT
  >= 10.7 prefers a registered plugin over a local function of the same name, so with our
  plugin library loaded it runs the fused kernels.
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
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import onnx
import torch
import torch.nn as nn

from .. import __version__
from ..metadata import ONNX_KEYS
from . import DEFAULT_FLAVOR, FLAVORS, PARTS, onnx_ops

Flavor = Literal["single-file", "plugin", "portable"]  # the values of FLAVORS
Part = Literal["full", "unary", "crf"]  # the values of PARTS

#: Graph input and output names per part.
IO_NAMES = {
    "full": (["image"], ["probabilities", "labels", "unary_labels"]),
    "unary": (["image"], ["logits"]),
    "crf": (["logits", "image"], ["probabilities", "labels"]),
}


class ExportError(RuntimeError):
    """The model could not be exported; the message names the cause and the fix."""


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote, and the result of the verification."""

    path: Path
    flavor: str
    part: str
    fp16: bool
    opset: int
    inputs: dict[str, list]
    outputs: dict[str, list]
    node_count: int
    custom_nodes: dict[str, int] = field(default_factory=dict)
    local_functions: int = 0
    verification: object | None = None     # verify.VerificationResult

    @property
    def ok(self) -> bool:
        """True when the export was verified and passed (or verification was skipped)."""
        return self.verification is None or bool(self.verification.passed)

    def summary(self) -> str:
        io_text = ", ".join(f"{k} {v}" for k, v in self.inputs.items())
        out_text = ", ".join(f"{k} {v}" for k, v in self.outputs.items())
        lines = [f"wrote {self.path} ({self.flavor}, part={self.part}, "
                 f"{'fp16' if self.fp16 else 'fp32'}, opset {self.opset})",
                 f"  inputs:  {io_text}", f"  outputs: {out_text}",
                 f"  {self.node_count} nodes; custom nodes: "
                 f"{self.custom_nodes or 'none'}; local functions: {self.local_functions}"]
        if self.verification is not None:
            lines.append("  " + self.verification.summary())
        return "\n".join(lines)


# ---- the traced modules ------------------------------------------------------------------------

class _HalfPrecision(nn.Module):
    """Runs a module in fp16: input cast to fp16, output back to fp32."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.half()).float()


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
        logits = self.model.forward_unary(image)
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
        return self.model.forward_unary(image).float()


class _CRFGraph(nn.Module):
    """``logits [N,C,H,W]``, ``image [N,3,H,W]`` -> probabilities, labels."""

    def __init__(self, crf):
        super().__init__()
        self.crf = crf

    def forward(self, logits: torch.Tensor, image: torch.Tensor):
        probabilities = _crf_probabilities(self.crf, logits, image)
        return probabilities, probabilities.argmax(dim=1)


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


def _prepare(model, part: str, fp16: bool):
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
        if fp16:
            model.unary = _HalfPrecision(model.unary)
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
    # all lower to the same ONNX ops (AveragePool ceil_mode, Resize + Slice), so the guards
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
            renames.setdefault(dim.dim_param, name)
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
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0].rstrip('.') if text else ''}"


# ---- graph post-processing ---------------------------------------------------------------------

def _custom_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    return [n for n in graph.node if n.domain == onnx_ops.DOMAIN]


def _cast_custom_nodes_to_fp16(model: onnx.ModelProto) -> None:
    """Give the ConvCRF nodes FLOAT16 I/O (Cast in front, Cast back to fp32 after): TensorRT
    11 picks a plugin's precision from its ONNX types. The ops compute in fp32 internally;
    softmax, pooling and upsampling around them stay fp32."""
    graph = model.graph
    new_nodes = []
    for node in graph.node:
        if node.domain != onnx_ops.DOMAIN:
            new_nodes.append(node)
            continue
        for i, name in enumerate(node.input):
            half = f"{node.name or node.output[0]}_in{i}_fp16"
            new_nodes.append(onnx.helper.make_node("Cast", [name], [half],
                                                   to=onnx.TensorProto.FLOAT16))
            node.input[i] = half
        for i, name in enumerate(node.output):
            half = f"{name}_fp16"
            node.output[i] = half
            new_nodes.append(node)
            new_nodes.append(onnx.helper.make_node("Cast", [half], [name],
                                                   to=onnx.TensorProto.FLOAT))
    del graph.node[:]
    graph.node.extend(new_nodes)
    # Stale fp32 value_info of the nodes' outputs would contradict the new types.
    kept = [v for v in graph.value_info if v.name in {o for n in graph.node for o in n.output}]
    del graph.value_info[:]
    graph.value_info.extend(kept)


def _decompose_softmax(model: onnx.ModelProto) -> None:
    """Rewrite ``Softmax`` / ``LogSoftmax`` over a non-last axis (the class axis 1 here) as
    ReduceMax, Sub, Exp, ReduceSum, Div (or Log, Sub): ONNX Runtime CPU transposes for a
    non-last axis, which made the CRF's softmaxes ~45 % of the portable graph's time at
    320x240; the decomposition is ~3x faster and numerically the same (max-subtracted)."""
    graph = model.graph
    new_nodes = []
    for index, node in enumerate(graph.node):
        axis = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), -1)
        if node.op_type not in ("Softmax", "LogSoftmax") or node.domain or axis == -1:
            new_nodes.append(node)
            continue
        x, y, tag = node.input[0], node.output[0], f"softmax{index}"
        make = onnx.helper.make_node
        axes = f"{tag}_axes"
        new_nodes += [
            make("Constant", [], [axes], value=onnx.helper.make_tensor(
                axes, onnx.TensorProto.INT64, [1], [axis])),
            make("ReduceMax", [x, axes], [f"{tag}_max"], keepdims=1),
            make("Sub", [x, f"{tag}_max"], [f"{tag}_shifted"]),
            make("Exp", [f"{tag}_shifted"], [f"{tag}_exp"]),
            make("ReduceSum", [f"{tag}_exp", axes], [f"{tag}_sum"], keepdims=1),
        ]
        if node.op_type == "Softmax":
            new_nodes.append(make("Div", [f"{tag}_exp", f"{tag}_sum"], [y]))
        else:
            new_nodes += [make("Log", [f"{tag}_sum"], [f"{tag}_log_sum"]),
                          make("Sub", [f"{tag}_shifted", f"{tag}_log_sum"], [y])]
    del graph.node[:]
    graph.node.extend(new_nodes)


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


def _set_metadata(model: onnx.ModelProto, source, crf, flavor: str, fp16: bool) -> None:
    from ..model import SegmentationModel
    props = {}
    if isinstance(source, SegmentationModel):
        props.update(source.metadata.to_onnx_props())
    # Only a graph that contains the CRF says so: the runtime reads convcrf.crf_config as
    # "this graph runs a CRF" (not so for part="unary" or crf_enabled=False).
    if crf is not None:
        props[ONNX_KEYS["crf_config"]] = crf.config.to_json()
        # Its trained parameters too (float32 values are exact in JSON), so that runtimes can
        # run the CRF natively from this one file (runtime/backends/native_crf.py, STATE_KEY).
        import json
        props["convcrf.crf_state"] = json.dumps({name: value.detach().cpu().float().tolist()
                                                 for name, value in crf.state_dict().items()})
    props[ONNX_KEYS["version"]] = __version__
    props[ONNX_KEYS["flavor"]] = flavor
    props["convcrf.precision"] = "fp16" if fp16 else "fp32"
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                        **props})
    model.producer_name = "convcrf-deploy"
    model.producer_version = __version__


# ---- public API --------------------------------------------------------------------------------

def export_onnx(model, path, *, flavor: Flavor = DEFAULT_FLAVOR, fp16: bool = False,
                opset: int | None = None, height: int | None = None, width: int | None = None,
                static: bool = False, part: Part = "full", verify: bool = True) -> ExportReport:
    """Export a segmentation model (or its unary or CRF part) to ONNX and verify it.

    Args:
        model: a :class:`~convcrf_deploy.SegmentationModel`, a :class:`~convcrf_deploy.ConvCRF`
            (``part="crf"`` only), a checkpoint path or ``"demo"``.
        path: output ``.onnx`` file.
        flavor: ``"single-file"`` (custom nodes + standard-op function bodies; runs in ONNX
            Runtime and, with our plugin, in TensorRT), ``"plugin"`` (custom nodes only) or
            ``"portable"`` (standard ONNX only).
        fp16: unary network and ConvCRF op I/O in FLOAT16 (graph I/O stays float32).
        opset: standard ONNX opset (default: the exporter's; at least 18).
        height, width: example size used for tracing; with ``static=True`` the fixed size
            (default ``metadata.input_size``).
        static: fix H and W (N stays dynamic).
        part: ``"full"``, ``"unary"`` (``image -> logits``) or ``"crf"``
            (``logits, image -> probabilities, labels``).
        verify: run :func:`convcrf_deploy.export.verify.verify_export` (checker, strict shape
            inference, parity against PyTorch on a random image).

    Returns:
        :class:`ExportReport`; ``report.ok`` is False when verification failed (the file is
        still written so that it can be inspected).

    Raises:
        ExportError: invalid arguments, or the exporter failed (the message names the layer).
        convcrf_deploy.model.CheckpointError: the checkpoint cannot be loaded.
    """
    if flavor not in FLAVORS:
        raise ExportError(f"flavor must be one of {list(FLAVORS)}, got {flavor!r}")
    if part not in PARTS:
        raise ExportError(f"part must be one of {list(PARTS)}, got {part!r}")
    if (height is None) != (width is None):
        raise ExportError("give both height and width, or neither")
    for name, value in (("height", height), ("width", width)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 2):
            raise ExportError(f"{name} must be an int >= 2, got {value!r}")
    if opset is not None and opset < onnx_ops.MIN_BODY_OPSET:
        raise ExportError(f"opset must be >= {onnx_ops.MIN_BODY_OPSET} (Split num_outputs, "
                          f"Pad/ReduceSum with tensor inputs), got {opset}")

    source = load_exportable(model)
    from ..model import ConvCRF
    metadata = getattr(source, "metadata", None)
    if height is None:
        height, width = tuple(metadata.input_size) if (static and metadata) else (61, 83)
    num_classes = (source.config.num_classes if isinstance(source, ConvCRF)
                   else source.num_classes)
    module, crf = _prepare(source, part, fp16)
    key = _trace_key(source, part, fp16, opset, height, width, static)
    if key in _TRACED:
        onnx_model = onnx.ModelProto.FromString(_TRACED[key])
    else:
        input_names, output_names = IO_NAMES[part]
        # Batch 2 in the example: PyTorch specialises sizes 0 and 1 to constants.
        example = _example_inputs(part, num_classes, height, width, batch=2)
        exported = _trace(module, example, _dynamic_shapes(part, static))
        onnx_model = _to_onnx(module, exported, input_names, output_names, opset)
        _name_dynamic_axes(onnx_model, static)
        if len(_TRACED) >= _TRACED_MAX:
            _TRACED.pop(next(iter(_TRACED)))
        _TRACED[key] = onnx_model.SerializeToString()

    filter_size = crf.config.filter_size if crf is not None and crf.config.iterations else None
    if fp16 and filter_size is not None:
        _cast_custom_nodes_to_fp16(onnx_model)
    if flavor != "plugin":
        # plugin graphs are for TensorRT, which fuses a plain Softmax itself.
        _decompose_softmax(onnx_model)
    onnx_model = _apply_flavor(onnx_model, flavor, filter_size)
    _set_metadata(onnx_model, source, crf, flavor, fp16)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(onnx_model, str(path))
    custom = {}
    for node in _custom_nodes(onnx_model.graph):
        custom[node.op_type] = custom.get(node.op_type, 0) + 1
    report = ExportReport(path=path, flavor=flavor, part=part, fp16=fp16,
                          opset=_default_opset(onnx_model),
                          inputs=_io_shapes(onnx_model.graph.input),
                          outputs=_io_shapes(onnx_model.graph.output),
                          node_count=len(onnx_model.graph.node), custom_nodes=custom,
                          local_functions=len(onnx_model.functions))
    if verify:
        from .verify import verify_export
        reference = source.eval()
        report.verification = verify_export(onnx_model, reference, flavor=flavor, part=part,
                                            fp16=fp16,
                                            size=(height, width) if static else None)
    return report


# Tracing dominates the export time (tens of seconds with dynamic sizes), and every flavour
# starts from the same traced graph: exporting one model in several flavours in one process
# traces it once. Keyed by the model's content, not its identity, so edits are seen.
_TRACED: dict[tuple, bytes] = {}
_TRACED_MAX = 4


def _trace_key(source: nn.Module, part, fp16, opset, height, width, static) -> tuple:
    digest = hashlib.sha1()
    for name, tensor in source.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
                      .tobytes())
    config = getattr(source, "config", None) or getattr(getattr(source, "crf", None), "config",
                                                        None)
    return (type(source).__name__, repr(source), digest.hexdigest(),
            config.to_json() if config else None, getattr(source, "crf_enabled", None),
            part, fp16, opset, height, width, static)


def _trace(module: nn.Module, example, dynamic_shapes):
    """``torch.export`` the module; a failure names the layer that was running."""
    tracker = _ModuleTracker(module)
    try:
        with _quiet():
            return torch.export.export(module, example, dynamic_shapes=dynamic_shapes,
                                       strict=False)
    except Exception as exc:    # noqa: BLE001 - re-raised with the layer's name
        layer = tracker.stack[-1] if tracker.stack else None
        where = (f"{_layer_description(module, layer)} cannot be exported" if layer
                 else "the model cannot be traced")
        raise ExportError(
            f"{where}: {_root_cause(exc)}. Replace it with standard PyTorch operations "
            "(no custom autograd Functions, NumPy calls or data-dependent Python control "
            "flow), or register an ONNX translation for it.") from exc
    finally:
        tracker.remove()


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
    return program.model_proto


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
