"""The exported model file (``.onnx`` from ``convcrf-export``): the one place that reads and writes
it (onnx and numpy; no torch).

Reading (:meth:`ExportedModel.open`): the file is opened without its external data, checked to
be ONNX at all, its **content digest** compared with the one stored in it, and its metadata
cross-checked against its graph; then :attr:`ExportedModel.metadata` (classes, palette,
normalisation, input size and constraints), :attr:`~ExportedModel.flavor`,
:attr:`~ExportedModel.precision`, :attr:`~ExportedModel.crf_config`,
:attr:`~ExportedModel.crf_state`, the graph's inputs and outputs, its ConvCRF nodes and the
unary logits are read from it. Every reader of exported files goes through it: the ONNX Runtime
backend, ``convcrf-build`` and the TensorRT backend, ``convcrf-triton`` and ``convcrf-seal``.

Writing (:func:`set_metadata`, :func:`seal`, :func:`write`): the ``convcrf.*`` metadata entries,
the digest, and an atomic write that reads the written file back with the same reader before it
replaces anything.

The file format (metadata_props; docs/export.md):

* :data:`convcrf_deploy.metadata.ONNX_KEYS` (classes, palette, normalisation, input size,
  resize policy, input constraints, CRF configuration and trained parameters, version, flavour)
  and :data:`PRECISION_KEY`;
* :data:`DIGEST_KEY` ``convcrf.content_sha256``: :func:`content_digest`, a SHA-256 over what
  the file *means*, not its bytes: every initializer's name, type, shape and values whatever
  their storage (``raw_data``, the typed fields such as ``float_data``, or external data),
  every node's op type, domain, inputs, outputs and attributes (subgraphs included), the graph's
  inputs and outputs with their types and shapes, the model-local functions, the opsets, and our
  ``convcrf.*`` metadata entries. Not covered, because they do not change what the model
  computes and tools rewrite them freely: node and graph names, doc strings, ``value_info``
  (shape annotations), the IR version, producer fields, metadata entries of other tools, and
  the order of nodes, initializers, functions, opsets and metadata entries. So ``onnx.save``
  re-saves, ``save_as_external_data=True`` and shape inference keep a file valid; any change of
  a weight, an attribute, a connection or our metadata makes it "damaged".
* :data:`LEGACY_DIGEST_KEY` ``convcrf.weights_sha256``: the digest of convcrf-deploy 0.1, over
  the graph's serialised bytes (:func:`legacy_digest`). Such files are accepted when that
  digest still matches (the file is as exported); when it does not, the file is refused as
  damaged as before, since a byte digest cannot tell a re-save from an edit: the message says
  to re-export, or to re-seal a deliberately re-saved or optimised copy with ``convcrf-seal``.
  Files without either digest load unchecked with one warning per file
  (:data:`convcrf_deploy.files.MISSING_DIGEST_POLICY`).
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ._warnings import warn
from .config import CRFConfig
from .errors import describe_error
from .files import (MISSING_DIGEST_POLICY, DamagedFileError, atomic_write,
                    refuse_output_overwriting_input)
from .metadata import ONNX_KEYS, ModelMetadata

#: metadata_props key of :func:`content_digest` (written by every writer of exported files).
DIGEST_KEY = "convcrf.content_sha256"
#: metadata_props key of convcrf-deploy 0.1's byte digest (read only; see the module doc).
LEGACY_DIGEST_KEY = "convcrf.weights_sha256"
#: metadata_props key of the precision of the unary and the ConvCRF op I/O: "fp32", "fp16" or
#: "fp16-crf" (the ConvCRF op I/O in fp16, the unary in fp32: ``convcrf-export --fp16 crf``).
PRECISION_KEY = "convcrf.precision"
#: metadata_props key describing the ONNX unary a file's CRF was attached to
#: (``convcrf-export --unary``; JSON: file name, SHA-256, producer, opset, input and logits
#: convention). Absent in files exported from PyTorch.
UNARY_SOURCE_KEY = "convcrf.unary_source"
#: prefix of our metadata_props keys (the ones the digest covers).
KEY_PREFIX = "convcrf."
#: domain of the custom ConvCRF nodes (docs/ops.md; convcrf_deploy.export.onnx_ops.DOMAIN).
PLUGIN_DOMAIN = "trt.plugins"
#: op types of the ConvCRF nodes (convcrf_deploy.export.onnx_ops.OP_TYPES).
CRF_OP_TYPES = ("ConvCRFKernel", "ConvCRFMessagePassing")
#: export flavours (convcrf_deploy.export.FLAVORS) and precisions.
FLAVORS = ("single-file", "plugin", "portable")
PRECISIONS = ("fp32", "fp16", "fp16-crf")
#: graph inputs and outputs of each part ``convcrf-export --part`` writes (optional outputs
#: after the required ones).
GRAPH_IO = {
    "full": (("image",), ("probabilities", "labels"), ("unary_labels",)),
    "unary": (("image",), ("logits",), ()),
    "crf": (("logits", "image"), ("probabilities", "labels"), ()),
}
#: rank of every named graph tensor ([N, C, H, W] or [N, H, W]).
_RANKS = {"image": 4, "logits": 4, "probabilities": 4, "labels": 3, "unary_labels": 3}
#: the command that re-seals a deliberately changed file (named in the "damaged" message).
RESEAL_COMMAND = "convcrf-seal CHANGED.onnx --original EXPORTED.onnx -o OUT.onnx"


class InconsistentModelError(ValueError):
    """An exported file whose metadata disagrees with its own graph (e.g. 3 class names for a
    graph that outputs 5 channels); the message names both values and the fix."""


class MissingDigestWarning(UserWarning):
    """An exported file carries no digest: it loads unchecked (damage cannot be detected)."""


# ---- the content digest ----------------------------------------------------------------------

class _Hasher:
    """SHA-256 over a typed, length-prefixed stream, so that no two different contents give the
    same byte stream (``"ab" + "c"`` differs from ``"a" + "bc"``)."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()

    def tag(self, text: str) -> None:
        self.text(text)

    def text(self, value: str | bytes) -> None:
        data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        self.sha.update(struct.pack("<Q", len(data)))
        self.sha.update(data)

    def integer(self, value: int) -> None:
        self.text(str(int(value)))

    def real(self, value: float) -> None:
        self.sha.update(struct.pack("<d", float(value)))   # bit-exact, not a decimal rendering

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


