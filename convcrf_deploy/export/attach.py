"""Attach the ConvCRF to a unary network the user already has as ONNX (``convcrf-export
--unary``): the paper's decoupled setting (Sec. 5.2, a fixed unary) with the unary as a file.

:func:`attach_crf` writes the same file a PyTorch export writes (``export_onnx``): graph input
``image`` float32 ``[N, 3, H, W]`` RGB 0..255, outputs ``probabilities``, ``labels`` and
``unary_labels`` (``part="full"``; ``part="unary"``: ``logits``), in the three flavours, fp32,
fp16 or fp16 CRF only, with the same metadata (classes, palette, normalisation, CRF
configuration and parameters: the runtime runs the CRF natively from it) and the same
verification. The graph is, in order:

1. the input convention of the unary (:mod:`convcrf_deploy.model.onnx_unary`):
   ``(image / 255 - mean) / std`` (as ``SegmentationModel.normalize``), then for an NHWC
   input a ``Transpose``, for a float16 input a ``Cast``, for a uint8 input ``Round``,
   ``Clip(0, 255)`` and ``Cast`` (its normalisation is the identity);
2. the unary's own nodes, unchanged except for a ``unary/`` prefix on every name (and
   converted to the file's opset by the ONNX version converters, or to fp16 by ONNX Runtime's
   ``float16`` converter for ``fp16=True``);
3. its logits to float32 NCHW: ``Transpose`` (NHWC logits), ``Cast`` (float16), ``Log`` of a
   softmax output (clamped at 1e-8), and ``Resize`` to the image size when they come at
   another resolution (``linear``, ``half_pixel``: PyTorch's ``F.interpolate(bilinear,
   align_corners=False)``, exactly what the PyTorch export writes for a unary at 1/4);
4. ``unary_labels = ArgMax(logits)`` and the CRF: the graph of ``export_onnx(crf,
   part="crf")`` (the same nodes a PyTorch export has, in the chosen flavour) reading
   ``logits`` and ``image``.

The verification compares the file with the unary run in ONNX Runtime as it is
(:class:`~convcrf_deploy.model.onnx_unary.OnnxUnary`) followed by our PyTorch ConvCRF, the
unary and the CRF also on their own (:func:`convcrf_deploy.export.verify.verify_export`).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import describe_error
from ..exported_model import UNARY_SOURCE_KEY, seal
from . import DEFAULT_FLAVOR, FLAVORS, MAX_OPSET, MIN_OPSET, rewrites
from .exporter import (FP16_CHOICES, ExportError, ExportReport, _check_constraints,
                       _check_size, _checked_opset, _convert_opset, _custom_nodes,
                       _default_opset, _io_shapes, _quiet, _set_metadata,
                       _with_input_conventions, export_onnx, ir_version_for_opset,
                       write_verified)

#: name prefixes that keep the unary's, our glue's and the CRF's names apart.
UNARY_PREFIX, GLUE_PREFIX = "unary/", "attach/"
#: graph tensor holding the float32 NCHW unary logits at the image size (the CRF's input).
LOGITS = "logits"


def attach_crf(unary, path, *, settings=None, flavor: str = DEFAULT_FLAVOR,
               fp16: bool | str = False, opset: int | None = None, height: int | None = None,
               width: int | None = None, static: bool = False, part: str = "full",
               verify: bool = True, logits_output: str | None = None,
               verify_memory: int | None = None, int8: bool = False, calibration=None,
               reduce_range: bool = False, pad_multiple: int | None = None,
               min_size: int | None = None) -> ExportReport:
    """Write an ONNX unary with the ConvCRF after it, as a PyTorch export would be written.

    Args:
        unary: the ONNX unary file (see :mod:`convcrf_deploy.model.onnx_unary` for what it
            may be).
        path: the ``.onnx`` file to write (atomically; not ``unary``).
        settings: a :class:`~convcrf_deploy.model.UnarySettings`: the CRF (``crf``: a CRF-only
            checkpoint, ``"none"``, or ``None`` for the ``CRFConfig`` defaults;
            ``crf_config`` fields over it) and the metadata (class names, palette, mean, std:
            the unary's input normalisation, input size, resize). Class counts must agree with
            the unary's output.
        flavor: ``"single-file"``, ``"plugin"`` or ``"portable"`` (as :func:`export_onnx`).
        fp16: ``False``; ``"crf"``: the ConvCRF op I/O in fp16, the unary as it is; ``True``:
            also the unary converted to fp16 (ONNX Runtime's ``float16`` converter, I/O kept
            float32).
        opset: standard opset of the file, 18..28; default: 20, or the unary's when newer.
            The unary is converted when its opset differs.
        height, width: the size the verification runs at (a fixed-size unary: its own); with
            ``static`` the fixed size of a dynamic unary's graph (default: the metadata's
            ``input_size``).
        part: ``"full"`` or ``"unary"`` (``image -> logits``: the convention and resize only).
        verify, verify_memory: as :func:`export_onnx`; the reference is the unary file in ONNX
            Runtime + the PyTorch ConvCRF.
        logits_output: the unary's output holding the logits when it has several
            (``convcrf-export --unary FILE --output-key NAME``).
        pad_multiple, min_size: the unary's input constraints (as :func:`export_onnx`:
            probed by running the file in ONNX Runtime unless given; recorded in the file, and
            the runtime pads frames to them). Not for a fixed-size unary.
        int8, calibration, reduce_range: quantise the unary to INT8 on calibration frames, the
            CRF left float (as :func:`export_onnx`; :mod:`convcrf_deploy.export.quantize`).

    Returns:
        :class:`~convcrf_deploy.export.exporter.ExportReport` (``unary_source`` describes the
        unary). A file that fails verification is written beside ``path`` as
        ``<name>.failed-verification.onnx`` and ``path`` is left as it was.

    Raises:
        ExportError: invalid arguments, the unary has a fixed batch other than 1, it cannot be
            converted to the opset or to fp16; no file is written.
        convcrf_deploy.model.onnx_unary.OnnxUnaryError, CheckpointError (``ValueError``):
            the unary is not a usable ONNX unary (one line naming what was found), or the
            settings do not fit it (e.g. a CRF checkpoint with another class count).
        convcrf_deploy.files.OutputIsInputError: ``path`` is ``unary`` or the CRF checkpoint.
    """
    from ..files import refuse_output_overwriting_input
    from ..model.onnx_unary import load_onnx_unary, read_onnx_unary
    from ..model.unary_files import UnarySettings

    if flavor not in FLAVORS:
        raise ExportError(f"flavor must be one of {list(FLAVORS)}, got {flavor!r}")
    if not any(fp16 is choice or (isinstance(fp16, str) and fp16 == choice)
               for choice in FP16_CHOICES):
        raise ExportError(f"fp16 must be one of {list(FP16_CHOICES)}, got {fp16!r}")
    if part not in ("full", "unary"):
        raise ExportError(f"part must be 'full' or 'unary' for an ONNX unary, got {part!r} "
                          "(the CRF alone: export the CRF checkpoint, convcrf-export CRF.pt "
                          "--part crf)")
    if (height is None) != (width is None):
        raise ExportError("give both height and width, or neither")
    settings = settings or UnarySettings()
    refuse_output_overwriting_input({"output": path}, {
        "unary": unary, **({"crf": settings.crf} if isinstance(settings.crf, (str, os.PathLike))
                           and str(settings.crf).lower() != "none" else {})})

    # Constraints below, by the exporter's rules (given, recorded or probed, and reported).
    model = load_onnx_unary(unary, settings, logits_output=logits_output,
                            probe_constraints=False)
    info = model.onnx_unary
    crf = model.crf if part == "full" and model.crf_enabled else None
    if part == "unary" and fp16 == "crf":
        raise ExportError("fp16='crf' casts the CRF, and part='unary' has none")
    opset = _target_opset(opset, info.opset)

    if info.batch not in (None, 1):
        # The runtime, TensorRT profiles and Triton feed one frame per call (Triton batches
        # by the dynamic batch axis): a file fixed at batch 2 would be refused at load.
        raise ExportError(f"{info.path.name} takes a fixed batch of {info.batch} images; the "
                          "runtime runs one frame at a time: export the unary with batch 1 or "
                          "a dynamic batch axis (torch.onnx.export(..., dynamic_axes={'input': "
                          "{0: 'batch'}}))")
    fixed = info.fixed_size
    constraints_source = ""
    if fixed is not None:
        if (pad_multiple or 1) > 1 or (min_size or 1) > 1:
            raise ExportError(f"{info.path.name} takes {fixed[0]}x{fixed[1]} (HxW) images only "
                              "(the runtime stretches frames to it): --pad-multiple/--min-size "
                              "do not apply")
        if height is not None and (height, width) != fixed:
            raise ExportError(f"{info.path.name} takes {fixed[0]}x{fixed[1]} (HxW) images only; "
                              f"the graph cannot run at {height}x{width}: leave out the size")
    else:
        # The sizes the network needs, as for a PyTorch unary (probed in ONNX Runtime).
        model, constraints_source = _with_input_conventions(
            model, part, pad_multiple, min_size, None,
            fixed_size=(height, width) if static and height is not None else None)
        if static:
            if height is None:
                height, width = model.metadata.padded_size(*model.metadata.input_size)
            fixed = (height, width)
        _check_constraints(model.metadata, height, width, static)
    _check_size(*(fixed or (height, width)), static=fixed is not None)
    from .exporter import _calibration_frames    # read before the work: a bad folder fails fast
    calibration_frames = _calibration_frames(model, part, int8, calibration, reduce_range, fixed)

    unary_proto = read_onnx_unary(unary)
    unary_proto = _convert_unary(unary_proto, opset, info)
    if fp16 is True:
        unary_proto = _unary_to_fp16(unary_proto, info)
    graph_proto = _assemble(unary_proto, info, model.metadata, crf, flavor, fp16, opset,
                            part, fixed)
    _set_metadata(graph_proto, model, crf, flavor, fp16)
    _record_unary(graph_proto, info)
    float_model, int8_report = graph_proto, None
    if int8:
        from .quantize import QuantizationError, quantize_unary
        try:
            quantized = quantize_unary(float_model, calibration_frames,
                                       logits=LOGITS if part == "unary" else None,
                                       reduce_range=reduce_range)
        except QuantizationError as exc:
            raise ExportError(str(exc)) from exc
        graph_proto, int8_report = quantized.model, quantized.report

    report = ExportReport(path=Path(path), flavor=flavor, part=part, fp16=fp16,
                          opset=_default_opset(graph_proto),
                          inputs=_io_shapes(graph_proto.graph.input),
                          outputs=_io_shapes(graph_proto.graph.output),
                          node_count=len(graph_proto.graph.node),
                          custom_nodes=_count_custom(graph_proto),
                          local_functions=len(graph_proto.functions),
                          unary_source=f"{info.path.name}: {info.describe()}",
                          int8=int8_report, pad_multiple=model.metadata.pad_multiple,
                          min_size=model.metadata.min_size,
                          constraints_source=constraints_source)

    def verification():
        from .verify import verify_export
        size = _verification_size(model, fixed, height, width, fp16)
        report.verification = verify_export(float_model, model, flavor=flavor, part=part,
                                            fp16=fp16, size=size, memory_budget=verify_memory)
        if int8:
            from .quantize import verify_int8
            report.int8_verification = verify_int8(float_model, graph_proto,
                                                   calibration_frames, flavor=flavor)

    seal(graph_proto)
    write_verified(graph_proto, report, verification if verify else None)
    return report


# ---- the unary --------------------------------------------------------------------------------

def _target_opset(opset: int | None, unary_opset: int) -> int:
    if opset is not None:
        return _checked_opset(opset)
    if unary_opset > MAX_OPSET:
        raise ExportError(f"the unary uses opset {unary_opset}, newer than the export supports "
                          f"({MIN_OPSET}..{MAX_OPSET}): export it at opset {MAX_OPSET} or lower")
    return max(_checked_opset(None), unary_opset)


def _convert_unary(unary: onnx.ModelProto, opset: int, info) -> onnx.ModelProto:
    """The unary at the file's standard opset (ONNX's version converters, as the exporter
    converts its own graphs)."""
    if info.opset == opset:
        return unary
    import logging
    chatter = logging.getLogger("onnxscript")     # "falling back to the onnx C API" notes
    level = chatter.level
    chatter.setLevel(logging.ERROR)
    try:
        return _convert_opset(unary, opset)
    except ExportError:
        pass
    finally:
        chatter.setLevel(level)
    try:   # onnx's C++ converter directly (onnxscript's falls back to it only for some steps)
        converted = onnx.version_converter.convert_version(unary, opset)
        if _default_opset(converted) == opset:
            return converted
    except Exception:  # noqa: BLE001 - the converter raises RuntimeError or worse
        pass
    raise ExportError(f"{info.path.name}: its opset {info.opset} could not be converted to "
                      f"opset {opset}; give --opset {max(MIN_OPSET, info.opset)} or re-export "
                      f"the unary at opset {opset}")


def _unary_to_fp16(unary: onnx.ModelProto, info) -> onnx.ModelProto:
    """The unary with float32 weights and activations in float16 (its inputs and outputs
    stay as they were), by ONNX Runtime's converter (``onnxruntime.transformers.float16``,
    also in onnxconverter-common)."""
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:
        raise ExportError(f"fp16=True converts the ONNX unary with onnxruntime.transformers."
                          f"float16, which this onnxruntime lacks ({exc}); use fp16='crf' "
                          "(--fp16 crf)") from None
    try:
        with _quiet():
            converted = convert_float_to_float16(unary, keep_io_types=True)
    except Exception as exc:  # noqa: BLE001 - the converter's failures share no base class
        raise ExportError(describe_error(
            exc, f"{info.path.name} could not be converted to fp16",
            "keep the unary in fp32 with --fp16 crf (fp16='crf')")) from None
    # The converter appends the Casts of the graph's inputs after the nodes that read them.
    _sort_topologically(converted.graph)
    return converted


def _node_inputs(node: onnx.NodeProto) -> set[str]:
    """The tensors a node reads, its subgraphs' outer-scope reads included."""
    names = set(node.input)
    for attribute in node.attribute:
        for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
            produced = {o for n in sub.node for o in n.output}
            produced |= {v.name for v in sub.input} | {t.name for t in sub.initializer}
            names |= {n for sub_node in sub.node for n in _node_inputs(sub_node)} - produced
    return names


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so that every node comes after the producers of its inputs
    (stable: nodes already in order keep it). ExportError on a cycle."""
    available = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        remaining = []
        for node in pending:
            if _node_inputs(node) <= available:
                ordered.append(node)
                available.update(node.output)
            else:
                remaining.append(node)
        if len(remaining) == len(pending):
            raise ExportError(f"the unary's graph has a cycle or reads undefined tensors "
                              f"(first node left: {remaining[0].op_type} {remaining[0].name!r})")
        pending = remaining
    del graph.node[:]
    graph.node.extend(ordered)


# ---- the graph ---------------------------------------------------------------------------------

def _const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def _input_nodes(info, metadata, unary_input: onnx.ValueInfoProto):
    """``image`` -> the unary's input: the normalisation and the input convention."""
    g = GLUE_PREFIX
    inits = [_const(f"{g}255", np.array(255, np.float32)),
             _const(f"{g}mean", np.array(metadata.mean, np.float32).reshape(1, 3, 1, 1)),
             _const(f"{g}std", np.array(metadata.std, np.float32).reshape(1, 3, 1, 1))]
    nodes = [helper.make_node("Div", ["image", f"{g}255"], [f"{g}scaled"]),
             helper.make_node("Sub", [f"{g}scaled", f"{g}mean"], [f"{g}centred"]),
             helper.make_node("Div", [f"{g}centred", f"{g}std"], [f"{g}normalised"])]
    current = f"{g}normalised"
    if info.input_layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [current], [f"{g}nhwc"], perm=[0, 2, 3, 1]))
        current = f"{g}nhwc"
    elem = unary_input.type.tensor_type.elem_type
    if elem == TensorProto.UINT8:
        inits += [_const(f"{g}zero", np.array(0, np.float32)),
                  _const(f"{g}max", np.array(255, np.float32))]
        nodes += [helper.make_node("Round", [current], [f"{g}rounded"]),
                  helper.make_node("Clip", [f"{g}rounded", f"{g}zero", f"{g}max"],
                                   [f"{g}clipped"])]
        current = f"{g}clipped"
    if elem != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [current], [unary_input.name], to=elem))
    else:
        nodes.append(helper.make_node("Identity", [current], [unary_input.name]))
    return nodes, inits


