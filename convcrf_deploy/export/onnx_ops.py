"""The two ConvCRF ops in ONNX: schemas, exporter translations, standard-op lowering, evaluator.

Contract: docs/ops.md. In an exported graph the ops appear as nodes of domain ``trt.plugins``:

* ``ConvCRFKernel(features [N,D,h,w]) -> K [N,k*k,h,w]``
* ``ConvCRFMessagePassing(q [N,C,h,w], K [N,k*k,h,w]) -> M [N,C,h,w]``

each with the attributes ``filter_size`` (INT), ``plugin_version`` (STRING, "1") and
``plugin_namespace`` (STRING, ""): what TensorRT's ONNX parser passes to our plugin creator.

This module holds every ONNX-side piece of the ops, one place each:

* :func:`register_schemas`: ``onnx.defs.OpSchema`` for both ops (attribute validation and
  shape inference in ``onnx.checker`` / ``onnx.shape_inference``);
* :func:`translation_table`: the onnxscript functions the PyTorch exporter calls for
  ``torch.ops.convcrf.*`` (they emit the custom nodes);
* :func:`local_functions`: model-local ``FunctionProto`` bodies of standard ONNX ops (the
  "portable lowering"): ONNX Runtime inlines them, and inlining them gives the portable graph;
* :class:`ConvCRFKernel`, :class:`ConvCRFMessagePassing`: ``onnx.reference`` ``OpRun``
  implementations (the native CPU library, or NumPy when it is not built).

Requires onnx; :func:`translation_table` also needs torch and onnxscript.
"""
# No ``from __future__ import annotations``: the exporter reads the translation functions'
# annotations (onnxscript types imported inside translation_table) at run time.

import numpy as np
import onnx
from onnx import TensorProto, helper
from onnx.reference.op_run import OpRun

from .. import _native
from ..config import MAX_FILTER_SIZE

DOMAIN = "trt.plugins"
DOMAIN_VERSION = 1
KERNEL_OP = "ConvCRFKernel"
MESSAGE_PASSING_OP = "ConvCRFMessagePassing"
OP_TYPES = (KERNEL_OP, MESSAGE_PASSING_OP)
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = ""
#: Lowest standard-ONNX opset the function bodies work with (Split ``num_outputs``, Pad and
#: ReduceSum with tensor inputs).
MIN_BODY_OPSET = 18

_FLOAT_TYPES = ["tensor(float)", "tensor(float16)"]


def plugin_attributes(filter_size: int) -> dict[str, object]:
    """The attributes every ConvCRF node carries (docs/ops.md, "Attributes")."""
    return {"filter_size": int(filter_size), "plugin_version": PLUGIN_VERSION,
            "plugin_namespace": PLUGIN_NAMESPACE}


# ---- schemas ---------------------------------------------------------------------------------

def _attribute(ctx, name: str):
    attr = ctx.get_attribute(name)
    return None if attr is None else helper.get_attribute_value(attr)


def _validated_filter_size(ctx, op: str) -> int:
    k = _attribute(ctx, "filter_size")
    k = 7 if k is None else int(k)
    if k % 2 == 0 or not 1 <= k <= MAX_FILTER_SIZE:
        raise onnx.shape_inference.InferenceError(
            f"{op}: attribute filter_size must be odd and in 1..{MAX_FILTER_SIZE}, got {k}")
    for name, allowed in (("plugin_version", PLUGIN_VERSION),
                          ("plugin_namespace", PLUGIN_NAMESPACE)):
        value = _attribute(ctx, name)
        if value is not None:
            value = value.decode() if isinstance(value, bytes) else value
            if value != allowed:
                raise onnx.shape_inference.InferenceError(
                    f"{op}: attribute {name} must be {allowed!r}, got {value!r}")
    return k


def _dims(type_proto) -> list | None:
    if type_proto is None or not type_proto.tensor_type.HasField("shape"):
        return None
    return list(type_proto.tensor_type.shape.dim)


def _output_type(elem_type: int, dims: list) -> onnx.TypeProto:
    out = onnx.TypeProto()
    out.tensor_type.elem_type = elem_type
    shape = out.tensor_type.shape
    for dim in dims:
        new = shape.dim.add()
        if isinstance(dim, int):
            new.dim_value = dim
        else:
            new.CopyFrom(dim)
    return out


def _check_rank4(op: str, name: str, dims) -> None:
    if dims is not None and len(dims) != 4:
        raise onnx.shape_inference.InferenceError(
            f"{op}: input {name} must be 4-D [N, *, h, w], got rank {len(dims)}")


