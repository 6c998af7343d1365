"""Unaries saved without class code: ``torch.export`` programs (``.pt2``) and TorchScript.

A unary saved with ``torch.export.save(torch.export.export(net, (x,), dynamic_shapes=...),
"unary.pt2")`` or ``torch.jit.save(torch.jit.trace(net, x), "unary.pt")`` runs without the
Python class that defined it, so no ``--import`` is needed. Such a file holds the unary
only; :func:`load_unary_file` adds what it lacks from :class:`UnarySettings`:

* the CRF: a CRF-only checkpoint (``save_crf``, ``convcrf-train crf --out``) and/or
  :class:`~convcrf_deploy.config.CRFConfig` fields; otherwise the ``CRFConfig`` defaults. The
  class count always comes from the unary's output.
* the metadata (class names, palette, normalisation, input size, resize policy):
  :class:`~convcrf_deploy.metadata.ModelMetadata` fields; class names default to
  ``class0..class{C-1}``.

What loading such a file trusts (both are programs, not inert weights like a checkpoint):

* **TorchScript** (``torch.jit.load``): the file's TorchScript code is compiled and run by
  PyTorch's TorchScript interpreter, and its data is read by a restricted unpickler that only
  builds TorchScript types. It cannot import Python modules or run Python code, but it calls
  whichever operators registered with PyTorch its author chose, which includes reading files
  (``aten::from_file``).
* **torch.export programs** (``torch.export.load``): the graph calls registered operators, as
  above. ``torch.export.load`` itself would also unpickle tensor subclasses and opaque objects,
  load AOTInductor-compiled native code, evaluate the file's shape expressions with
  ``sympy.sympify`` (which calls ``eval``) and ``exec`` its guard code; so before it is called,
  :func:`check_program_archive` refuses archives with pickled payloads, compiled code, graph
  targets other than ``torch.ops`` operators and plain arithmetic, and shape expressions that
  are not plain arithmetic, and the program's module is built without its guard code.

Both files are zip archives whose CRCs are checked first, so a damaged file is refused.
"""
from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from ..config import CRFConfig
from ..files import DamagedFileError
from ..metadata import ModelMetadata
from .checkpoint import CheckpointError, load_crf
from .convcrf import ConvCRF
from .outputs import select_logits
from .segmentation import SegmentationModel

#: file kinds :func:`unary_file_kind` recognises.
TORCH_EXPORT = "torch.export program"
TORCHSCRIPT = "TorchScript"


class UnsafeProgramError(CheckpointError):
    """A ``.pt2`` archive holds something that loading it would run as code."""


@dataclass(frozen=True)
class UnarySettings:
    """What a unary file without class code does not carry (the CLIs' ``--crf``,
    ``--crf-config``, ``--metadata``, ``--class-names``, ``--mean``, ``--std``).

    Attributes:
        crf: path of a CRF-only checkpoint (``save_crf``), ``"none"`` for no CRF (the unary's
            softmax), or ``None`` for a CRF with ``CRFConfig`` defaults.
        crf_config: ``CRFConfig`` fields over the checkpoint's or the defaults, e.g.
            ``{"filter_size": 7, "blur": 4, "iterations": 5}``; ``num_classes`` must match the
            unary's output when given.
        metadata: ``ModelMetadata`` fields (``class_names``, ``palette``, ``mean``, ``std``,
            ``input_size``, ``resize``); the others keep their defaults.
    """

    crf: str | Path | None = None
    crf_config: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def given(self) -> bool:
        return self.crf is not None or bool(self.crf_config) or bool(self.metadata)


def _archive_names(path: Path) -> list[str] | None:
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return None


def _inner(name: str) -> str:
    """An archive entry without its root folder (``u/models/model.json`` -> ``models/...``)."""
    return name.split("/", 1)[1] if "/" in name else name


def unary_file_kind(path: str | Path) -> str | None:
    """:data:`TORCH_EXPORT`, :data:`TORCHSCRIPT`, or ``None`` (not such a file), from the
    archive's contents (not its suffix)."""
    path = Path(path)
    if not path.is_file():
        return None
    names = _archive_names(path)
    if not names:
        return None
    inner = {_inner(name) for name in names}
    if "archive_format" in inner or "serialized_exported_program.json" in inner:
        return TORCH_EXPORT
    if "constants.pkl" in inner and any(name.startswith("code/") for name in inner):
        return TORCHSCRIPT
    return None