# TensorProto.DataType -> little-endian dtype of one element in raw_data (the ONNX spec's
# storage), for tensors stored in the typed fields instead.
_INT32_FIELD_TYPES = {2: "<u1", 3: "<i1", 4: "<u2", 5: "<i2", 6: "<i4", 9: "<u1",
                      10: "<u2", 16: "<u2",                     # float16 / bfloat16 bit patterns
                      17: "<u1", 18: "<u1", 19: "<u1", 20: "<u1",   # float8 variants
                      21: "<u1", 22: "<u1", 23: "<u1", 25: "<u1", 26: "<u1"}  # packed 4/2-bit
_STRING = 8


def _typed_field_bytes(tensor) -> bytes:
    """The raw little-endian bytes of a tensor stored in its typed fields (``float_data``,
    ``int32_data``, ...): the bytes ``raw_data`` would hold for the same values."""
    kind = tensor.data_type
    if kind in (1, 14):                                       # float, complex64
        return np.asarray(tensor.float_data, "<f4").tobytes()
    if kind in (11, 15):                                      # double, complex128
        return np.asarray(tensor.double_data, "<f8").tobytes()
    if kind == 7:
        return np.asarray(tensor.int64_data, "<i8").tobytes()
    if kind in (12, 13):
        return np.asarray(tensor.uint64_data, "<u4" if kind == 12 else "<u8").tobytes()
    if kind in _INT32_FIELD_TYPES:
        return np.asarray(tensor.int32_data, np.int64).astype(_INT32_FIELD_TYPES[kind]).tobytes()
    # A type this reader does not know: its typed fields as they are (still content-stable).
    return tensor.SerializeToString(deterministic=True)


def _external_location(tensor, base_dir: Path | None) -> tuple[Path, int, int | None]:
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    if base_dir is None:
        raise ValueError(f"tensor {tensor.name!r} is stored as external data ({location!r}), "
                         "but the model was not read from a file")
    relative = Path(location)
    if not location or relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"tensor {tensor.name!r} names external data {location!r} outside the "
                         "model's folder; the file is damaged or unsafe: export it again")
    path = base_dir / relative
    if not path.is_file():
        raise ValueError(f"tensor {tensor.name!r} is stored in {location!r}, which is missing "
                         f"beside the model (in {base_dir}); copy it there with the .onnx file")
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise ValueError(f"tensor {tensor.name!r}: malformed external data offset/length "
                         f"{info}; the file is damaged: export it again") from None
    return path, offset, length


def _hash_tensor(h: _Hasher, tensor, base_dir: Path | None) -> None:
    h.tag("tensor")
    h.text(tensor.name)
    h.integer(tensor.data_type)
    h.text(",".join(str(int(d)) for d in tensor.dims))
    if tensor.data_type == _STRING:
        h.integer(len(tensor.string_data))
        for item in tensor.string_data:
            h.text(item)
        return
    if tensor.data_location == 1 or (tensor.external_data and not tensor.raw_data):  # EXTERNAL
        path, offset, length = _external_location(tensor, base_dir)
        size = path.stat().st_size - offset if length is None else length
        if offset < 0 or size < 0 or offset + size > path.stat().st_size:
            raise DamagedFileError(f"tensor {tensor.name!r}: its external data in {path.name} "
                                   "is shorter than recorded; the file is damaged: export it "
                                   "again")
        h.sha.update(struct.pack("<Q", size))
        with open(path, "rb") as handle:
            handle.seek(offset)
            left = size
            while left:
                block = handle.read(min(left, 1 << 22))
                if not block:
                    raise DamagedFileError(f"tensor {tensor.name!r}: {path.name} ended early")
                h.sha.update(block)
                left -= len(block)
        return
    h.text(tensor.raw_data if tensor.raw_data else _typed_field_bytes(tensor))


def _hash_type(h: _Hasher, type_proto) -> None:
    # Deterministic serialisation of the type (element type, shape with dim_value/dim_param);
    # denotations are documentation.
    copy = type(type_proto)()
    copy.CopyFrom(type_proto)
    _strip_denotations(copy)
    h.text(copy.SerializeToString(deterministic=True))


def _strip_denotations(type_proto) -> None:
    type_proto.ClearField("denotation")
    which = type_proto.WhichOneof("value")
    if which in ("tensor_type", "sparse_tensor_type"):
        for dim in getattr(type_proto, which).shape.dim:
            dim.ClearField("denotation")
    elif which in ("sequence_type", "optional_type"):
        _strip_denotations(getattr(type_proto, which).elem_type)
    elif which == "map_type":
        _strip_denotations(type_proto.map_type.value_type)


def _hash_value_infos(h: _Hasher, tag: str, values) -> None:
    h.tag(tag)
    h.integer(len(values))
    for value in values:
        h.text(value.name)
        _hash_type(h, value.type)