def _logits_nodes(info, unary_output: onnx.ValueInfoProto):
    """The unary's output -> float32 NCHW logits at the image size (:data:`LOGITS`)."""
    g = GLUE_PREFIX
    nodes, inits = [], []
    current = unary_output.name
    if info.output_layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [current], [f"{g}logits_nchw"],
                                      perm=[0, 3, 1, 2]))
        current = f"{g}logits_nchw"
    if unary_output.type.tensor_type.elem_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [current], [f"{g}logits_fp32"], to=TensorProto.FLOAT))
        current = f"{g}logits_fp32"
    if info.probabilities:
        from ..model.onnx_unary import PROBABILITY_FLOOR
        inits.append(_const(f"{g}floor", np.array(PROBABILITY_FLOOR, np.float32)))
        nodes += [helper.make_node("Max", [current, f"{g}floor"], [f"{g}clamped"]),
                  helper.make_node("Log", [f"{g}clamped"], [f"{g}log_probabilities"])]
        current = f"{g}log_probabilities"
    if info.resized:
        # PyTorch's F.interpolate(bilinear, align_corners=False) as its exporter writes it.
        nodes += [helper.make_node("Shape", [current], [f"{g}nc"], start=0, end=2),
                  helper.make_node("Shape", ["image"], [f"{g}hw"], start=2, end=4),
                  helper.make_node("Concat", [f"{g}nc", f"{g}hw"], [f"{g}sizes"], axis=0),
                  helper.make_node("Resize", [current, "", "", f"{g}sizes"], [LOGITS],
                                   mode="linear", coordinate_transformation_mode="half_pixel",
                                   nearest_mode="floor", cubic_coeff_a=-0.75,
                                   exclude_outside=0, extrapolation_value=0.0, antialias=0,
                                   keep_aspect_ratio_policy="stretch")]
    else:
        nodes.append(helper.make_node("Identity", [current], [LOGITS]))
    return nodes, inits


