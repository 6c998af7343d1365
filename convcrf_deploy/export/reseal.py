"""Re-sealing an exported file after the user changed it on purpose (``convcrf-seal``).

Passing an export through a graph optimiser (onnxsim, onnxslim, onnxoptimizer) or another tool
that rewrites it changes its content, so its digest no longer matches and every reader refuses
it as damaged. :func:`reseal` checks that the changed file is still the model that was exported,
then writes it with a fresh digest:

1. the original is read and checked as every reader does (digest, metadata against graph);
2. the changed file has the same interface (input and output names), and still carries our
   CRF: the same ConvCRF nodes (op types, counts and attributes) for the ``single-file`` and
   ``plugin`` flavours; for every flavour the CRF part of the graph (unary logits and image ->
   probabilities) is compared with the original's on smooth random logits, so an optimiser
   that changed the CRF is caught even where the unary's confident logits would hide it;
3. the whole graph's outputs agree with the original's on test images (frames of the
   synthetic scene at the model's input size) in ONNX Runtime, within the export's own parity
   criteria (:data:`convcrf_deploy.export.verify.TOLERANCE`: fp32 max error 1e-3, fp16 99.9th
   percentile 2e-2, >= 99.9 % of labels agreeing); ``plugin`` graphs run with the ConvCRF
   function bodies attached;
4. the output is the changed graph with the original's ``convcrf.*`` metadata (the digest
   covers it; an optimiser that dropped or altered it cannot change what the runtime reads)
   and a new digest, written atomically (never over one of the inputs) and read back with the
   readers' own checks.

Needs onnx, onnxruntime and numpy; no torch (it runs where the model is deployed).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..exported_model import (DIGEST_KEY, KEY_PREFIX, LEGACY_DIGEST_KEY, PLUGIN_DOMAIN,
                              ExportedModel, extract_part, seal, write)
from ..errors import describe_error
from ..files import check_output_paths
from . import onnx_ops
from .verify import ERROR_STATISTIC, MIN_LABEL_AGREEMENT, TOLERANCE
from ..ort_session import inference_session

#: test images: frames of the synthetic scene, at most this many pixels per side.
MAX_TEST_SIDE = 640
#: the size used when neither the graph nor the metadata gives one.
DEFAULT_TEST_SIZE = (240, 320)


class ResealError(ValueError):
    """The changed file is not the exported model any more (or cannot be compared); nothing
    was written. The message says what differs."""


@dataclass
class Comparison:
    """One output of the changed graph against the original's."""

    what: str                       # e.g. "probabilities (whole graph)"
    statistic: str                  # "max" | "p99.9" | "labels"
    value: float                    # the error statistic, or the label agreement
    bound: float                    # tolerance, or the minimum agreement

    @property
    def passed(self) -> bool:
        if self.statistic == "labels":
            return self.value >= self.bound
        return self.value <= self.bound

    def describe(self) -> str:
        if self.statistic == "labels":
            return (f"{self.what}: {100 * self.value:.3f} % of labels agree (need "
                    f"{100 * self.bound:g} %)")
        return f"{self.what}: {self.statistic} abs error {self.value:.3g} (tolerance {self.bound:g})"


@dataclass
class ResealReport:
    """What :func:`reseal` checked and wrote."""

    path: Path
    flavor: str | None
    size: tuple[int, int]
    crf_nodes: dict[str, int] = field(default_factory=dict)
    comparisons: list[Comparison] = field(default_factory=list)
    restored_metadata: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"wrote {self.path} (re-sealed; {self.flavor or 'unknown'} flavour)"]
        if self.crf_nodes:
            nodes = ", ".join(f"{n} {op}" for op, n in sorted(self.crf_nodes.items()))
            lines.append(f"  ConvCRF nodes kept: {nodes}")
        lines += [f"  {c.describe()}" for c in self.comparisons]
        if self.restored_metadata:
            lines.append("  convcrf metadata taken from the original for: "
                         + ", ".join(self.restored_metadata))
        return "\n".join(lines)