def _hash_attribute(h: _Hasher, attribute, base_dir: Path | None) -> None:
    h.tag("attribute")
    h.text(attribute.name)
    h.text(attribute.ref_attr_name)
    h.integer(attribute.type)
    if attribute.HasField("f"):
        h.real(attribute.f)
    h.integer(attribute.i)
    h.text(attribute.s)
    if attribute.HasField("t"):
        _hash_tensor(h, attribute.t, base_dir)
    if attribute.HasField("g"):
        h.text(_graph_digest(attribute.g, base_dir))
    if attribute.HasField("sparse_tensor"):
        _hash_sparse(h, attribute.sparse_tensor, base_dir)
    if attribute.HasField("tp"):
        _hash_type(h, attribute.tp)
    h.integer(len(attribute.floats))
    for value in attribute.floats:
        h.real(value)
    h.text(",".join(str(v) for v in attribute.ints))
    h.integer(len(attribute.strings))
    for value in attribute.strings:
        h.text(value)
    for tensor in attribute.tensors:
        _hash_tensor(h, tensor, base_dir)
    for graph in attribute.graphs:
        h.text(_graph_digest(graph, base_dir))
    for sparse in attribute.sparse_tensors:
        _hash_sparse(h, sparse, base_dir)
    for type_proto in attribute.type_protos:
        _hash_type(h, type_proto)


def _hash_sparse(h: _Hasher, sparse, base_dir: Path | None) -> None:
    h.tag("sparse")
    h.text(",".join(str(int(d)) for d in sparse.dims))
    _hash_tensor(h, sparse.values, base_dir)
    _hash_tensor(h, sparse.indices, base_dir)


def _domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def _node_digest(node, base_dir: Path | None) -> str:
    h = _Hasher()
    h.tag("node")
    h.text(node.op_type)
    h.text(_domain(node.domain))
    h.text(node.overload)
    h.text("\0".join(node.input))
    h.text("\0".join(node.output))
    for attribute in sorted(node.attribute, key=lambda a: a.name):
        _hash_attribute(h, attribute, base_dir)
    return h.hexdigest()


def _nodes(h: _Hasher, nodes, base_dir: Path | None) -> None:
    # A graph is defined by its connections, not by the order of its nodes (any topological
    # order is the same graph; optimisers and re-savers may reorder them).
    digests = sorted(_node_digest(node, base_dir) for node in nodes)
    h.integer(len(digests))
    for digest in digests:
        h.text(digest)


def _graph_digest(graph, base_dir: Path | None) -> str:
    h = _Hasher()
    h.tag("graph")
    _hash_value_infos(h, "inputs", graph.input)
    _hash_value_infos(h, "outputs", graph.output)
    _nodes(h, graph.node, base_dir)
    h.tag("initializers")
    h.integer(len(graph.initializer))
    for tensor in sorted(graph.initializer, key=lambda t: t.name):
        _hash_tensor(h, tensor, base_dir)
    h.tag("sparse_initializers")
    h.integer(len(graph.sparse_initializer))
    for sparse in sorted(graph.sparse_initializer, key=lambda s: s.values.name):
        _hash_sparse(h, sparse, base_dir)
    h.tag("quantization")
    for annotation in sorted(graph.quantization_annotation, key=lambda a: a.tensor_name):
        h.text(annotation.tensor_name)
        for entry in sorted(annotation.quant_parameter_tensor_names, key=lambda e: e.key):
            h.text(entry.key)
            h.text(entry.value)
    return h.hexdigest()


def _opsets(h: _Hasher, opsets) -> None:
    h.tag("opsets")
    for domain, version in sorted((_domain(o.domain), int(o.version)) for o in opsets):
        h.text(domain)
        h.integer(version)


def _function_digest(function, base_dir: Path | None) -> str:
    h = _Hasher()
    h.tag("function")
    h.text(_domain(function.domain))
    h.text(function.name)
    h.text(function.overload)
    h.text("\0".join(function.input))
    h.text("\0".join(function.output))
    h.text("\0".join(function.attribute))
    for attribute in sorted(function.attribute_proto, key=lambda a: a.name):
        _hash_attribute(h, attribute, base_dir)
    _opsets(h, function.opset_import)
    _nodes(h, function.node, base_dir)
    return h.hexdigest()


def content_digest(model_proto, base_dir: str | os.PathLike | None = None) -> str:
    """SHA-256 (hex) of what an ONNX model computes and our metadata (see the module doc for
    what is covered and what is not, and why).

    Args:
        model_proto: the ``onnx.ModelProto``; initializers stored as external data are read
            from ``base_dir`` (the model file's folder), a block at a time.

    Raises:
        ValueError: external data is missing, outside ``base_dir`` or malformed.
        DamagedFileError: external data is shorter than its recorded length.
    """
    base = Path(base_dir) if base_dir is not None else None
    h = _Hasher()
    h.tag("convcrf-content-v1")
    _opsets(h, model_proto.opset_import)
    h.text(_graph_digest(model_proto.graph, base))
    h.tag("functions")
    functions = sorted(_function_digest(f, base) for f in model_proto.functions)
    h.integer(len(functions))
    for digest in functions:
        h.text(digest)
    h.tag("metadata")
    ours = sorted((p.key, p.value) for p in model_proto.metadata_props
                  if p.key.startswith(KEY_PREFIX) and p.key not in (DIGEST_KEY, LEGACY_DIGEST_KEY))
    h.integer(len(ours))
    for key, value in ours:
        h.text(key)
        h.text(value)
    return h.hexdigest()


