"""What TensorRT's ONNX parser is given and what it must produce: the ONNX model with our
ConvCRF function bodies stripped and its Q/DQ nodes made TensorRT-legal
(:func:`prepare_for_parser`, :func:`make_qdq_symmetric`), the check that the parsed network
builds the ConvCRF from our plugin (:func:`check_crf_implementation`), the parser's errors and
the optimisation profile of the network's inputs (see :mod:`convcrf_deploy.tensorrt.builder`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import ModuleType

from ..exported_model import ExportedModel
from .plugin import PLUGIN_NAMES
from .profiles import Profile

#: name of the image input of exported models (convcrf_deploy.export).
IMAGE_INPUT = "image"


class EngineBuildError(RuntimeError):
    """Parsing or building failed; the message carries TensorRT's errors and the fix."""


# ---- which ConvCRF implementation TensorRT builds ---------------------------------------------

@dataclass
class QDQInfo:
    """The explicit quantisation of a graph, as handed to TensorRT."""

    quantize: int                   # QuantizeLinear nodes
    dequantize: int                 # DequantizeLinear nodes
    made_symmetric: int = 0         # (scale, zero point) pairs rewritten to symmetric int8
    relus_added: int = 0            # ReLUs restored in front of [0, max] ranges

    def describe(self, crf_precision: str | None = None) -> str:
        text = (f"precision: INT8 explicit quantisation ({self.quantize} QuantizeLinear / "
                f"{self.dequantize} DequantizeLinear nodes")
        if self.made_symmetric:
            text += (f"; {self.made_symmetric} uint8 scale(s) made symmetric int8 for TensorRT"
                     + (f", {self.relus_added} ReLU(s) restored" if self.relus_added else ""))
        text += ")"
        if crf_precision:
            text += f", ConvCRF plugin in {crf_precision}"
        return text


@dataclass
class ParserInput:
    """The ONNX model as handed to TensorRT's parser, and what it must produce."""

    data: bytes                     # serialised model without our ConvCRF function bodies
    crf_nodes: dict[str, int]       # ConvCRF nodes per op type in the file
    stripped_functions: int         # model-local ConvCRF functions removed
    crf_in_model: bool              # the metadata says the graph runs a CRF
    qdq: QDQInfo | None = None      # explicit quantisation (Q/DQ nodes), made TensorRT-legal
    crf_precision: str | None = None  # "fp32" / "fp16" (convcrf.precision) when known


def prepare_for_parser(onnx_model: ExportedModel | str | os.PathLike) -> ParserInput:
    """Copy an exported model, strip the model-local functions named like our plugins and make
    its Q/DQ nodes (if any) TensorRT-legal (:func:`make_qdq_symmetric`).

    Without the bodies TensorRT cannot fall back to the standard-op CRF: the nodes import as
    our plugin or the parser fails with "Plugin not found". External data stays where it is
    (the parser is given the file's path to find it).

    Args:
        onnx_model: the model as read by :meth:`ExportedModel.open` (a path is opened so).

    Raises:
        ValueError: the file is not a valid ONNX model, or is damaged (see ``open``).
    """
    import onnx

    exported = (onnx_model if isinstance(onnx_model, ExportedModel)
                else ExportedModel.open(onnx_model))
    model = onnx.ModelProto()
    model.CopyFrom(exported.proto)      # the functions are stripped from the copy
    crf_nodes: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in PLUGIN_NAMES:    # TensorRT dispatches on op_type alone
            crf_nodes[node.op_type] = crf_nodes.get(node.op_type, 0) + 1
    kept = [f for f in model.functions if f.name not in PLUGIN_NAMES]
    stripped = len(model.functions) - len(kept)
    if stripped:
        del model.functions[:]
        model.functions.extend(kept)
    crf_in_model = exported.runs_crf
    qdq = make_qdq_symmetric(model)
    return ParserInput(model.SerializeToString(), crf_nodes, stripped, crf_in_model, qdq,
                       exported.precision)


# ---- explicit quantisation (INT8) -----------------------------------------------------------

_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
#: ops after which a tensor is already >= 0 (no ReLU needed in front of a [0, max] range).
_NON_NEGATIVE_OPS = ("Relu", "Sigmoid", "Softmax", "Abs")