def _softmax_tail(flavor: str, opset: int):
    """``logits`` -> ``probabilities``, ``labels`` without a CRF (the unary's softmax),
    written as the exporter writes it (decomposed outside the plugin flavour)."""
    nodes = [helper.make_node("Softmax", [LOGITS], ["probabilities"], axis=1),
             helper.make_node("ArgMax", ["probabilities"], ["labels"], axis=1, keepdims=0)]
    if flavor != "plugin":
        tail = helper.make_model(helper.make_graph(nodes, "tail", [], []),
                                 opset_imports=[helper.make_opsetid("", opset)])
        rewrites.decompose_channel_softmax(tail)
        nodes = list(tail.graph.node)
    return nodes


def _crf_graph(crf, flavor: str, fp16, opset: int) -> onnx.ModelProto:
    """The CRF's own graph (``logits``, ``image`` -> ``probabilities``, ``labels``) in the
    flavour: exported by :func:`export_onnx` (``part="crf"``), its metadata dropped."""
    with tempfile.TemporaryDirectory(prefix="convcrf-attach-") as folder:
        part = Path(folder) / "crf.onnx"
        export_onnx(crf, part, flavor=flavor, fp16="crf" if fp16 else False, opset=opset,
                    part="crf", verify=False)
        graph = onnx.load(str(part))
    del graph.metadata_props[:]
    return graph