def _infer_kernel(ctx) -> None:
    k = _validated_filter_size(ctx, KERNEL_OP)
    in_type = ctx.get_input_type(0)
    dims = _dims(in_type)
    _check_rank4(KERNEL_OP, "features", dims)
    if dims is None:
        ctx.set_output_type(0, _output_type(in_type.tensor_type.elem_type, []))
        return
    ctx.set_output_type(0, _output_type(in_type.tensor_type.elem_type,
                                        [dims[0], k * k, dims[2], dims[3]]))


def _infer_message_passing(ctx) -> None:
    k = _validated_filter_size(ctx, MESSAGE_PASSING_OP)
    q_type, k_type = ctx.get_input_type(0), ctx.get_input_type(1)
    q_dims, k_dims = _dims(q_type), _dims(k_type)
    _check_rank4(MESSAGE_PASSING_OP, "q", q_dims)
    _check_rank4(MESSAGE_PASSING_OP, "K", k_dims)
    if k_dims is not None and k_dims[1].HasField("dim_value") and k_dims[1].dim_value != k * k:
        raise onnx.shape_inference.InferenceError(
            f"{MESSAGE_PASSING_OP}: K has {k_dims[1].dim_value} channels but filter_size={k} "
            f"needs k*k = {k * k}")
    if q_dims is not None and k_dims is not None:
        for axis, label in ((0, "N"), (2, "h"), (3, "w")):
            a, b = q_dims[axis], k_dims[axis]
            if a.HasField("dim_value") and b.HasField("dim_value") and a.dim_value != b.dim_value:
                raise onnx.shape_inference.InferenceError(
                    f"{MESSAGE_PASSING_OP}: q and K disagree on {label} "
                    f"({a.dim_value} vs {b.dim_value})")
    ctx.set_output_type(0, _output_type(q_type.tensor_type.elem_type, q_dims or []))


def _schema_attributes() -> list:
    attr = onnx.defs.OpSchema.Attribute
    return [
        attr("filter_size", helper.make_attribute("filter_size", 7),
             "Odd window size k in 1..31; K has k*k channels."),
        attr("plugin_version", helper.make_attribute("plugin_version", PLUGIN_VERSION),
             "TensorRT plugin version, '1'."),
        attr("plugin_namespace", helper.make_attribute("plugin_namespace", PLUGIN_NAMESPACE),
             "TensorRT plugin namespace, ''."),
    ]


def _make_schemas() -> list[onnx.defs.OpSchema]:
    param = onnx.defs.OpSchema.FormalParameter
    constraint = [("T", _FLOAT_TYPES, "fp32 or fp16; computed in fp32")]
    kernel = onnx.defs.OpSchema(
        KERNEL_OP, DOMAIN, DOMAIN_VERSION,
        "K[n,o(dy,dx),y,x] = exp(-0.5 * sum_d (F[n,d,y,x] - F[n,d,y+dy,x+dx])^2), zero at the "
        "centre and outside the image (docs/ops.md).",
        inputs=[param("features", "T", "[N, D, h, w] features divided by their bandwidths")],
        outputs=[param("K", "T", "[N, k*k, h, w]")],
        type_constraints=constraint, attributes=_schema_attributes())
    kernel.set_type_and_shape_inference_function(_infer_kernel)
    message_passing = onnx.defs.OpSchema(
        MESSAGE_PASSING_OP, DOMAIN, DOMAIN_VERSION,
        "M[n,c,y,x] = sum_{dy,dx} K[n,o(dy,dx),y,x] * q[n,c,y+dy,x+dx], zero outside the "
        "image (docs/ops.md).",
        inputs=[param("q", "T", "[N, C, h, w]"), param("K", "T", "[N, k*k, h, w]")],
        outputs=[param("M", "T", "[N, C, h, w]")],
        type_constraints=constraint, attributes=_schema_attributes())
    message_passing.set_type_and_shape_inference_function(_infer_message_passing)
    return [kernel, message_passing]


def register_schemas() -> None:
    """Register the two ops' schemas with ``onnx.defs`` (idempotent).

    Afterwards ``onnx.checker.check_model(full_check=True)`` and strict shape inference
    validate the nodes' attributes (odd ``filter_size`` in 1..31, plugin version/namespace)
    and propagate their output shapes.
    """
    for schema in _make_schemas():
        if not onnx.defs.has(schema.name, schema.domain):
            onnx.defs.register_schema(schema)