def _check_crc(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DamagedFileError(f"{path} is damaged: {exc}; restore it or save it again") from None
    if bad is not None:
        raise DamagedFileError(f"{path} is damaged: the archive entry {bad} fails its CRC "
                               "check; restore it or save it again")


# ---- what a .pt2 archive may hold ---------------------------------------------------------

_ALLOWED_ENTRIES = re.compile(r"^(archive_format|archive_version|byteorder|version|\.data/.*|"
                              r"models/[^/]+\.json|data/weights/[^/]+|data/constants/[^/]+|"
                              r"data/sample_inputs/[^/]+\.pt|extra/[^/]+)$")
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_SAFE_OPERATOR = {"getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg",
                  "pos", "abs", "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "xor",
                  "not_", "invert", "lshift", "rshift", "truth", "index"}
_TARGET = re.compile(rf"^(torch\.ops\.{_NAME}\.{_NAME}(\.{_NAME})?|_operator\.(?P<op>{_NAME})|"
                     rf"math\.[a-z][a-z0-9]*|torch\._?sym_[a-z_]+)$")
# Shape expressions are parsed with sympy.sympify (eval): only numbers, operators, symbols
# such as s0 or u3 (also quoted, as in srepr's Symbol('s0', integer=True)) and the sympy /
# torch shape functions; no attribute access, no other strings.
_EXPRESSION_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)|([A-Za-z_][A-Za-z0-9_]*)"
                               r"|(\*\*|//|[-+*/%(),<>=!&|~^]=?)|('[a-z]+\d+'))")
_SHAPE_FUNCTIONS = {
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt",
    "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv",
    "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
    "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "OpaqueUnaryFn_sqrt", "Max", "Min",
    "Abs", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "floor", "ceiling", "sqrt",
    "oo", "int_oo", "Integer", "Rational", "Float", "True", "False", "BitwiseFn_bitwise_and",
    "BitwiseFn_bitwise_or", "BitwiseFn_bitwise_xor",
    # sympy's srepr form: Symbol('s0', positive=True, integer=True), Integer(-1)
    "Symbol", "Add", "Mul", "Pow", "Equality", "Unequality", "LessThan", "StrictLessThan",
    "GreaterThan", "StrictGreaterThan", "BooleanTrue", "BooleanFalse", "true", "false",
    "Infinity", "NegativeInfinity", "IntInfinity", "NegativeIntInfinity", "positive",
    "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "zero", "even",
    "odd"}


def _safe_expression(text: Any) -> bool:
    if not isinstance(text, str) or len(text) > 4096:
        return False
    position = 0
    while position < len(text):
        match = _EXPRESSION_TOKEN.match(text, position)
        if match is None or match.end() == position:
            return text[position:].strip() == ""
        name = match.group(2)
        if name is not None and not (re.fullmatch(r"[a-z]+\d+", name) or name in _SHAPE_FUNCTIONS):
            return False
        position = match.end()
    return True