def make_qdq_symmetric(model) -> QDQInfo | None:
    """Rewrite ``model``'s QuantizeLinear/DequantizeLinear nodes in place for TensorRT, which
    takes only int8 with zero point 0; ``None`` when the graph has no Q/DQ node.

    Each (scale, zero point) pair with a uint8 (or missing, i.e. uint8) or non-zero zero point
    becomes a new int8 pair covering the same range symmetrically: scale
    ``s * max(z, 255 - z) / 127`` (int8 zero point ``z`` uses ``max(z + 128, 127 - z)``),
    zero point 0. Constant data behind a DequantizeLinear (weights) is requantised to the new
    scale. A QuantizeLinear whose range starts at 0 (``z = 0`` in uint8) and whose input is
    not already non-negative gets a ``Relu`` in front: the uint8 range clipped negatives to 0,
    the symmetric one would not.

    Raises:
        ValueError: a scale or zero point is not a constant initialiser.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    nodes = [n for n in graph.node if n.op_type in _QDQ_OPS and n.domain in ("", "ai.onnx")]
    if not nodes:
        return None
    initializers = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)

    def clamped_downstream(quantize) -> bool:
        """Every path from this QuantizeLinear goes DequantizeLinear -> Relu already."""
        users = consumers.get(quantize.output[0], [])
        return bool(users) and all(
            u.op_type == "DequantizeLinear" and consumers.get(u.output[0])
            and all(c.op_type == "Relu" for c in consumers[u.output[0]]) for u in users)

    info = QDQInfo(quantize=sum(n.op_type == "QuantizeLinear" for n in nodes),
                   dequantize=sum(n.op_type == "DequantizeLinear" for n in nodes))
    converted: dict[tuple[str, str], tuple[str, str]] = {}

    def constant(name: str, node) -> "np.ndarray":
        if name not in initializers:
            raise ValueError(f"{node.op_type} node {node.name!r}: {name!r} is not a constant "
                             "initialiser; TensorRT needs constant quantisation scales")
        return numpy_helper.to_array(initializers[name])

    def fresh(name: str) -> str:
        candidate, index = f"{name}_trt", 1
        while candidate in initializers:
            candidate, index = f"{name}_trt{index}", index + 1
        return candidate

    added_nodes, replaced = [], set()
    for node in nodes:
        scale_name = node.input[1]
        zero_name = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        scale = constant(scale_name, node)
        zero = (constant(zero_name, node) if zero_name
                else np.zeros(scale.shape, np.uint8))    # ONNX: no zero point = uint8 0
        if zero.dtype == np.int8 and not zero.any():
            continue                                      # already what TensorRT takes
        if zero.dtype not in (np.uint8, np.int8):
            continue                                      # fp8/int4/int32: left to TensorRT
        z = zero.astype(np.int64)
        headroom = np.maximum(z, 255 - z) if zero.dtype == np.uint8 else np.maximum(z + 128,
                                                                                    127 - z)
        key = (scale_name, zero_name)
        if key not in converted:
            new_scale = (scale.astype(np.float64) * headroom / 127.0).astype(scale.dtype)
            names = (fresh(scale_name), fresh(zero_name or f"{scale_name}_zero_point"))
            for array, name in ((new_scale, names[0]), (np.zeros(scale.shape, np.int8),
                                                        names[1])):
                tensor = numpy_helper.from_array(array, name)
                graph.initializer.append(tensor)
                initializers[name] = tensor
            converted[key] = names
            info.made_symmetric += 1
        new_scale_name, new_zero_name = converted[key]
        data_name = node.input[0]
        if node.op_type == "DequantizeLinear" and data_name in initializers:
            # Constant data (weights): requantise to the symmetric scale.
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            data = numpy_helper.to_array(initializers[data_name]).astype(np.int64)
            shape = [1] * data.ndim
            if scale.ndim == 1 and scale.size > 1:
                shape[axis % data.ndim] = scale.size
            real = (data - z.reshape(shape)) * scale.reshape(shape).astype(np.float64)
            new = numpy_helper.to_array(initializers[new_scale_name]).astype(np.float64)
            requantised = np.clip(np.rint(real / new.reshape(shape)), -127, 127).astype(np.int8)
            tensor = numpy_helper.from_array(requantised, fresh(data_name))
            graph.initializer.append(tensor)
            initializers[tensor.name] = tensor
            replaced.add(data_name)
            node.input[0] = tensor.name
        if (node.op_type == "QuantizeLinear" and zero.dtype == np.uint8 and not z.any()
                and getattr(producer.get(data_name), "op_type", None) not in _NON_NEGATIVE_OPS
                and not clamped_downstream(node)):
            relu_out = f"{data_name}_relu_for_trt"
            added_nodes.append((node, onnx.helper.make_node(
                "Relu", [data_name], [relu_out], name=f"{node.name}_relu_for_trt")))
            node.input[0] = relu_out
            info.relus_added += 1
        replaced.update(node.input[1:])
        del node.input[1:]
        node.input.extend([new_scale_name, new_zero_name])
    for before, relu in added_nodes:
        position = list(graph.node).index(before)
        graph.node.insert(position, relu)
    used = {name for n in graph.node for name in n.input}
    for tensor in [t for t in graph.initializer if t.name in replaced and t.name not in used]:
        graph.initializer.remove(tensor)        # the replaced uint8 scales and weights
    for value in list(graph.value_info):
        if value.type.tensor_type.elem_type == TensorProto.UINT8:
            graph.value_info.remove(value)      # Q outputs are int8 now; let TensorRT infer
    return info


def plugin_layer_counts(trt: ModuleType, network) -> dict[str, int]:
    """Plugin layers of the parsed network per plugin name (``"?"``: a plugin layer whose
    name TensorRT's Python API did not give)."""
    counts: dict[str, int] = {}
    plugin_types = {getattr(trt.LayerType, name) for name in ("PLUGIN_V3", "PLUGIN_V2", "PLUGIN")
                    if hasattr(trt.LayerType, name)}
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type not in plugin_types:
            continue
        name = _plugin_name(trt, layer) or "?"
        counts[name] = counts.get(name, 0) + 1
    return counts


def _plugin_name(trt: ModuleType, layer) -> str | None:
    try:
        if layer.type == getattr(trt.LayerType, "PLUGIN_V3", None):
            # network.get_layer returns the ILayer base; the subclass gives the plugin.
            layer.__class__ = trt.IPluginV3Layer
            core = layer.get_plugin().get_capability_interface(trt.PluginCapabilityType.CORE)
            return str(core.plugin_name)
        layer.__class__ = trt.IPluginV2Layer
        return str(layer.plugin.plugin_type)
    except Exception:   # noqa: BLE001 - an API difference between releases: name unknown
        return None


@dataclass
class CRFImplementation:
    """Which ConvCRF implementation a parsed network contains."""

    kind: str                       # "plugin", "standard-op" or "none"
    crf_nodes: dict[str, int]
    plugin_layers: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        if self.kind == "plugin":
            layers = " + ".join(f"{n} {name}" for name, n in sorted(self.plugin_layers.items())
                                if name in PLUGIN_NAMES)
            return f"ConvCRF implementation: TensorRT plugin ({layers} plugin layers)"
        if self.kind == "standard-op":
            return ("ConvCRF implementation: standard ONNX ops, NOT the plugin "
                    "(allowed by --allow-standard-op-crf)")
        return "ConvCRF implementation: none (this model has no ConvCRF)"


def check_crf_implementation(parsed: ParserInput, layers: dict[str, int],
                             allow_standard_op_crf: bool = False) -> CRFImplementation:
    """Compare the network's plugin layers of our creators with the ConvCRF nodes of the file.

    Raises:
        EngineBuildError: TensorRT would build (part of) the CRF from standard ops, or the
            plugin layers could not be identified; not raised with ``allow_standard_op_crf``.
    """
    ours = {name: n for name, n in layers.items() if name in PLUGIN_NAMES}
    expected = parsed.crf_nodes
    if not expected and not parsed.crf_in_model:
        return CRFImplementation("none", expected, ours)
    if expected and ours == expected:
        return CRFImplementation("plugin", expected, ours)
    if allow_standard_op_crf:
        return CRFImplementation("standard-op", expected, ours)
    fix = ("; pass --allow-standard-op-crf (allow_standard_op_crf=True) to build it anyway")
    if not expected:
        raise EngineBuildError(
            "this ONNX file's ConvCRF is made of standard ONNX ops (the portable flavour), so "
            "TensorRT would build the standard-op CRF instead of the ConvCRF plugin; export it "
            "with convcrf-export --flavor single-file (or plugin)" + fix)
    found = ", ".join(f"{n} {name}" for name, n in sorted(ours.items())) or "none"
    wanted = ", ".join(f"{n} {name}" for name, n in sorted(expected.items()))
    unknown = layers.get("?", 0)
    why = (f" ({unknown} plugin layer(s) could not be identified through this TensorRT's "
           "Python API)" if unknown else "")
    raise EngineBuildError(
        f"TensorRT would build the ConvCRF with standard ops: the file has {wanted} node(s) but "
        f"the parsed network has {found} ConvCRF plugin layer(s){why}; make sure the plugin "
        "library registers ConvCRFKernel/ConvCRFMessagePassing version 1 in namespace \"\"" + fix)


def _parser_errors(parser) -> list[str]:
    errors = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        desc = error.desc() if hasattr(error, "desc") else str(error)
        node = error.node() if hasattr(error, "node") else -1
        errors.append(f"{desc} (node {node})" if node is not None and node >= 0 else str(desc))
    return errors


def _set_profiles(trt: ModuleType, builder, network, config, profile: Profile) -> None:
    """One optimisation profile: ``image`` gets ``profile``; other dynamic inputs (e.g. the
    ``logits`` of a ``part="crf"`` export) take N, H, W from it and keep their static C."""
    opt_profile = builder.create_optimization_profile()
    names = []
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        names.append(tensor.name)
        dims = tuple(tensor.shape)
        if tensor.name == IMAGE_INPUT:
            shapes = (profile.min, profile.opt, profile.max)
        else:
            if len(dims) != 4 or dims[1] < 0:
                raise EngineBuildError(
                    f"input {tensor.name!r} has shape {dims}; only NCHW inputs with a static "
                    "channel count besides 'image' can be profiled automatically")
            shapes = tuple((s[0], dims[1], s[2], s[3]) for s in (profile.min, profile.opt, profile.max))
        opt_profile.set_shape(tensor.name, *shapes)
    if IMAGE_INPUT not in names:
        raise EngineBuildError(f"the network has inputs {names} but no {IMAGE_INPUT!r}: export the "
                               "model with convcrf-export (part 'full' or 'crf')")
    config.add_optimization_profile(opt_profile)