# ---- PyTorch exporter translations -------------------------------------------------------------

def translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export(dynamo=True)``: each
    ``torch.ops.convcrf.*`` call becomes one ``trt.plugins`` node."""
    import onnxscript
    import torch
    from onnxscript import FLOAT

    # The exporter looks ops up through onnx.defs, hence the schemas first.
    register_schemas()
    trt = onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION)

    def gaussian_kernel(features: FLOAT, filter_size: int) -> FLOAT:
        return trt.ConvCRFKernel(features, filter_size=filter_size,
                                 plugin_version=PLUGIN_VERSION, plugin_namespace=PLUGIN_NAMESPACE)

    def message_passing(q: FLOAT, kernel: FLOAT, filter_size: int) -> FLOAT:
        return trt.ConvCRFMessagePassing(q, kernel, filter_size=filter_size,
                                         plugin_version=PLUGIN_VERSION,
                                         plugin_namespace=PLUGIN_NAMESPACE)

    # Importing ops registers torch.ops.convcrf.*.
    from .. import ops  # noqa: F401
    return {torch.ops.convcrf.gaussian_kernel.default: gaussian_kernel,
            torch.ops.convcrf.message_passing.default: message_passing}


# ---- standard-op lowering (model-local function bodies) -----------------------------------------

#: Slice end meaning "to the end of the axis".
_SLICE_TO_END = np.iinfo(np.int64).max


class _Body:
    """Collects the nodes of a function body; names are local to the function."""

    def __init__(self, filter_size: int):
        self.k = filter_size
        self.r = filter_size // 2
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0
        self._constants: dict[tuple, str] = {}

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        self._count += 1
        out = f"{op.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def const(self, values, dtype=np.int64) -> str:
        """A Constant node (one per distinct value: slices share their index tensors)."""
        array = np.asarray(values, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            self._constants[key] = self.node("Constant", [],
                                             value=onnx.numpy_helper.from_array(array))
        return self._constants[key]

    def offsets(self):
        """``(o, dy, dx)`` in the channel order of docs/ops.md."""
        for dy in range(-self.r, self.r + 1):
            for dx in range(-self.r, self.r + 1):
                yield (dy + self.r) * self.k + (dx + self.r), dy, dx

    def pad(self, x: str) -> str:
        r = self.r
        return self.node("Pad", [x, self.const([0, 0, r, r, 0, 0, r, r])], mode="constant")

    def shifted(self, padded: str, dy: int, dx: int) -> str:
        """``padded[:, :, r+dy : r+dy+h, r+dx : r+dx+w]``: the neighbour at (dy, dx).

        The ends count from the end of the padded axis (``h + 2r``), so that every index is
        a constant whatever the image size (no Shape arithmetic per slice)."""
        starts = [self.r + dy, self.r + dx]
        ends = [-(self.r - d) if d < self.r else _SLICE_TO_END for d in (dy, dx)]
        return self.node("Slice", [padded, self.const(starts), self.const(ends),
                                   self.const([2, 3])])


def _kernel_body(filter_size: int) -> _Body:
    b = _Body(filter_size)
    f32 = b.node("Cast", ["features"], to=TensorProto.FLOAT)
    hw = b.node("Shape", [f32], start=2)
    n1 = b.node("Shape", [f32], start=0, end=1)
    padded = b.pad(f32)
    # Validity of each neighbour: a ones image padded with zeros, shifted like the features.
    ones = b.node("ConstantOfShape", [b.node("Concat", [b.const([1, 1]), hw], axis=0)],
                  value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]))
    valid = b.pad(ones)
    minus_half = b.const([-0.5], np.float32)
    channels = []
    for _, dy, dx in b.offsets():
        if dy == 0 and dx == 0:
            zero_shape = b.node("Concat", [n1, b.const([1]), hw], axis=0)
            channels.append(b.node("ConstantOfShape", [zero_shape], value=helper.make_tensor(
                "zero", TensorProto.FLOAT, [1], [0.0])))
            continue
        diff = b.node("Sub", [f32, b.shifted(padded, dy, dx)])
        dist = b.node("ReduceSum", [b.node("Mul", [diff, diff]), b.const([1])], keepdims=1)
        weight = b.node("Exp", [b.node("Mul", [dist, minus_half])])
        channels.append(b.node("Mul", [weight, b.shifted(valid, dy, dx)]))
    k32 = b.node("Concat", channels, axis=1) if len(channels) > 1 else channels[0]
    b.nodes.append(helper.make_node("CastLike", [k32, "features"], ["K"]))
    return b


def _message_passing_body(filter_size: int) -> _Body:
    b = _Body(filter_size)
    q32 = b.node("Cast", ["q"], to=TensorProto.FLOAT)
    k32 = b.node("Cast", ["K"], to=TensorProto.FLOAT)
    padded = b.pad(q32)
    # One Split instead of k*k Slices of K: each output is one offset's weights [N,1,h,w].
    n_offsets = filter_size * filter_size
    weights = [f"weight_{o}" for o in range(n_offsets)]
    if n_offsets > 1:
        b.nodes.append(helper.make_node("Split", [k32], weights, axis=1, num_outputs=n_offsets))
    else:
        weights = [k32]
    # One Sum per window row, then a Sum of the rows: ~20 % faster in ONNX Runtime CPU than a
    # chain of k*k Adds, while holding only k products at a time (a single k*k-input Sum
    # would hold all of them: hundreds of MB at 640x480 with k = 11).
    rows = []
    for dy in range(-b.r, b.r + 1):
        terms = [b.node("Mul", [weights[(dy + b.r) * filter_size + dx + b.r],
                                b.shifted(padded, dy, dx)])
                 for dx in range(-b.r, b.r + 1)]
        rows.append(b.node("Sum", terms) if len(terms) > 1 else terms[0])
    total = b.node("Sum", rows) if len(rows) > 1 else rows[0]
    b.nodes.append(helper.make_node("CastLike", [total, "q"], ["M"]))
    return b


def local_functions(filter_size: int, opset: int) -> list[onnx.FunctionProto]:
    """Model-local functions ``trt.plugins::ConvCRFKernel`` and ``ConvCRFMessagePassing`` with
    bodies of standard ONNX ops for one ``filter_size`` (a model has a single one).

    The bodies compute in fp32 whatever the I/O type (Cast in, CastLike out), as docs/ops.md
    requires. They declare the plugin attributes so that nodes carrying them stay valid.
    ``opset`` is the model's standard-ONNX opset (a function must import the same version);
    at least :data:`MIN_BODY_OPSET`.
    """
    if opset < MIN_BODY_OPSET:
        raise ValueError(f"the standard-op lowering of the ConvCRF ops needs ONNX opset >= "
                         f"{MIN_BODY_OPSET}, got {opset}; export with opset={MIN_BODY_OPSET} or newer")
    attributes = list(plugin_attributes(filter_size))
    opsets = [helper.make_opsetid("", opset)]
    functions = []
    for name, body, inputs, output in (
            (KERNEL_OP, _kernel_body(filter_size), ["features"], "K"),
            (MESSAGE_PASSING_OP, _message_passing_body(filter_size), ["q", "K"], "M")):
        functions.append(helper.make_function(
            DOMAIN, name, inputs, [output], body.nodes, opsets, attributes=attributes,
            doc_string=f"Standard-ONNX lowering of {name} for filter_size={filter_size} "
                       "(docs/ops.md); convcrf-build strips it so that TensorRT uses the plugin."))
    return functions


# ---- NumPy / native evaluation (onnx.reference) -------------------------------------------------

def with_function_bodies(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model``, or, where its ConvCRF nodes have no function bodies (the plugin flavour), a
    copy with the standard-op bodies of :func:`local_functions` added (what the single-file
    flavour carries), so that ONNX Runtime without ``libconvcrf_ort_ops`` runs it. The one
    place that does this: export verification, INT8 calibration and ``convcrf-seal`` use it.

    Raises:
        ValueError: the ConvCRF nodes disagree on ``filter_size`` (a model has one), or the
            model's opset is below :data:`MIN_BODY_OPSET`.
    """
    defined = {(f.domain, f.name) for f in model.functions}
    missing = [n for n in model.graph.node
               if n.domain == DOMAIN and (n.domain, n.op_type) not in defined]
    if not missing:
        return model
    sizes = {helper.get_attribute_value(a) for n in missing for a in n.attribute
             if a.name == "filter_size"}
    if len(sizes) != 1:
        raise ValueError(f"the graph's ConvCRF nodes have filter sizes {sorted(sizes)}; a "
                         "model has one")
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    runnable = onnx.ModelProto()
    runnable.CopyFrom(model)
    runnable.functions.extend(f for f in local_functions(int(sizes.pop()), opset)
                              if (f.domain, f.name) not in defined)
    return runnable


