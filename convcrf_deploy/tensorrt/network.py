"""What TensorRT's ONNX parser is given and what it must produce: the ONNX model with our
ConvCRF function bodies stripped (:func:`prepare_for_parser`), the check that the parsed network
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
class ParserInput:
    """The ONNX model as handed to TensorRT's parser, and what it must produce."""

    data: bytes                     # serialised model without our ConvCRF function bodies
    crf_nodes: dict[str, int]       # ConvCRF nodes per op type in the file
    stripped_functions: int         # model-local ConvCRF functions removed
    crf_in_model: bool              # the metadata says the graph runs a CRF


def prepare_for_parser(onnx_model: ExportedModel | str | os.PathLike) -> ParserInput:
    """Copy an exported model and strip the model-local functions named like our plugins.

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
    return ParserInput(model.SerializeToString(), crf_nodes, stripped, crf_in_model)


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