def _image_value(info, fixed) -> onnx.ValueInfoProto:
    batch = info.batch or "batch"
    height, width = fixed or ("height", "width")
    return helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, height, width])


def _assemble(unary: onnx.ModelProto, info, metadata, crf, flavor: str, fp16, opset: int,
              part: str, fixed) -> onnx.ModelProto:
    """The whole graph (module docstring), at ``opset``."""
    import onnx.compose

    prefixed = onnx.compose.add_prefix(unary, UNARY_PREFIX)
    graph = prefixed.graph
    initializer_names = {t.name for t in graph.initializer}
    unary_input = next(v for v in graph.input if v.name not in initializer_names)
    unary_output = next(v for v in graph.output if v.name == UNARY_PREFIX + info.output_name)
    head, head_inits = _input_nodes(info, metadata, unary_input)
    glue, glue_inits = _logits_nodes(info, unary_output)

    nodes = [*head, *graph.node, *glue]
    initializers = [*head_inits, *graph.initializer, *glue_inits]
    value_info = list(graph.value_info)
    functions = list(prefixed.functions)
    opsets = {o.domain or "": o.version for o in prefixed.opset_import}
    opsets[""] = opset
    batch = info.batch or "batch"
    height, width = fixed or ("height", "width")
    classes = info.num_classes
    if part == "unary":
        outputs = [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT,
                                                 [batch, classes, height, width])]
    else:
        nodes.append(helper.make_node("ArgMax", [LOGITS], ["unary_labels"], axis=1, keepdims=0))
        if crf is None:
            nodes += _softmax_tail(flavor, opset)
        else:
            crf_model = _crf_graph(crf, flavor, fp16, opset)
            crf_graph = onnx.compose.add_prefix_graph(crf_model.graph, "crf/", rename_inputs=False,
                                                      rename_outputs=False)
            nodes += crf_graph.node
            initializers += crf_graph.initializer
            value_info += crf_graph.value_info
            functions += crf_model.functions
            for entry in crf_model.opset_import:
                if entry.domain not in ("", "ai.onnx"):
                    opsets[entry.domain] = max(opsets.get(entry.domain, 0), entry.version)
        outputs = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT,
                                                 [batch, classes, height, width]),
                   helper.make_tensor_value_info("labels", TensorProto.INT64,
                                                 [batch, height, width]),
                   helper.make_tensor_value_info("unary_labels", TensorProto.INT64,
                                                 [batch, height, width])]
    merged = helper.make_graph(nodes, "convcrf_attached", [_image_value(info, fixed)], outputs,
                               initializer=initializers,
                               sparse_initializer=list(graph.sparse_initializer),
                               value_info=[v for v in value_info
                                           if v.name not in (unary_input.name, LOGITS)])
    model = helper.make_model(merged, opset_imports=[helper.make_opsetid(domain, version)
                                                     for domain, version in sorted(opsets.items())])
    model.functions.extend(functions)
    model.ir_version = max(ir_version_for_opset(opset), unary.ir_version)
    _check_unique_outputs(model)
    return model