def legacy_digest(model_proto) -> str:
    """convcrf-deploy 0.1's digest (:data:`LEGACY_DIGEST_KEY`): SHA-256 of the graph's and the
    functions' deterministic serialisation plus our metadata; read only, to accept files that
    version wrote as long as they are byte-for-byte what it wrote."""
    digest = hashlib.sha256(model_proto.graph.SerializeToString(deterministic=True))
    for function in model_proto.functions:
        digest.update(function.SerializeToString(deterministic=True))
    for prop in sorted(model_proto.metadata_props, key=lambda p: p.key):
        if prop.key.startswith(KEY_PREFIX) and prop.key not in (LEGACY_DIGEST_KEY, DIGEST_KEY):
            digest.update(f"\0{prop.key}\0{prop.value}".encode())
    return digest.hexdigest()


# ---- the graph as the runtime sees it ------------------------------------------------------------

@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: ONNX element type (``TensorProto.DataType``) and shape, each
    dimension an int (static), a str (symbolic) or ``None`` (unknown); ``shape`` is ``None``
    when the rank is unknown."""

    name: str
    elem_type: int
    shape: tuple[int | str | None, ...] | None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    def static_dim(self, axis: int) -> int | None:
        if self.shape is None or axis >= len(self.shape):
            return None
        value = self.shape[axis]
        return value if isinstance(value, int) else None


def _tensor_info(value) -> TensorInfo:
    tensor_type = value.type.tensor_type
    shape = None
    if tensor_type.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                      for d in tensor_type.shape.dim)
    return TensorInfo(value.name, tensor_type.elem_type, shape)


def unary_logits_name(model_proto) -> str | None:
    """Name of the unary logits in an exported full graph: the input of the ``ArgMax`` that
    produces ``unary_labels`` (the export computes ``logits.argmax(dim=1)``), or ``None``."""
    for node in model_proto.graph.node:
        if node.op_type == "ArgMax" and not node.domain and list(node.output) == ["unary_labels"]:
            return node.input[0]
    return None


def needs_custom_ops(model_proto) -> bool:
    """True when the graph has ConvCRF nodes (``trt.plugins`` domain) without a model-local
    function body (the ``plugin`` flavour): they run only where their kernels are registered
    (TensorRT with our plugin, ONNX Runtime with ``libconvcrf_ort_ops``). The ``single-file``
    flavour defines them as functions too."""
    local = {(f.domain, f.name) for f in model_proto.functions}
    return any(node.domain == PLUGIN_DOMAIN and (node.domain, node.op_type) not in local
               for node in model_proto.graph.node)


def extract_part(model_proto, inputs: Iterable[str], outputs: Iterable[str]):
    """A copy of ``model_proto`` that computes ``outputs`` from ``inputs`` only: the nodes
    they need (in the original order), their initializers, the same functions and opsets.
    (``onnx.utils.Extractor`` needs shape-inferred value_info for every name, which graphs
    with custom-domain nodes do not always have.)"""
    import onnx
    from onnx import TensorProto, helper

    inputs, outputs = list(inputs), list(outputs)
    graph = model_proto.graph
    producers = {name: index for index, node in enumerate(graph.node) for name in node.output}
    keep, stack, seen = set(), list(outputs), set(inputs)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in producers and producers[name] not in keep:
            keep.add(producers[name])
            stack.extend(graph.node[producers[name]].input)
    nodes = [graph.node[i] for i in sorted(keep)]
    used = {name for node in nodes for name in node.input}
    known = {v.name: v for v in [*graph.input, *graph.output, *graph.value_info]}

    def value(name):
        return known.get(name) or helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
    part = onnx.ModelProto()
    part.CopyFrom(model_proto)
    del part.graph.node[:], part.graph.input[:], part.graph.output[:]
    del part.graph.initializer[:], part.graph.value_info[:]
    part.graph.node.extend(nodes)
    part.graph.input.extend(value(name) for name in inputs)
    part.graph.output.extend(value(name) for name in outputs)
    part.graph.initializer.extend(t for t in graph.initializer if t.name in used)
    return part


# ---- reading ---------------------------------------------------------------------------------

_warned_lock = threading.Lock()
_warned: set[tuple[str, int, int]] = set()


def _warn_missing_digest(path: Path | None) -> None:
    """One warning per file (per content on disk), however many readers open it."""
    if path is not None:
        try:
            stat = path.stat()
            key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        except OSError:
            key = (str(path), 0, 0)
        with _warned_lock:
            if key in _warned:
                return
            _warned.add(key)
    name = path.name if path is not None else "the model"
    warn(f"{name} has no convcrf digest ({DIGEST_KEY}), so damage cannot be detected: "
         f"loading it unchecked ({MISSING_DIGEST_POLICY})", MissingDigestWarning)


def _read_proto(path: Path):
    """The ``ModelProto`` of ``path`` without external data; ``ValueError`` with one line
    for anything that is not an ONNX model."""
    import onnx
    from google.protobuf.message import DecodeError

    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes), not an ONNX model; export it again "
                         "(convcrf-export)")
    with open(path, "rb") as handle:
        if handle.read(4) == b"PK\x03\x04":
            raise ValueError(f"{path} is a zip archive (a PyTorch checkpoint?), not an ONNX "
                             "model: run it with the torch backend, or export it first "
                             "(convcrf-export MODEL -o MODEL.onnx)")
    try:
        model_proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, EOFError, UnicodeDecodeError) as exc:
        raise ValueError(describe_error(
            exc, f"{path} is not a readable ONNX model (truncated, corrupt or another kind of "
            "file)", "export it again (convcrf-export)")) from None
    if not model_proto.graph.node and not model_proto.graph.output:
        raise ValueError(f"{path} is not an ONNX model (it holds no graph: truncated, corrupt "
                         "or another kind of file); export it again (convcrf-export)")
    return model_proto


class ExportedModel:
    """An exported ``.onnx`` file (or a ``ModelProto`` in memory), read once and checked.

    Use :meth:`open` for files. The object is read-only after construction and safe to share
    between threads. ``proto`` is the model without its external data (initializers stored
    beside the file keep their references); :meth:`load_proto_with_data` has them.

    Attributes:
        path: the file (``None`` for a model in memory).
        proto: the ``onnx.ModelProto``.
        props: every metadata_props entry, ``{key: value}``.
        digest: ``"content"`` (:data:`DIGEST_KEY` matched), ``"legacy"`` (convcrf-deploy 0.1's
            digest matched), ``"missing"`` (none: loaded unchecked, warned) or ``"unchecked"``
            (``check=False``).
    """

    def __init__(self, proto, path: str | os.PathLike | None = None, *,
                 digest: str = "unchecked"):
        self.proto = proto
        self.path = Path(path) if path is not None else None
        self.props: dict[str, str] = {p.key: p.value for p in proto.metadata_props}
        self.digest = digest

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, *, check: bool = True) -> "ExportedModel":
        """Read ``path`` (without external data) and, with ``check``, verify it.

        Checks: the file is ONNX; its digest matches (:data:`DIGEST_KEY`, or the legacy one;
        no digest: one :class:`MissingDigestWarning` per file); its metadata agrees with its
        graph (:meth:`check_consistency`).

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: the file is empty, truncated, corrupt or not ONNX, or its external data
                is missing; :class:`DamagedFileError` (a ``ValueError``) when its content does
                not match its digest; :class:`InconsistentModelError` (a ``ValueError``) when
                its metadata disagrees with its graph. Every message is one line naming the
                file and the fix.
        """
        path = Path(path)
        model = cls(_read_proto(path), path)
        if check:
            model.check_digest()
            model.check_consistency()
        return model

    @classmethod
    def from_proto(cls, proto, *, check: bool = True) -> "ExportedModel":
        """A model in memory (e.g. the exporter's, before writing), checked like a file."""
        model = cls(proto)
        if check:
            model.check_digest()
            model.check_consistency()
        return model

    @property
    def name(self) -> str:
        return self.path.name if self.path is not None else "the model"

    @property
    def base_dir(self) -> Path | None:
        """The folder external data is read from (the file's)."""
        if self.path is None:
            return None
        return self.path.parent if str(self.path.parent) else Path(".")

    def load_proto_with_data(self):
        """A copy of :attr:`proto` with every external tensor's data read in (e.g. to save
        the model as one file). ``ValueError`` when external data is missing."""
        import onnx
        from onnx.external_data_helper import load_external_data_for_model

        copy = onnx.ModelProto()
        copy.CopyFrom(self.proto)
        if self.uses_external_data:
            try:
                load_external_data_for_model(copy, str(self.base_dir))
            except (OSError, ValueError) as exc:
                raise ValueError(describe_error(
                    exc, f"{self.name}: cannot read its external data",
                    "keep the data files beside the .onnx file")) from None
        return copy

    # -- the digest ----------------------------------------------------------------------------
    def check_digest(self) -> str:
        """Compare the content with the stored digest; sets and returns :attr:`digest`.

        Raises:
            DamagedFileError: the content does not match (the message names the file, says to
                re-export, and names ``convcrf-seal`` for deliberate changes).
        """
        stored = self.props.get(DIGEST_KEY)
        if stored is not None:
            try:
                content = content_digest(self.proto, self.base_dir)
            except (TypeError, UnicodeError):
                # protobuf hands back bytes for a string field that is not valid UTF-8: a
                # damaged byte inside a name or a text attribute.
                raise DamagedFileError(
                    f"{self.name} is damaged: a name or text in its graph is not valid UTF-8 "
                    "(changed bytes); export it again") from None
            if content != stored:
                raise DamagedFileError(
                    f"{self.name} is damaged: its content (weights, graph or convcrf metadata) "
                    f"does not match the digest written at export ({DIGEST_KEY}); export it "
                    "again, or if you changed it on purpose (an optimiser such as onnxsim or "
                    f"onnxslim), check and re-seal it: {RESEAL_COMMAND}")
            self.digest = "content"
            return self.digest
        stored = self.props.get(LEGACY_DIGEST_KEY)
        if stored is not None:
            if legacy_digest(self.proto) != stored:
                raise DamagedFileError(
                    f"{self.name} is damaged, or was re-saved: its graph does not match the "
                    f"digest convcrf-deploy 0.1 wrote ({LEGACY_DIGEST_KEY}, which covers the "
                    "file's bytes, so a re-save changes it too); export it again, or if you "
                    f"re-saved or optimised it on purpose, check and re-seal it: {RESEAL_COMMAND}")
            self.digest = "legacy"
            return self.digest
        _warn_missing_digest(self.path)
        self.digest = "missing"
        return self.digest

    # -- metadata ------------------------------------------------------------------------------
    @property
    def is_ours(self) -> bool:
        """The file carries convcrf metadata (written by convcrf-export)."""
        return any(key.startswith(KEY_PREFIX) for key in self.props)

    @property
    def metadata(self) -> ModelMetadata | None:
        """Classes, palette, normalisation, input size, resize policy and input constraints;
        ``None`` when the file has no class names (another tool's graph, or a ``part="crf"``
        export of a bare ConvCRF). ``ValueError`` when present but malformed."""
        if ONNX_KEYS["classes"] not in self.props:
            return None
        try:
            return ModelMetadata.from_onnx_props(self.props)
        except ValueError as exc:
            raise ValueError(f"{self.name}: {exc}") from None

    def require_metadata(self) -> ModelMetadata:
        """:attr:`metadata`, or ``ValueError`` naming the file and the fix when it has none."""
        metadata = self.metadata
        if metadata is None:
            raise ValueError(f"{self.name} lacks metadata {ONNX_KEYS['classes']!r}: was it "
                             "exported by convcrf-export? (For a unary network of your own "
                             f"in ONNX: convcrf-export --unary {self.name} attaches the CRF)")
        return metadata

    @property
    def flavor(self) -> str | None:
        """``"single-file"``, ``"plugin"``, ``"portable"`` or ``None`` (not recorded)."""
        return self.props.get(ONNX_KEYS["flavor"])

    @property
    def precision(self) -> str | None:
        """``"fp32"``, ``"fp16"`` or ``None`` (not recorded)."""
        return self.props.get(PRECISION_KEY)

    @property
    def version(self) -> str | None:
        """The convcrf-deploy version that exported the file."""
        return self.props.get(ONNX_KEYS["version"])

    @property
    def has_crf_config(self) -> bool:
        """The graph contains a ConvCRF (the export records its configuration)."""
        return ONNX_KEYS["crf_config"] in self.props

    @property
    def crf_config(self) -> CRFConfig | None:
        """The ConvCRF's configuration, ``None`` for graphs without a CRF; ``ValueError``
        naming the file when the entry is malformed."""
        text = self.props.get(ONNX_KEYS["crf_config"])
        if text is None:
            return None
        try:
            return CRFConfig.from_json(text)
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{self.name}: malformed {ONNX_KEYS['crf_config']} ({exc}); "
                             "export it again") from None

    @property
    def runs_crf(self) -> bool:
        """The graph runs at least one mean-field iteration (so it has ConvCRF nodes, or their
        standard-op form); a malformed configuration counts as a CRF."""
        if not self.has_crf_config:
            return False
        try:
            return self.crf_config.iterations > 0
        except ValueError:
            return True

    @property
    def crf_state(self) -> dict[str, np.ndarray] | None:
        """The CRF's trained parameters ``{name: float32 array}`` (``ConvCRF.state_dict()``
        names), ``None`` when not recorded; ``ValueError`` when malformed."""
        text = self.props.get(ONNX_KEYS["crf_state"])
        if text is None:
            return None
        try:
            state = json.loads(text)
            if not isinstance(state, dict):
                raise ValueError(f"expected a JSON object, got {type(state).__name__}")
            return {str(k): np.asarray(v, np.float32) for k, v in state.items()}
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{self.name}: the CRF metadata ({ONNX_KEYS['crf_state']}) is "
                             f"damaged: {exc}; re-export the model") from None

    # -- graph -------------------------------------------------------------------------------
    @property
    def inputs(self) -> dict[str, TensorInfo]:
        """Graph inputs that are not initializers, in order."""
        initializers = {t.name for t in self.proto.graph.initializer}
        return {v.name: _tensor_info(v) for v in self.proto.graph.input
                if v.name not in initializers}

    @property
    def outputs(self) -> dict[str, TensorInfo]:
        return {v.name: _tensor_info(v) for v in self.proto.graph.output}

    @property
    def part(self) -> str | None:
        """``"full"``, ``"unary"`` or ``"crf"`` from the graph's inputs and outputs (see
        :data:`GRAPH_IO`), ``None`` when it matches none."""
        inputs, outputs = tuple(self.inputs), set(self.outputs)
        for part, (wanted_in, required, _optional) in GRAPH_IO.items():
            if inputs == wanted_in and set(required) <= outputs:
                return part
        return None

    @property
    def crf_nodes(self) -> dict[str, int]:
        """ConvCRF nodes (``trt.plugins`` domain) of the main graph per op type."""
        counts: dict[str, int] = {}
        for node in self.proto.graph.node:
            if node.domain == PLUGIN_DOMAIN:
                counts[node.op_type] = counts.get(node.op_type, 0) + 1
        return counts

    @property
    def crf_functions(self) -> set[str]:
        """Op types of the model-local functions that define ConvCRF nodes (single-file)."""
        return {f.name for f in self.proto.functions if f.domain == PLUGIN_DOMAIN}

    @property
    def needs_custom_ops(self) -> bool:
        """See :func:`needs_custom_ops` (the ``plugin`` flavour)."""
        return needs_custom_ops(self.proto)

    @property
    def uses_external_data(self) -> bool:
        from onnx.external_data_helper import uses_external_data

        return any(uses_external_data(t) for t in self.proto.graph.initializer)

    @property
    def unary_logits_name(self) -> str | None:
        """See :func:`unary_logits_name`."""
        return unary_logits_name(self.proto)

    def class_channels(self) -> tuple[str, int] | None:
        """``(output name, channel count)`` of the class dimension of the graph's
        probabilities (or logits, for a unary part), static or found by shape inference;
        ``None`` when neither can tell."""
        outputs = self.outputs
        name = next((n for n in ("probabilities", "logits") if n in outputs), None)
        if name is None:
            return None
        channels = outputs[name].static_dim(1)
        if channels is None:
            channels = _inferred_channels(self.proto, name)
        return None if channels is None else (name, channels)

    # -- self-consistency ------------------------------------------------------------------------
    def check_consistency(self) -> None:
        """Cross-check the metadata against the graph (files carrying convcrf metadata only):
        inputs/outputs and their ranks for the part the graph is, the class count against the
        class channels (static or inferable) and the CRF configuration, the flavour against
        the ConvCRF nodes and function bodies present, the precision's value.

        Raises:
            InconsistentModelError: one line naming the file, both values and the fix.
        """
        if not self.is_ours:
            return
        fix = "export it again with convcrf-export"
        inputs, outputs = self.inputs, self.outputs
        part = self.part
        if part is None:
            raise InconsistentModelError(
                f"{self.name} carries convcrf metadata but its graph has inputs "
                f"{list(inputs)} and outputs {list(outputs)}, none of the exported interfaces "
                f"({_interfaces()}); {fix}")
        for name in (*inputs, *outputs):
            info = inputs.get(name) or outputs[name]
            wanted = _RANKS.get(name)
            if wanted is not None and info.rank is not None and info.rank != wanted:
                raise InconsistentModelError(
                    f"{self.name}: graph tensor {name!r} has rank {info.rank} {list(info.shape)}, "
                    f"but exported models give it rank {wanted}; {fix}")
        if inputs["image"].static_dim(1) not in (None, 3):
            raise InconsistentModelError(
                f"{self.name}: graph input 'image' has {inputs['image'].static_dim(1)} channels, "
                f"but exported models take 3 (RGB); {fix}")
        metadata = self.metadata
        config = self.crf_config
        channels = self.class_channels()
        if metadata is not None and channels is not None and channels[1] != metadata.num_classes:
            raise InconsistentModelError(
                f"{self.name} disagrees with itself: its metadata lists "
                f"{metadata.num_classes} classes ({ONNX_KEYS['classes']}) but its graph's "
                f"{channels[0]!r} has {channels[1]} channels; {fix} (or give "
                f"{ONNX_KEYS['classes']} {channels[1]} names)")
        if config is not None:
            if metadata is not None and config.num_classes != metadata.num_classes:
                raise InconsistentModelError(
                    f"{self.name} disagrees with itself: its metadata lists "
                    f"{metadata.num_classes} classes ({ONNX_KEYS['classes']}) but its CRF "
                    f"configuration has num_classes={config.num_classes} "
                    f"({ONNX_KEYS['crf_config']}); {fix}")
            if channels is not None and config.num_classes != channels[1]:
                raise InconsistentModelError(
                    f"{self.name} disagrees with itself: its CRF configuration has "
                    f"num_classes={config.num_classes} ({ONNX_KEYS['crf_config']}) but its "
                    f"graph's {channels[0]!r} has {channels[1]} channels; {fix}")
        self._check_flavor(part, fix)
        if self.precision is not None and self.precision not in PRECISIONS:
            raise InconsistentModelError(
                f"{self.name}: {PRECISION_KEY} is {self.precision!r}, not one of "
                f"{list(PRECISIONS)}; {fix}")

    def _check_flavor(self, part: str, fix: str) -> None:
        flavor, nodes, functions = self.flavor, self.crf_nodes, self.crf_functions
        found = ", ".join(f"{n} {op}" for op, n in sorted(nodes.items())) or "no ConvCRF nodes"
        if flavor is not None and flavor not in FLAVORS:
            raise InconsistentModelError(f"{self.name}: {ONNX_KEYS['flavor']} is {flavor!r}, "
                                         f"not one of {list(FLAVORS)}; {fix}")
        if nodes and not self.has_crf_config:
            raise InconsistentModelError(
                f"{self.name} disagrees with itself: its graph has {found} but its metadata "
                f"has no CRF configuration ({ONNX_KEYS['crf_config']}); {fix}")
        if flavor is None or not self.runs_crf or part == "unary":
            return
        if flavor == "portable":
            if nodes:
                raise InconsistentModelError(
                    f"{self.name} disagrees with itself: its metadata says flavour 'portable' "
                    f"(standard ONNX only) but its graph has {found}; {fix}")
            return
        if not nodes:
            raise InconsistentModelError(
                f"{self.name} disagrees with itself: its metadata says flavour {flavor!r} "
                "(ConvCRF nodes) but its graph has none (its CRF is standard ops, as in the "
                f"'portable' flavour); {fix} (an optimiser that inlined them: "
                "export --flavor portable and optimise that)")
        missing = sorted(set(nodes) - functions)
        if flavor == "single-file" and missing:
            raise InconsistentModelError(
                f"{self.name} disagrees with itself: its metadata says flavour 'single-file' "
                f"but the function bodies of {missing} are missing (that is the 'plugin' "
                f"flavour, which only TensorRT runs); {fix}")
        if flavor == "plugin" and functions & set(nodes):
            raise InconsistentModelError(
                f"{self.name} disagrees with itself: its metadata says flavour 'plugin' but "
                f"the graph carries function bodies for {sorted(functions & set(nodes))} (the "
                f"'single-file' flavour); {fix}")