def _unsafe_in_program(node: Any) -> str | None:
    """The first graph target or shape expression of a serialised program that is not plain
    operators and arithmetic, or ``None``."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key == "target" and isinstance(value, str):
                    match = _TARGET.match(value)
                    if not match or "__" in value or (
                            match.group("op") and match.group("op") not in _SAFE_OPERATOR):
                        return f"the graph calls {value!r}"
                elif key == "expr_str" and not _safe_expression(value):
                    return f"a shape expression is not plain arithmetic ({str(value)[:80]!r})"
                else:
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
    return None


def check_program_archive(path: str | Path) -> None:
    """Refuse a ``.pt2`` archive that ``torch.export.load`` would run code from (see the
    module docstring); check its CRCs.

    Raises:
        DamagedFileError: an entry fails its CRC check.
        UnsafeProgramError (a ``CheckpointError``): the archive is of the old format, holds
            compiled code or pickled payloads, or its graph calls something other than
            ``torch.ops`` operators and plain arithmetic. Nothing from the file was run.
    """
    path = Path(path)
    _check_crc(path)
    refuse = "; nothing from the file was run. Export the unary again with torch.export.save " \
             "(plain tensors, no AOTInductor package), or save a checkpoint with " \
             "convcrf_deploy.save_model and load its class with --import"
    with zipfile.ZipFile(path) as archive:
        entries = {_inner(name): name for name in archive.namelist() if not name.endswith("/")}
        if "serialized_exported_program.json" in entries:
            raise UnsafeProgramError(f"{path} is a torch.export file of the old format (before "
                                     "PyTorch 2.7), which torch.export.load reads by "
                                     f"unpickling{refuse}")
        for inner in entries:
            if not _ALLOWED_ENTRIES.match(inner):
                what = ("AOTInductor-compiled native code" if inner.startswith("data/aotinductor")
                        else f"the entry {inner}")
                raise UnsafeProgramError(f"{path} holds {what}, which loading would run or is "
                                         f"not a plain exported program{refuse}")
        for inner, name in entries.items():
            if inner.endswith("_config.json") and inner.startswith(("data/weights/",
                                                                    "data/constants/")):
                config = json.loads(archive.read(name)).get("config", {})
                for fqn, payload in config.items():
                    kind = str(payload.get("path_name", ""))
                    if payload.get("use_pickle") or (inner.startswith("data/constants/")
                                                     and not kind.startswith("tensor_")):
                        raise UnsafeProgramError(f"{path}: {fqn} is stored as a pickled "
                                                 f"object, which loading would unpickle{refuse}")
            elif inner.startswith("data/weights/") and inner.endswith(".pt"):
                raise UnsafeProgramError(f"{path} stores its weights in the legacy pickled "
                                         f"form{refuse}")
            elif inner.startswith("data/sample_inputs/"):
                try:   # torch.export.load retries a failed safe load with weights_only=False
                    torch.load(io.BytesIO(archive.read(name)), weights_only=True)
                except Exception:
                    raise UnsafeProgramError(f"{path}: its sample inputs are not plain tensors "
                                             f"and loading them would unpickle code{refuse}") \
                        from None
            elif inner.startswith("models/"):
                problem = _unsafe_in_program(json.loads(archive.read(name)))
                if problem:
                    raise UnsafeProgramError(f"{path}: {problem}, which is not a PyTorch "
                                             f"operator{refuse}")


# ---- loading --------------------------------------------------------------------------------

class ProgramUnary(nn.Module):
    """A loaded ``torch.export`` program as a unary module.

    Exported programs refuse ``train()``/``eval()`` (their graph is fixed in eval form), so
    this wrapper records the mode without passing it on; everything else (``.to()``,
    ``state_dict()``, ``deepcopy``, tracing by the exporter) reaches the program.

    Shapes: ``(N, 3, H, W)`` normalised image -> the program's output.
    """

    def __init__(self, program: nn.Module, source: str):
        super().__init__()
        self.program = program
        self.source = source

    def train(self, mode: bool = True) -> "ProgramUnary":
        self.training = bool(mode)
        return self

    def forward(self, x: torch.Tensor):
        try:
            return self.program(x)
        except RuntimeError as exc:   # the program's input check: name the fix, not a trace
            text = " ".join(str(exc).split())
            if not text.startswith("Expected input"):
                raise
            raise ValueError(
                f"the unary program {self.source} does not accept an input of shape "
                f"{tuple(x.shape)}: {text.split(' If you meant')[0].rstrip('.')}; it was "
                "exported for other sizes: run or export it at a size it accepts "
                "(convcrf-export --static --height H --width W), or export it again with "
                "dynamic shapes "
                "(torch.export.Dim for batch, height and width)") from None


def _load_program(path: Path) -> tuple[nn.Module, tuple[int, ...] | None]:
    check_program_archive(path)
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path} could not be read as a torch.export program: "
                              f"{' '.join(str(exc).split())[:300]}") from None
    program._guards_code = []     # never exec'd: _unlift would compile it into Python
    example = None
    inputs = getattr(program, "example_inputs", None)
    if inputs and inputs[0] and isinstance(inputs[0][0], torch.Tensor):
        example = tuple(inputs[0][0].shape)
    return ProgramUnary(program.module(check_guards=False), str(path)), example


def _load_torchscript(path: Path) -> nn.Module:
    _check_crc(path)
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise CheckpointError(f"{path} could not be read as TorchScript: "
                              f"{' '.join(str(exc).split())[:300]}") from None


def _probe_classes(unary: nn.Module, shape: tuple[int, ...], path: Path) -> int:
    try:
        with torch.inference_mode():
            logits = select_logits(unary(torch.zeros(shape)))
    except Exception as exc:
        raise CheckpointError(f"{path}: running the unary on a {shape[-1]}x{shape[-2]} "
                              f"(WxH) probe image failed ({' '.join(str(exc).split())[:200]}); "
                              "give the size it runs at with --metadata (input_size) ") from None
    if logits.dim() != 4:
        raise CheckpointError(f"{path}: the unary returned shape {tuple(logits.shape)}; "
                              "expected (N, C, h, w) logits")
    return int(logits.shape[1])


def crf_for_unary(settings: UnarySettings, num_classes: int, path: str | Path
                  ) -> ConvCRF | None:
    """The CRF of ``settings`` for a unary (named ``path`` in errors) with ``num_classes``
    outputs: ``None`` for ``crf="none"``, the CRF checkpoint with ``crf_config`` applied, or
    ``CRFConfig`` defaults with it. Shared with unaries of other formats (an ONNX unary).

    Raises:
        CheckpointError: the class counts disagree, the settings are invalid, or the CRF
            checkpoint cannot be loaded.
    """
    overrides = dict(settings.crf_config)
    if overrides.get("num_classes", num_classes) != num_classes:
        raise CheckpointError(f"{path}: the unary outputs {num_classes} classes but the CRF "
                              f"settings say num_classes={overrides['num_classes']}")
    overrides.pop("num_classes", None)
    if isinstance(settings.crf, str) and settings.crf.lower() == "none":
        if overrides:
            raise CheckpointError("CRF settings were given together with no CRF (crf='none')")
        return None
    try:
        if settings.crf is None:
            return ConvCRF(CRFConfig(num_classes=num_classes).replace(**overrides)).eval()
        trained = load_crf(settings.crf)
        if trained.config.num_classes != num_classes:
            raise CheckpointError(f"{settings.crf}: the CRF has {trained.config.num_classes} "
                                  f"classes but the unary {path} outputs {num_classes}")
        if not overrides:
            return trained
        crf = ConvCRF(trained.config.replace(**overrides))
        crf.load_state_dict(trained.state_dict(), strict=True)
        return crf.eval()
    except CheckpointError:
        raise
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"invalid CRF settings {overrides}: "
                              f"{' '.join(str(exc).split())[:200]}") from None


def metadata_for_unary(settings: UnarySettings, num_classes: int, path: str | Path,
                       program_size: tuple[int, int] | None = None) -> ModelMetadata:
    """The :class:`ModelMetadata` of ``settings`` for a unary with ``num_classes`` outputs;
    ``program_size`` ``(H, W)``: the unary accepts only that size (the default
    ``input_size``, resize ``"stretch"``).

    Raises:
        CheckpointError: the class names do not match ``num_classes``, or invalid fields.
    """
    fields = dict(settings.metadata)
    names = fields.pop("class_names", None) or [f"class{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise CheckpointError(f"{path}: the unary outputs {num_classes} classes but the "
                              f"metadata names {len(names)} ({', '.join(map(str, names))})")
    if program_size is not None:   # a program of one fixed size: frames are resized to it
        fields.setdefault("input_size", program_size)
        fields.setdefault("resize", "stretch")
    try:
        return ModelMetadata.from_dict({"class_names": names, **fields})
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"invalid metadata: {exc}") from None


def load_unary_file(path: str | Path, settings: UnarySettings | None = None, *,
                    traceable: bool = False) -> SegmentationModel:
    """A :class:`SegmentationModel` around a unary saved as a ``torch.export`` program or
    TorchScript, with its CRF and metadata from ``settings`` (module docstring), in eval mode
    on the CPU.

    Args:
        path: the ``.pt2`` (``torch.export.save``) or TorchScript (``torch.jit.save``) file.
        settings: the CRF and metadata; ``None``: the defaults.
        traceable: convert a TorchScript unary into a ``torch.export`` program (for the ONNX
            export, which traces with ``torch.export``; needs a traced or trace-friendly
            TorchScript module).

    The model's ``unary_file`` attribute names ``path``. The class count comes from running
    the unary once on a zero image of the metadata's
    ``input_size`` (a program of fixed size: that size, which also becomes the model's
    ``input_size`` with resize ``"stretch"``).

    Raises:
        CheckpointError (a ``ValueError``): not such a file, refused (``UnsafeProgramError``),
            unreadable, or settings that do not fit the unary.
        DamagedFileError: an archive entry fails its CRC check.
    """
    path = Path(path)
    settings = settings or UnarySettings()
    if not path.is_file():
        from .checkpoint import CheckpointNotFoundError
        raise CheckpointNotFoundError(f"model file not found: {path}")
    kind = unary_file_kind(path)
    program_size = probe = None
    if kind == TORCH_EXPORT:
        unary, example = _load_program(path)
        program_size = _static_size(unary)
        if example is not None and len(example) == 4:
            probe = example
        elif program_size is not None:
            probe = (1, 3, *program_size)
    elif kind == TORCHSCRIPT:
        unary, probe = _load_torchscript(path), None
    else:
        raise CheckpointError(f"{path} is neither a torch.export program (.pt2) nor TorchScript")
    if probe is None:
        height, width = settings.metadata.get("input_size") or ModelMetadata(["x"]).input_size
        probe = (1, 3, int(height), int(width))
    num_classes = _probe_classes(unary, probe, path)
    if kind == TORCHSCRIPT and traceable:
        unary = _torchscript_to_program(unary, probe, path)
    crf = crf_for_unary(settings, num_classes, path)
    metadata = metadata_for_unary(settings, num_classes, path, program_size)
    try:
        model = SegmentationModel(unary, crf, metadata).eval()
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    model.unary_file = str(path)   # save_model cannot store this unary: it stays in its file
    return model


def _static_size(unary: ProgramUnary) -> tuple[int, int] | None:
    """``(H, W)`` when the program's image input has a fixed size, else ``None``."""
    for node in unary.program.graph.nodes:
        if node.op == "placeholder":
            value = node.meta.get("val")
            if isinstance(value, torch.Tensor) and value.dim() == 4:
                height, width = value.shape[-2:]
                if isinstance(height, int) and isinstance(width, int):
                    return height, width
                return None
    return None