def reseal(changed: str | os.PathLike, original: str | os.PathLike,
           output: str | os.PathLike, *, size: tuple[int, int] | None = None,
           report: Callable[[str], None] | None = None) -> ResealReport:
    """Check ``changed`` against ``original`` and write it to ``output`` with a new digest.

    Args:
        changed: the file after the user's tool (e.g. ``onnxslim model.onnx opt.onnx``).
        original: the file ``convcrf-export`` wrote (its digest must match).
        output: where to write the re-sealed file (not one of the inputs).
        size: ``(height, width)`` of the test images (default: the graph's fixed size, else
            the model's input size padded to its input constraints, at most
            :data:`MAX_TEST_SIDE` per side).
        report: called with progress lines.

    Returns:
        :class:`ResealReport`.

    Raises:
        ResealError: the interface, the ConvCRF nodes or the outputs differ (nothing written).
        convcrf_deploy.files.OutputPathError: ``output`` is an input or cannot be written.
        ValueError: ``original`` is damaged, inconsistent or not ours; ``changed`` is not ONNX.
    """
    report = report or (lambda line: None)
    check_output_paths({"-o": output}, {"CHANGED": changed, "--original": original})
    reference = ExportedModel.open(original)
    if not reference.is_ours:
        raise ValueError(f"{reference.name} carries no convcrf metadata: give the file "
                         "convcrf-export wrote as --original")
    candidate = ExportedModel.open(changed, check=False)
    proto = candidate.load_proto_with_data()
    restored = _restore_metadata(proto, reference)
    result = ExportedModel.from_proto(proto, check=False)
    result.path = candidate.path                      # messages name the changed file
    try:
        result.check_consistency()
    except ValueError as exc:
        raise ResealError(str(exc)) from None
    _check_interface(result, reference)
    crf_nodes = _check_crf_nodes(result, reference)
    test_size = size or _test_size(reference)
    report(f"comparing {result.name} with {reference.name} in ONNX Runtime at "
           f"{test_size[1]}x{test_size[0]}")
    comparisons = _compare(result, reference, test_size)
    failed = [c for c in comparisons if not c.passed]
    if failed:
        raise ResealError(
            f"{result.name} does not compute what {reference.name} does: "
            + "; ".join(c.describe() for c in failed)
            + ". Nothing was written: optimise with settings that keep the model's numerics "
              "(no precision or accuracy-changing passes), or export again")
    seal(proto)
    write(proto, output, seal_it=False)
    summary = ResealReport(Path(output), reference.flavor, test_size, crf_nodes, comparisons,
                           restored)
    return summary


# ---- the checks ----------------------------------------------------------------------------------

def _restore_metadata(proto, reference: ExportedModel) -> list[str]:
    """Give ``proto`` the original's ``convcrf.*`` entries (other tools' entries are kept);
    returns the keys that were missing or different."""
    from onnx import helper

    ours = {k: v for k, v in reference.props.items()
            if k.startswith(KEY_PREFIX) and k not in (DIGEST_KEY, LEGACY_DIGEST_KEY)}
    current = {p.key: p.value for p in proto.metadata_props}
    restored = sorted(k for k, v in ours.items() if current.get(k) != v)
    foreign = {k: v for k, v in current.items() if not k.startswith(KEY_PREFIX)}
    del proto.metadata_props[:]
    helper.set_model_props(proto, {**foreign, **ours})
    return restored


def _check_interface(result: ExportedModel, reference: ExportedModel) -> None:
    want_in, got_in = list(reference.inputs), list(result.inputs)
    want_out, got_out = list(reference.outputs), list(result.outputs)
    if got_in != want_in or got_out != want_out:
        raise ResealError(
            f"{result.name} has inputs {got_in} and outputs {got_out}, but {reference.name} "
            f"has {want_in} and {want_out}: the runtime finds tensors by these names; keep "
            "them when optimising")
    for name, info in {**reference.inputs, **reference.outputs}.items():
        other = result.inputs.get(name) or result.outputs[name]
        if other.elem_type != info.elem_type:
            raise ResealError(f"{result.name}: {name!r} has element type {other.elem_type}, "
                              f"{reference.name} {info.elem_type}; keep the graph's types")


def _node_signature(node) -> tuple:
    return (node.op_type, tuple(sorted((a.name, a.SerializeToString(deterministic=True))
                                       for a in node.attribute)))


def _check_crf_nodes(result: ExportedModel, reference: ExportedModel) -> dict[str, int]:
    """The ConvCRF nodes of the original, with the same attributes, are all still there."""
    def signatures(model: ExportedModel) -> list:
        return sorted(_node_signature(n) for n in model.proto.graph.node
                      if n.domain == PLUGIN_DOMAIN)
    want, got = reference.crf_nodes, result.crf_nodes
    if want != got:
        found = ", ".join(f"{n} {op}" for op, n in sorted(got.items())) or "none"
        wanted = ", ".join(f"{n} {op}" for op, n in sorted(want.items()))
        raise ResealError(
            f"{result.name} no longer carries the ConvCRF as exported: {reference.name} has "
            f"{wanted} node(s), it has {found} (an optimiser inlined or removed them; keep "
            "the trt.plugins domain's nodes, e.g. onnxsim --skip-optimization for them, or "
            "export --flavor portable before optimising)")
    if signatures(result) != signatures(reference):
        raise ResealError(f"{result.name}: the attributes of its ConvCRF nodes differ from "
                          f"{reference.name}'s (filter size, plugin version); keep them")
    return dict(got)


def _test_size(reference: ExportedModel) -> tuple[int, int]:
    image = reference.inputs["image"]
    height, width = image.static_dim(2), image.static_dim(3)
    if height is not None and width is not None:
        return height, width
    metadata = reference.metadata
    size = tuple(metadata.input_size) if metadata is not None else DEFAULT_TEST_SIZE
    scale = min(1.0, MAX_TEST_SIDE / max(size))
    size = (max(2, round(size[0] * scale)), max(2, round(size[1] * scale)))
    padded = getattr(metadata, "padded_size", None)     # input constraints, where recorded
    return tuple(padded(*size)) if padded is not None else size