def _compute_dtype(x: np.ndarray):
    return np.float64 if x.dtype == np.float64 else np.float32


def gaussian_kernel_numpy(features: np.ndarray, filter_size: int) -> np.ndarray:
    """NumPy version of docs/ops.md ``gaussian_kernel`` (``[N,D,h,w] -> [N,k*k,h,w]``)."""
    f = features.astype(_compute_dtype(features))
    n, _, h, w = f.shape
    r = filter_size // 2
    padded = np.pad(f, ((0, 0), (0, 0), (r, r), (r, r)))
    valid = np.pad(np.ones((h, w), f.dtype), r)
    out = np.zeros((n, filter_size * filter_size, h, w), f.dtype)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy == 0 and dx == 0:
                continue
            window = (slice(r + dy, r + dy + h), slice(r + dx, r + dx + w))
            dist = ((f - padded[(slice(None), slice(None)) + window]) ** 2).sum(axis=1)
            out[:, (dy + r) * filter_size + dx + r] = np.exp(-0.5 * dist) * valid[window]
    return out.astype(features.dtype)


def message_passing_numpy(q: np.ndarray, kernel: np.ndarray, filter_size: int) -> np.ndarray:
    """NumPy version of docs/ops.md ``message_passing`` (``[N,C,h,w], [N,k*k,h,w] -> [N,C,h,w]``)."""
    dtype = _compute_dtype(q)
    qf, kf = q.astype(dtype), kernel.astype(dtype)
    _, _, h, w = qf.shape
    r = filter_size // 2
    padded = np.pad(qf, ((0, 0), (0, 0), (r, r), (r, r)))
    out = np.zeros_like(qf)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            o = (dy + r) * filter_size + dx + r
            out += kf[:, o:o + 1] * padded[:, :, r + dy:r + dy + h, r + dx:r + dx + w]
    return out.astype(q.dtype)


