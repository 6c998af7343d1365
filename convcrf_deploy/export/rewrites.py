"""Rewrites of the traced ONNX graph, so that it means the same in every runtime.

Each function edits ``model.graph`` in place and keeps to constructs that ONNX Runtime, the
ONNX reference evaluator (``onnx.reference``) and TensorRT's ONNX parser compute the same way:

* :func:`replace_ceil_mode_pooling`: ``AveragePool`` with ``ceil_mode=1`` (the ConvCRF's blur
  pooling, "the last window covers the remainder") becomes explicit zero padding to whole
  windows, a plain ``AveragePool`` and a division by the per-window pixel count computed in the
  graph. The ceil-mode corner case is computed differently across runtimes: onnx 1.23's
  reference evaluator divides the overhanging windows by the full window size (probabilities
  off by 0.38 on the demo model at 61x83), ONNX Runtime changed its output size at opset 19,
  and onnx-tensorrt has assertion failures and wrong edges for this combination.
* :func:`decompose_channel_softmax`: ``Softmax`` / ``LogSoftmax`` over a non-last axis as
  ReduceMax, Sub, Exp, ReduceSum, Div (Log, Sub): the max-subtracted formula every runtime
  computes alike, and ~3x faster than ORT CPU's transposing softmax.
* :func:`cast_custom_nodes_to_fp16`: FLOAT16 I/O for the ConvCRF nodes.

Needs onnx only.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import onnx_ops


class UnsupportedPoolingError(ValueError):
    """An ``AveragePool`` with ``ceil_mode=1`` that :func:`replace_ceil_mode_pooling` cannot
    rewrite (explicit pads, ``auto_pad`` or dilations)."""


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _unique_prefix(graph: onnx.GraphProto, stem: str) -> str:
    """A prefix no existing value name starts with (rewrites must not collide with the
    exporter's names)."""
    names = {n for node in graph.node for n in [*node.input, *node.output]}
    names |= {v.name for v in [*graph.input, *graph.output, *graph.initializer]}
    index = 0
    while any(n.startswith(f"{stem}{index}_") for n in names):
        index += 1
    return f"{stem}{index}_"


def _ceil_pooling_nodes(node: onnx.NodeProto, prefix: str) -> list[onnx.NodeProto]:
    """The replacement of one ceil-mode ``AveragePool`` (2-D, no pads, no dilation).

    For an axis of size ``n``, window ``k`` and stride ``s`` the ceil-mode output has
    ``last + 1`` windows with ``last = min((n - k + s - 1) // s, (n - 1) // s)`` (a window must
    start inside the input: PyTorch's and ONNX's rule). Padding the input with zeros at the end
    to ``last * s + k`` makes every window whole, so a floor-mode ``AveragePool`` gives
    ``sum / (k*k)``; pooling a zero-padded ones image the same way gives ``count / (k*k)``, and
    their ratio is ``sum / count``, the mean over the pixels inside the image. With ``k >= s``
    the padding is the constant ``s - 1`` (an attribute of the pooling, no copy of the input);
    otherwise it is computed from the input shape and applied with ``Pad``.
    """
    attrs = _attrs(node)
    kernel = [int(v) for v in attrs["kernel_shape"]]
    strides = [int(v) for v in attrs.get("strides", [1] * len(kernel))]
    x, y = node.input[0], node.output[0]
    out = []

    def make(op, inputs, name, **kw):
        out.append(helper.make_node(op, inputs, [prefix + name], **kw))
        return prefix + name

    def const(name, values, dtype=np.int64):
        return make("Constant", [], name, value=numpy_helper.from_array(
            np.asarray(values, dtype=dtype), prefix + name))

    hw = make("Shape", [x], "hw", start=2, end=4)
    ones = make("ConstantOfShape", [make("Concat", [const("one_one", [1, 1]), hw],
                                         "ones_shape", axis=0)],
                "ones", value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]))
    ones = make("CastLike", [ones, x], "ones_like")
    if all(k >= s for k, s in zip(kernel, strides)):
        # Windows at least as long as the stride (the blur pooling: k == s): padding s - 1
        # at the end gives last = (n - k + s - 1) // s for every n, so the padding is a
        # constant attribute and floor mode with count_include_pad=1 divides by k*k.
        pool = dict(kernel_shape=kernel, strides=strides, ceil_mode=0, count_include_pad=1,
                    pads=[0, 0, *(s - 1 for s in strides)])
        total = make("AveragePool", [x], "window_mean", **pool)
        share = make("AveragePool", [ones], "window_share", **pool)
        out.append(helper.make_node("Div", [total, share], [y]))
        return out
    k, s = const("k", kernel), const("s", strides)
    zero, one = const("zero", [0, 0]), const("one", [1, 1])
    # (n - k + s - 1) // s, clamped at 0 (integer Div truncates; the operand is >= 0).
    span = make("Max", [make("Add", [hw, const("s_minus_k_minus_1",
                                                [b - a - 1 for a, b in zip(kernel, strides)])],
                             "span_raw"), zero], "span")
    last = make("Min", [make("Div", [span, s], "last_window_a"),
                        make("Div", [make("Sub", [hw, one], "hw_minus_1"), s], "last_window_b")],
                "last_window")
    covered = make("Add", [make("Mul", [last, s], "last_start"), k], "covered")
    end_pads = make("Max", [make("Sub", [covered, hw], "end_pads_raw"), zero], "end_pads")
    pads = make("Concat", [const("begin_pads", [0] * 6), end_pads], "pads", axis=0)
    pool = dict(kernel_shape=kernel, strides=strides, ceil_mode=0, count_include_pad=0)
    total = make("AveragePool", [make("Pad", [x, pads], "padded", mode="constant")],
                 "window_mean", **pool)
    share = make("AveragePool", [make("Pad", [ones, pads], "ones_padded", mode="constant")],
                 "window_share", **pool)
    out.append(helper.make_node("Div", [total, share], [y]))
    return out