def _check_unique_outputs(model: onnx.ModelProto) -> None:
    """Every tensor is produced once (the prefixes keep the three parts' names apart)."""
    seen: set[str] = {v.name for v in model.graph.input} | {t.name for t in
                                                           model.graph.initializer}
    for node in model.graph.node:
        for name in node.output:
            if name and name in seen:
                raise ExportError(f"internal error: tensor {name!r} is produced twice in the "
                                  "attached graph; please report it")
            seen.add(name)


def _count_custom(model: onnx.ModelProto) -> dict[str, int]:
    custom: dict[str, int] = {}
    for node in _custom_nodes(model.graph):
        custom[node.op_type] = custom.get(node.op_type, 0) + 1
    return custom


def _record_unary(model: onnx.ModelProto, info) -> None:
    value = json.dumps({"file": info.path.name, "sha256": info.sha256,
                        "producer": info.producer, "opset": info.opset,
                        "input": {"name": info.input_name, "layout": info.input_layout,
                                  "dtype": np.dtype(info.input_dtype).name},
                        "logits": {"name": info.output_name, "layout": info.output_layout,
                                   "probabilities": info.probabilities,
                                   "resized": info.resized}})
    helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                   UNARY_SOURCE_KEY: value})


def _verification_size(model, fixed, height, width, fp16):
    """The size the parity check runs at: the graph's fixed size, the one asked for, or the
    default (61 x 83, fp16: 480 x 640) padded to the unary's input constraints."""
    if fixed is not None:
        return fixed
    if height is not None:
        return height, width
    from .verify import FP16_PARITY_SIZE, PARITY_SIZE
    return model.metadata.padded_size(*(FP16_PARITY_SIZE if fp16 else PARITY_SIZE))


__all__ = ["attach_crf", "UNARY_SOURCE_KEY"]