def _native_call(name: str, arrays: list[np.ndarray], dims: tuple, filter_size: int,
                 out: np.ndarray) -> bool:
    lib = _native.cpu_library()
    if lib is None:
        return False
    pointers = [a.ctypes.data for a in arrays]
    _native.check(getattr(lib, f"convcrf_{name}_f32")(
        *pointers, *dims, filter_size, out.ctypes.data, _native.default_threads()), name)
    return True


def _require_4d(op: str, **arrays: np.ndarray) -> None:
    for name, a in arrays.items():
        if a.ndim != 4:
            raise ValueError(f"{op}: input {name} must be 4-D, got shape {a.shape}")


class ConvCRFKernel(OpRun):
    """``onnx.reference`` evaluator of ``trt.plugins::ConvCRFKernel``."""

    op_domain = DOMAIN

    def _run(self, features, filter_size=None, plugin_version=None, plugin_namespace=None):
        _require_4d(KERNEL_OP, features=features)
        k = 7 if filter_size is None else int(filter_size)
        if features.dtype == np.float64:
            return (gaussian_kernel_numpy(features, k),)
        f = np.ascontiguousarray(features, dtype=np.float32)
        n, d, h, w = f.shape
        out = np.empty((n, k * k, h, w), np.float32)
        if not _native_call("gaussian_kernel", [f], (n, d, h, w), k, out):
            out = gaussian_kernel_numpy(f, k)
        return (out.astype(features.dtype),)


class ConvCRFMessagePassing(OpRun):
    """``onnx.reference`` evaluator of ``trt.plugins::ConvCRFMessagePassing``."""

    op_domain = DOMAIN

    def _run(self, q, kernel, filter_size=None, plugin_version=None, plugin_namespace=None):
        _require_4d(MESSAGE_PASSING_OP, q=q, K=kernel)
        k = 7 if filter_size is None else int(filter_size)
        n, c, h, w = q.shape
        if kernel.shape != (n, k * k, h, w):
            raise ValueError(f"{MESSAGE_PASSING_OP}: K must have shape {(n, k * k, h, w)} for q "
                             f"{q.shape} and filter_size {k}, got {kernel.shape}")
        if q.dtype == np.float64:
            return (message_passing_numpy(q, kernel, k),)
        qf = np.ascontiguousarray(q, dtype=np.float32)
        kf = np.ascontiguousarray(kernel, dtype=np.float32)
        out = np.empty_like(qf)
        if not _native_call("message_passing", [qf, kf], (n, c, h, w), k, out):
            out = message_passing_numpy(qf, kf, k)
        return (out.astype(q.dtype),)


#: ``new_ops`` for ``onnx.reference.ReferenceEvaluator``.
REFERENCE_OPS = [ConvCRFKernel, ConvCRFMessagePassing]