def _interfaces() -> str:
    return "; ".join(f"{part}: {list(i)} -> {list(o)}" for part, (i, o, _) in GRAPH_IO.items())


def _inferred_channels(model_proto, output: str) -> int | None:
    """The channel count of ``output`` by ONNX shape inference on a light copy (large
    initializers become typed graph inputs, so that no weights are copied); ``None`` when
    inference cannot tell (e.g. it stops at a ConvCRF node)."""
    import onnx
    from onnx import helper

    light = onnx.ModelProto()
    for field in ("ir_version", "opset_import", "functions"):
        if field == "ir_version":
            light.ir_version = model_proto.ir_version
        else:
            getattr(light, field).extend(getattr(model_proto, field))
    graph = light.graph
    source = model_proto.graph
    graph.node.extend(source.node)
    graph.input.extend(source.input)
    graph.output.extend(source.output)
    declared = {v.name for v in source.input}
    for tensor in source.initializer:
        if len(tensor.raw_data) > 4096 or tensor.data_location == 1:
            if tensor.name not in declared:
                graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type,
                                                                 list(tensor.dims)))
        else:
            graph.initializer.append(tensor)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False)
    except Exception:   # noqa: BLE001 - inference is a best effort here
        return None
    for value in [*inferred.graph.output, *inferred.graph.value_info]:
        if value.name == output:
            info = _tensor_info(value)
            if info.rank == 4:
                return info.static_dim(1)
    return None