def _session(model: ExportedModel, proto):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return inference_session(onnx_ops.with_function_bodies(proto).SerializeToString(), options)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors share no useful base class
        raise ResealError(describe_error(exc, f"ONNX Runtime cannot run {model.name}",
                                         "check it with onnx.checker and the optimiser's log")
                          ) from None


def _test_images(size: tuple[int, int], dtype) -> np.ndarray:
    from ..data.scenes import SyntheticScene

    height, width = size
    scene = SyntheticScene(height=max(height, 32), width=max(width, 32), seed=0)  # its minimum
    frames = [scene.render(40 * i)[0][:height, :width].transpose(2, 0, 1) for i in range(2)]
    return np.stack(frames).astype(dtype)


def _feeds(model: ExportedModel, image: np.ndarray, num_classes: int | None) -> dict:
    feeds = {"image": image}
    if "logits" in model.inputs:
        feeds["logits"] = _smooth_logits(image.shape[0], num_classes, *image.shape[2:])
    return feeds


def _smooth_logits(batch: int, classes: int | None, height: int, width: int) -> np.ndarray:
    """Random logits smoothed like a network's (i.i.d. noise is the least realistic input)."""
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 3, (batch, classes or 2, height, width)).astype(np.float32)
    kernel = 5
    padded = np.pad(noise, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="edge")
    smooth = sum(padded[:, :, i:i + height, j:j + width] for i in range(kernel)
                 for j in range(kernel)) / kernel ** 2
    return smooth.astype(np.float32)


def _compare_outputs(what: str, names, got: list, want: list, fp16: bool) -> list[Comparison]:
    comparisons = []
    for name, a, b in zip(names, got, want):
        if a.shape != b.shape:
            raise ResealError(f"{what}: output {name!r} has shape {list(a.shape)} instead of "
                              f"{list(b.shape)}")
        if np.issubdtype(b.dtype, np.integer):
            comparisons.append(Comparison(f"{name} ({what})", "labels",
                                          float((a == b).mean()) if b.size else 1.0,
                                          MIN_LABEL_AGREEMENT[fp16]))
            continue
        b32 = b.astype(np.float32)
        scale = max(1.0, float(np.abs(b32).max())) if name == "logits" else 1.0
        error = np.abs(a.astype(np.float32) - b32) / scale
        statistic = ERROR_STATISTIC[fp16]
        value = (float(error.max()) if statistic == "max"
                 else float(np.quantile(error, 0.999))) if error.size else 0.0
        if not np.isfinite(error).all():
            value = float("inf")
        comparisons.append(Comparison(f"{name} ({what})", statistic, value, TOLERANCE[fp16]))
    return comparisons


def _compare(result: ExportedModel, reference: ExportedModel,
             size: tuple[int, int]) -> list[Comparison]:
    fp16 = (reference.precision or "").startswith("fp16")   # "fp16" or "fp16-crf"
    reference_proto = reference.load_proto_with_data()
    dtype = np.float16 if reference.inputs["image"].elem_type == 10 else np.float32
    image = _test_images(size, dtype)
    if reference.inputs["image"].static_dim(0) == 1:
        image = image[:1]
    channels = reference.class_channels()
    num_classes = channels[1] if channels else (reference.crf_config.num_classes
                                                if reference.crf_config else None)
    names = list(reference.outputs)
    feeds = _feeds(reference, image, num_classes)
    want = _session(reference, reference_proto).run(names, feeds)
    got = _session(result, result.proto).run(names, feeds)
    comparisons = _compare_outputs("whole graph", names, got, want, fp16)
    # The CRF part alone, on smooth random logits: a change to the CRF shows there even when
    # the unary's confident logits leave the whole graph's labels unchanged.
    if reference.part == "full" and reference.runs_crf:
        want_logits, got_logits = reference.unary_logits_name, result.unary_logits_name
        if want_logits is None or got_logits is None:
            raise ResealError(f"{result.name}: cannot find the unary logits (the input of the "
                              "ArgMax that gives unary_labels), so its CRF part cannot be "
                              "checked; keep the unary_labels output")
        logits = _smooth_logits(image.shape[0], num_classes, *image.shape[2:])
        parts = []
        for model, proto, name in ((reference, reference_proto, want_logits),
                                   (result, result.proto, got_logits)):
            part = extract_part(proto, [name, "image"], ["probabilities"])
            parts.append(_session(model, part).run(["probabilities"],
                                                    {name: logits.astype(
                                                        _logits_dtype(proto, name)),
                                                     "image": image})[0])
        comparisons += _compare_outputs("CRF part on random logits", ["probabilities"],
                                        [parts[1]], [parts[0]], fp16)
    return comparisons


def _logits_dtype(proto, name: str):
    """NumPy type of the unary logits tensor (fp16 exports keep the unary in float16)."""
    for value in [*proto.graph.value_info, *proto.graph.output, *proto.graph.input]:
        if value.name == name and value.type.tensor_type.elem_type == 10:
            return np.float16
    for node in proto.graph.node:
        if name in node.output and node.op_type == "Cast":
            to = next((a.i for a in node.attribute if a.name == "to"), 1)
            return np.float16 if to == 10 else np.float32
    return np.float32