def _torchscript_to_program(unary: nn.Module, probe: tuple[int, ...], path: Path) -> nn.Module:
    """TorchScript -> a traceable ``torch.export`` program (PyTorch's TorchScript converter)."""
    try:
        from torch._export.converter import TS2EPConverter
        example = torch.zeros((2,) + tuple(probe[1:]))
        program = TS2EPConverter(unary, (example,)).convert()
        module = program.module(check_guards=False)
        # The converter's shape ranges come from its example (batch >= 2), not from the user.
        module.validate_inputs = False
    except Exception as exc:
        raise CheckpointError(
            f"{path}: this TorchScript unary cannot be converted for export "
            f"({' '.join(str(exc).split())[:200]}); save it with torch.jit.trace, or as a "
            "torch.export program (torch.export.save, .pt2)") from None
    return ProgramUnary(module, str(path))


def load_any_model(source: Any, *, allow_pickle: bool = False,
                   settings: UnarySettings | None = None, crf_only: bool = False,
                   traceable: bool = False):
    """The model in ``source``: ``"demo"``, a checkpoint (:func:`load_model`), a unary file
    without class code (:func:`load_unary_file`, with ``settings``), or with ``crf_only`` a
    CRF-only checkpoint (a :class:`ConvCRF`). In-memory models are returned as they are.

    Raises:
        CheckpointError (a ``ValueError``): as :func:`load_model` / :func:`load_unary_file`;
            also ``settings`` given for a checkpoint, which carries its own CRF and metadata.
    """
    from .checkpoint import load_model
    if not isinstance(source, (str, Path)):
        return source
    settings = settings or UnarySettings()
    if str(source) != "demo" and unary_file_kind(source) is not None:
        return load_unary_file(source, settings, traceable=traceable)
    if settings.given():
        raise CheckpointError(
            f"{source}: the CRF and metadata settings (--crf, --crf-config, --metadata, "
            "--class-names, --mean, --std) apply to a unary saved without class code (.pt2, "
            "TorchScript); a checkpoint carries its own (retrain its CRF with convcrf-train "
            "crf --unary-model)")
    try:
        return load_model(source, allow_pickle=allow_pickle)
    except CheckpointError as model_error:
        if not crf_only or str(source) == "demo" or not Path(source).is_file():
            raise
        try:
            return load_crf(source)
        except (ValueError, OSError):
            raise model_error from None