# ---- writing ---------------------------------------------------------------------------------

def set_metadata(model_proto, *, metadata: ModelMetadata | None, flavor: str,
                 precision: str, version: str, crf_config: CRFConfig | None = None,
                 crf_state: Mapping[str, Any] | None = None) -> None:
    """Write our metadata entries into ``model_proto`` (others' entries are kept).

    Args:
        metadata: classes, palette, normalisation, ... (``None`` for a bare CRF).
        flavor: one of :data:`FLAVORS`; ``precision``: one of :data:`PRECISIONS`.
        crf_config, crf_state: only for graphs that contain the CRF (the runtime reads the
            configuration as "this graph runs a CRF"); the state as ``{name: nested lists or
            arrays}`` of float32 values (exact in JSON), so runtimes can run the CRF natively
            from this one file.
    """
    from onnx import helper

    if flavor not in FLAVORS or precision not in PRECISIONS:
        raise ValueError(f"flavor must be one of {FLAVORS} and precision one of {PRECISIONS}, "
                         f"got {flavor!r}, {precision!r}")
    props = dict(metadata.to_onnx_props()) if metadata is not None else {}
    if crf_config is not None:
        props[ONNX_KEYS["crf_config"]] = crf_config.to_json()
        if crf_state is not None:
            props[ONNX_KEYS["crf_state"]] = json.dumps(
                {name: np.asarray(value, np.float32).tolist() for name, value in crf_state.items()})
    props[ONNX_KEYS["version"]] = version
    props[ONNX_KEYS["flavor"]] = flavor
    props[PRECISION_KEY] = precision
    helper.set_model_props(model_proto, {**{p.key: p.value for p in model_proto.metadata_props},
                                         **props})
    model_proto.producer_name = "convcrf-deploy"
    model_proto.producer_version = version