def replace_ceil_mode_pooling(model: onnx.ModelProto) -> int:
    """Replace every 2-D ``AveragePool`` with ``ceil_mode=1`` by padding, a floor-mode
    ``AveragePool`` and a division by the per-window count; returns how many were replaced.

    Raises:
        UnsupportedPoolingError: a ceil-mode ``AveragePool`` with explicit pads, ``auto_pad``
            or dilations (the remedy is in the message).
    """
    graph = model.graph
    prefix = _unique_prefix(graph, "ceil_pool")
    new_nodes, replaced = [], 0
    for node in graph.node:
        attrs = _attrs(node) if node.op_type == "AveragePool" and not node.domain else {}
        if not attrs.get("ceil_mode"):
            new_nodes.append(node)
            continue
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if (len(attrs.get("kernel_shape", [])) != 2 or any(attrs.get("pads", []))
                or any(d != 1 for d in attrs.get("dilations", [])) or auto_pad != "NOTSET"):
            raise UnsupportedPoolingError(
                f"AveragePool node {node.name or node.output[0]!r} uses ceil_mode with padding, "
                "auto_pad or dilation, which ONNX runtimes compute differently; use "
                "ceil_mode=False (pad explicitly with F.pad if the remainder matters)")
        new_nodes += _ceil_pooling_nodes(node, f"{prefix}{replaced}_")
        replaced += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    return replaced


def decompose_channel_softmax(model: onnx.ModelProto) -> None:
    """Rewrite ``Softmax`` / ``LogSoftmax`` over a non-last axis (the class axis 1 here) as
    ReduceMax, Sub, Exp, ReduceSum, Div (or Log, Sub): ONNX Runtime CPU transposes for a
    non-last axis, which made the CRF's softmaxes ~45 % of the portable graph's time at
    320x240; the decomposition is ~3x faster and numerically the same (max-subtracted).
    Reduce ops take their axes as a Constant input (opset >= 18), which TensorRT's parser
    reads as weights."""
    graph = model.graph
    prefix = _unique_prefix(graph, "softmax")
    new_nodes = []
    for index, node in enumerate(graph.node):
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), -1)
        if node.op_type not in ("Softmax", "LogSoftmax") or node.domain or axis == -1:
            new_nodes.append(node)
            continue
        x, y, tag = node.input[0], node.output[0], f"{prefix}{index}"
        make = helper.make_node
        axes = f"{tag}_axes"
        new_nodes += [
            make("Constant", [], [axes], value=helper.make_tensor(
                axes, TensorProto.INT64, [1], [axis])),
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


def cast_custom_nodes_to_fp16(model: onnx.ModelProto) -> None:
    """Give the ConvCRF nodes FLOAT16 I/O (Cast in front, Cast back to fp32 after): TensorRT
    11 picks a plugin's precision from its ONNX types. The ops compute in fp32 internally;
    softmax, pooling and upsampling around them stay fp32.

    Each tensor is cast once, however many nodes read it: the pairwise kernel K feeds every
    mean-field iteration's message passing."""
    graph = model.graph
    new_nodes = []
    halves: dict[str, str] = {}     # fp32 tensor -> its fp16 copy
    for node in graph.node:
        if node.domain != onnx_ops.DOMAIN:
            new_nodes.append(node)
            continue
        for i, name in enumerate(node.input):
            if name not in halves:
                halves[name] = f"{name}_fp16"
                new_nodes.append(helper.make_node("Cast", [name], [halves[name]],
                                                  to=TensorProto.FLOAT16))
            node.input[i] = halves[name]
        new_nodes.append(node)
        for i, name in enumerate(node.output):
            half = f"{name}_fp16"
            node.output[i] = half
            new_nodes.append(helper.make_node("Cast", [half], [name], to=TensorProto.FLOAT))
    del graph.node[:]
    graph.node.extend(new_nodes)
    # Stale fp32 value_info of the nodes' outputs would contradict the new types.
    kept = [v for v in graph.value_info if v.name in {o for n in graph.node for o in n.output}]
    del graph.value_info[:]
    graph.value_info.extend(kept)