def seal(model_proto, base_dir: str | os.PathLike | None = None) -> str:
    """Store :func:`content_digest` in ``model_proto`` (replacing any digest, the legacy one
    included); returns it. Call it last, after every other change."""
    kept = [p for p in model_proto.metadata_props if p.key not in (DIGEST_KEY, LEGACY_DIGEST_KEY)]
    del model_proto.metadata_props[:]
    model_proto.metadata_props.extend(kept)
    digest = content_digest(model_proto, base_dir)
    entry = model_proto.metadata_props.add()
    entry.key, entry.value = DIGEST_KEY, digest
    return digest


def write(model_proto, path: str | os.PathLike, *, seal_it: bool = True,
          inputs: Mapping[str, str | os.PathLike | None] | None = None) -> ExportedModel:
    """Write ``model_proto`` to ``path`` atomically, as one file (no external data), and read
    the written file back with :meth:`ExportedModel.open` (digest and self-consistency)
    before it replaces ``path``: a file that its own readers would refuse is never written.

    Args:
        seal_it: :func:`seal` it first (writers of new content); ``False`` keeps its digest
            (copies of a checked file, which the read-back then re-checks).
        inputs: ``{option name: path}`` of the command's inputs: ``path`` may not be one.

    Raises:
        OutputIsInputError: ``path`` is one of ``inputs``.
        DamagedFileError, InconsistentModelError: the written file fails its own checks
            (``path`` is left as it was).
    """
    import onnx

    if inputs:
        refuse_output_overwriting_input({"output": path}, inputs)
    if seal_it:
        seal(model_proto)
    with atomic_write(path) as temporary:
        onnx.save(model_proto, str(temporary))
        check_written(temporary, path)
    return ExportedModel(model_proto, path, digest="content" if seal_it else "unchecked")


def check_written(written: str | os.PathLike, final: str | os.PathLike | None = None) -> None:
    """Read a file a writer has just written with :meth:`ExportedModel.open`, as its users
    will; a failure names ``final`` (the path the user asked for) instead of a temporary.

    Raises:
        ValueError: (its subclasses as :meth:`ExportedModel.open`) naming ``final``.
    """
    written = Path(written)
    final = Path(final) if final is not None else written
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MissingDigestWarning)   # the reader's to say
            ExportedModel.open(written)
    except ValueError as exc:
        message = str(exc).replace(str(written), str(final)).replace(written.name, final.name)
        raise type(exc)(f"refusing to write {final}: the written file fails its own check: "
                        f"{message}") from None


def fixed_size_remedy(props: dict[str, str]) -> str:
    """What lifts the fixed input size of an exported file with these ``metadata_props``, for
    messages: export again without ``--static``, or, for a CRF attached to the user's own ONNX
    unary (:data:`UNARY_SOURCE_KEY`), export that unary with dynamic height and width (the
    size was fixed there, not by us) and attach the CRF again."""
    source = props.get(UNARY_SOURCE_KEY)
    if source is None:
        return "export the model again with dynamic sizes (convcrf-export without --static)"
    try:
        name = json.loads(source).get("file") or "your ONNX unary"
    except (ValueError, AttributeError):
        name = "your ONNX unary"
    return (f"export the unary {name} with a dynamic height and width (torch.onnx.export: "
            "dynamic_shapes or dynamic_axes; other converters: a symbolic input shape) and "
            "attach the CRF again (convcrf-export --unary)")
