"""Safe checkpoints of :class:`SegmentationModel`: ``save_model`` and ``load_model``.

A checkpoint is a plain dictionary written with ``torch.save`` and read with
``torch.load(weights_only=True)``, so loading one executes no code from the file::

    {"format": "convcrf-deploy/model", "format_version": 1, "toolkit_version": "0.1.0",
     "unary": {"name": "fast_fcn", "kwargs": {...}},      # a registered architecture
     "state_dict": {...},                                   # tensors of unary and CRF
     "crf_config": CRFConfig.to_dict() or None,
     "metadata": ModelMetadata.to_dict(),          # with the input constraints, if any
     "unary_output_key": "out",                     # only when set (SegmentationModel)
     "weights_sha256": "..."}                              # digest of every tensor above

Files are written atomically (a temporary file renamed on success: a failed save keeps the
previous file). ``weights_sha256`` (:func:`checkpoint_digest`) is checked on load: a damaged
file raises :class:`~convcrf_deploy.files.DamagedFileError` naming it. Checkpoints written
before digests existed load with a warning (:data:`convcrf_deploy.files.MISSING_DIGEST_POLICY`).

Your own unary network is stored the same way once registered with
:func:`convcrf_deploy.model.register_unary`. An unregistered module can still be saved: it is
then pickled (``"unary": {"name": None, "pickled": True}`` plus a ``"unary_pickle"`` byte
tensor), and ``load_model(path, allow_pickle=True)`` is required to load it, because
unpickling runs code chosen by whoever wrote the file.

``load_model("demo")`` loads the demo model shipped with the package (trained on
:class:`convcrf_deploy.data.scenes.SyntheticScene`; see ``scripts/train_demo_model.py``).
"""
from __future__ import annotations

import io
import os
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .._warnings import warn
from ..config import CRFConfig
from ..errors import describe_error
from ..files import MISSING_DIGEST_POLICY, DamagedFileError, atomic_write, tensor_digest
from ..metadata import ModelMetadata
from .convcrf import ConvCRF
from .segmentation import SegmentationModel
from .unaries import build_unary

FORMAT = "convcrf-deploy/model"
FORMAT_VERSION = 1
#: CRF-only checkpoints (no unary network), e.g. from ``convcrf-train crf --synthetic``.
CRF_FORMAT = "convcrf-deploy/crf"
CRF_FORMAT_VERSION = 1

# format -> (newest version read, keys that must be present, the function that loads it)
_FORMATS = {
    FORMAT: (FORMAT_VERSION, ("unary", "state_dict", "crf_config", "metadata"),
             "convcrf_deploy.load_model"),
    CRF_FORMAT: (CRF_FORMAT_VERSION, ("crf_config", "state_dict"),
                 "convcrf_deploy.training.load_crf"),
}

#: The demo checkpoint shipped in the package; ``load_model("demo")`` loads it.
DEMO_MODEL_PATH = Path(__file__).resolve().parents[1] / "assets" / "demo.pt"


class CheckpointError(ValueError):
    """A file is not a loadable convcrf-deploy checkpoint; the message says why and what to do."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist."""


class DamagedCheckpointError(CheckpointError, DamagedFileError):
    """The checkpoint's tensors do not match the digest stored with them."""


def _toolkit_version() -> str:
    from .. import __version__
    return __version__


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu().clone() for name, tensor in module.state_dict().items()}


#: checkpoint key of :func:`checkpoint_digest`.
DIGEST_KEY = "weights_sha256"


def checkpoint_digest(checkpoint: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint's tensors: ``state_dict`` (sorted by name) and, when present,
    the pickled unary's bytes."""
    def entries():
        tensors = dict(checkpoint.get("state_dict") or {})
        if isinstance(checkpoint.get("unary_pickle"), torch.Tensor):
            tensors["<unary_pickle>"] = checkpoint["unary_pickle"]
        for name in sorted(tensors):
            tensor = tensors[name]
            if not isinstance(tensor, torch.Tensor):
                yield name, type(tensor).__name__, (), repr(tensor).encode()
                continue
            flat = tensor.detach().cpu().contiguous().reshape(-1)
            yield (name, str(tensor.dtype), tuple(tensor.shape),
                   flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return tensor_digest(entries())


def non_finite_tensors(state_dict: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``state_dict`` holding NaN or infinity."""
    return [name for name, tensor in state_dict.items()
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point()
            and not bool(torch.isfinite(tensor).all())]


def _write(checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
    """Add the digest and write ``checkpoint`` atomically (parents created). A model whose
    weights hold NaN or infinity (a diverged training run) is refused: it would run and give
    silently wrong labels."""
    broken = non_finite_tensors(checkpoint["state_dict"])
    if broken:
        raise ValueError(f"the model's weights hold NaN or infinite values ({', '.join(broken)}),"
                         " e.g. after a diverged training run; nothing was written to "
                         f"{path}: save an earlier state instead")
    checkpoint[DIGEST_KEY] = checkpoint_digest(checkpoint)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as temporary:
        torch.save(checkpoint, temporary)


def save_model(model: SegmentationModel, path: str | os.PathLike) -> None:
    """Write ``model`` to ``path`` as a checkpoint (see the module docstring for the format).

    The unary is stored by its spec when it has one (built-in or registered architecture);
    otherwise it is pickled, and loading then needs ``allow_pickle=True``. A unary loaded from a
    ``torch.export`` program or TorchScript is refused (``ValueError``): it stays in its file,
    and its CRF is saved with ``save_crf``.
    """
    if not isinstance(model, SegmentationModel):
        raise ValueError(f"save_model expects a SegmentationModel, got {type(model).__name__}")
    source = getattr(model, "unary_file", None) or (
        "TorchScript" if isinstance(model.unary, torch.jit.ScriptModule) else None)
    if source:
        raise ValueError(f"this model's unary was loaded from {source} (a torch.export "
                         "program or TorchScript) and stays in that file: save "
                         "its CRF with convcrf_deploy.training.save_crf and load the two "
                         "together (load_unary_file(path, UnarySettings(crf=...)))")
    checkpoint: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "toolkit_version": _toolkit_version(),
        "unary": model.unary_spec,
        "state_dict": _cpu_state(model),
        "crf_config": model.crf.config.to_dict() if model.crf is not None else None,
        "metadata": model.metadata.to_dict(),
    }
    if model.output_key is not None:
        checkpoint["unary_output_key"] = model.output_key
    if model.unary_spec is None:
        buffer = io.BytesIO()
        torch.save(model.unary, buffer)
        # A byte tensor keeps the outer file loadable with weights_only=True, so load_model
        # can read the header and refuse politely before any unpickling happens.
        checkpoint["unary"] = {"name": None, "pickled": True,
                               "class": f"{type(model.unary).__module__}."
                                        f"{type(model.unary).__qualname__}"}
        checkpoint["unary_pickle"] = torch.frombuffer(bytearray(buffer.getvalue()),
                                                      dtype=torch.uint8)
    _write(checkpoint, path)


def _pickle_reason(text: str) -> str:
    """The useful line of torch's weights-only unpickling error."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            rest = line.split("WeightsUnpickler error:", 1)[1].strip()
            return rest or (lines[index + 1] if index + 1 < len(lines) else line)
    return lines[-1] if lines else "unknown error"


def _is_plain_pickle(path: Path) -> bool:
    """The file starts like a pickle of protocol 2..5 (not a torch zip archive)."""
    with open(path, "rb") as handle:
        head = handle.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _read(path: Path, map_location, expected: str = FORMAT) -> dict[str, Any]:
    """The checkpoint dictionary of format ``expected`` in ``path``; CheckpointError for
    anything else (a file of another known format names the function that loads it)."""
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    if path.suffix.lower() == ".onnx":
        raise CheckpointError(f"{path} is an ONNX file, not a PyTorch checkpoint: run it "
                              "with convcrf-run --model FILE.onnx (Segmenter(path)); exports, "
                              "benchmarks and training start from the checkpoint (.pt) it was "
                              "exported from (an ONNX unary of your own: convcrf-export "
                              "--unary FILE.onnx)")
    from .unary_files import unary_file_kind
    kind = unary_file_kind(path)
    if kind is not None:
        raise CheckpointError(f"{path} is a unary saved as a {kind}, not a checkpoint: load it "
                              "with convcrf_deploy.model.load_unary_file(path, settings); the "
                              "commands take it as the model, with --crf and --metadata")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"GLOBAL ([\w.]+\w)", text)
        if found or "Unsupported global" in text:
            raise CheckpointError(
                f"{path} was refused: loading it would import and call Python code"
                f"{' (' + found.group(1) + ')' if found else ''}, and unpickling can run "
                "anything the file's author chose. convcrf-deploy checkpoints hold only "
                "tensors and plain values; nothing from the file was run. Save models with "
                "convcrf_deploy.save_model.") from exc
        if "Unsupported operand" in text and _is_plain_pickle(path):
            raise CheckpointError(
                f"{path} was refused: it is a plain Python pickle, not a convcrf-deploy "
                "checkpoint, and unpickling it could run code chosen by its author "
                f"({_pickle_reason(text)} is not allowed by the safe loader); nothing from "
                "the file was run. Save models with convcrf_deploy.save_model.") from exc
        raise CheckpointError(f"{path} could not be read as a checkpoint: the file is "
                              "truncated, corrupt or not a PyTorch file (unpickling failed: "
                              f"{_pickle_reason(text)})") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError,
            AttributeError, IndexError, TypeError, UnicodeDecodeError, struct.error) as exc:
        raise CheckpointError(f"{path} could not be read as a checkpoint: the file is "
                              f"truncated, corrupt or not a PyTorch file ({describe_error(exc)})"
                              ) from exc
    newest, required, loader = _FORMATS[expected]
    found = data.get("format") if isinstance(data, dict) else None
    if found != expected:
        if found in _FORMATS:
            raise CheckpointError(f"{path} is a {found!r} checkpoint, not {expected!r}; load it "
                                  f"with {_FORMATS[found][2]}")
        found = (f"a dict with keys {sorted(map(str, data))[:8]}" if isinstance(data, dict)
                 else f"a {type(data).__name__}")
        raise CheckpointError(f"{path} is a PyTorch file but not a convcrf-deploy checkpoint "
                              f"(found {found}); checkpoints are written by "
                              "convcrf_deploy.save_model or convcrf_deploy.training.save_crf")
    version = data.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: invalid format_version {version!r}")
    if version > newest:
        raise CheckpointError(
            f"{path} uses checkpoint format version {version}, written by convcrf-deploy "
            f"{data.get('toolkit_version', '?')}; this version ({_toolkit_version()}) reads "
            f"up to version {newest}: upgrade convcrf-deploy")
    missing = [k for k in required if k not in data]
    if missing:
        raise CheckpointError(f"{path}: checkpoint is missing {missing}; the file is damaged")
    _check_digest(data, path)
    return data


def _check_digest(data: dict[str, Any], path: Path) -> None:
    stored = data.get(DIGEST_KEY)
    if stored is None:
        warn(f"{path} has no weights digest, so damage to it cannot be detected; "
             f"{MISSING_DIGEST_POLICY}")
        return
    try:
        actual = checkpoint_digest(data)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise DamagedCheckpointError(describe_error(
            exc, f"{path} is damaged: its tensors cannot be read",
            "restore it from a backup or save it again")) from None
    if actual != stored:
        raise DamagedCheckpointError(f"{path} is damaged: its weights do not match the digest "
                               "written with them (weights_sha256); restore it from a backup "
                               "or save it again")


def save_crf(crf: ConvCRF, path: str | os.PathLike) -> None:
    """Write a CRF-only checkpoint (no unary network), e.g. from synthetic training.

    Format (``torch.save`` of plain data, loadable with ``weights_only=True``)::

        {"format": "convcrf-deploy/crf", "format_version": 1,
         "crf_config": CRFConfig.to_dict(), "state_dict": {name: tensor}}
    """
    if not isinstance(crf, ConvCRF):
        raise ValueError(f"save_crf: expected a ConvCRF, got {type(crf).__name__}")
    _write({"format": CRF_FORMAT, "format_version": CRF_FORMAT_VERSION,
            "toolkit_version": _toolkit_version(), "crf_config": crf.config.to_dict(),
            "state_dict": _cpu_state(crf)}, path)


def load_crf(path: str | os.PathLike, *, implementation: str = "auto") -> ConvCRF:
    """Read a checkpoint written by :func:`save_crf` (no code is executed: ``weights_only``).

    Raises:
        CheckpointNotFoundError (a ``FileNotFoundError``): the file does not exist.
        CheckpointError (a ``ValueError``): the file is not a CRF checkpoint, is from a newer
            format, or its weights do not fit its configuration.
    """
    path = Path(path)
    data = _read(path, "cpu", expected=CRF_FORMAT)
    broken = non_finite_tensors(data["state_dict"]) if isinstance(data.get("state_dict"), dict) else []
    if broken:
        raise CheckpointError(f"{path}: the weights hold NaN or infinite values "
                              f"({', '.join(broken)}), e.g. from a diverged training run; "
                              "use an earlier checkpoint")
    try:
        crf = ConvCRF(CRFConfig.from_dict(data["crf_config"]), implementation=implementation)
        crf.load_state_dict(data["state_dict"], strict=True)
    except (ValueError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"{path}: the stored CRF does not fit its configuration: "
                              f"{error}") from None
    return crf.eval()


def _load_unary(data: dict[str, Any], path: Path, allow_pickle: bool) -> tuple[nn.Module,
                                                                                 dict | None]:
    spec = data["unary"]
    if isinstance(spec, dict) and spec.get("pickled"):
        if not allow_pickle:
            raise CheckpointError(
                f"{path} stores its unary network ({spec.get('class', 'unknown class')}) as "
                "pickled Python code, and unpickling runs arbitrary code from the file. Only "
                "if you trust its source, load it with load_model(path, allow_pickle=True) "
                "(on the command line: --allow-pickle). To avoid this, register the "
                "architecture with convcrf_deploy.model.register_unary(name, factory) and "
                "save again.")
        blob = data.get("unary_pickle")
        if not isinstance(blob, torch.Tensor) or blob.dtype != torch.uint8:
            raise CheckpointError(f"{path}: pickled unary is missing or damaged")
        try:
            unary = torch.load(io.BytesIO(blob.cpu().numpy().tobytes()), weights_only=False)
        except Exception as exc:   # any failure of foreign code being unpickled
            raise CheckpointError(describe_error(
                exc, f"{path}: could not unpickle the unary network", "is the module defining "
                "its class importable? On the command line, load it with --import "
                "MODULE_OR_FILE.py")) from exc
        if not isinstance(unary, nn.Module):
            raise CheckpointError(f"{path}: pickled unary is a {type(unary).__name__}, "
                                  "not an nn.Module")
        return unary, None
    try:
        unary = build_unary(spec)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    except TypeError as exc:    # the factory rejected the stored kwargs
        raise CheckpointError(f"{path}: cannot build unary {spec.get('name')!r} with "
                              f"kwargs {spec.get('kwargs')}: {exc}") from exc
    return unary, spec


def load_model(path_or_demo: str | os.PathLike, *, allow_pickle: bool = False,
               map_location: str | torch.device = "cpu") -> SegmentationModel:
    """Load a checkpoint written by :func:`save_model`, in eval mode.

    Args:
        path_or_demo: checkpoint path, or ``"demo"`` for the shipped demo model
            (:data:`DEMO_MODEL_PATH`).
        allow_pickle: allow checkpoints whose unary was pickled (unregistered module).
            Unpickling executes code from the file: only for files you trust.
        map_location: device for the tensors (as in ``torch.load``).

    Raises:
        CheckpointError (a ``ValueError``): the file is missing, corrupt, not a checkpoint,
        from a newer format, names an unregistered architecture, needs ``allow_pickle``, or
        its weights do not fit the architecture. ``DamagedCheckpointError`` (a subclass):
        the weights do not match the digest stored with them.

    Warns (``UserWarning``) when the checkpoint has no digest (written before digests existed).
    """
    if isinstance(path_or_demo, str) and path_or_demo == "demo":
        path = DEMO_MODEL_PATH
        if not path.exists():
            raise CheckpointNotFoundError(
                f"the demo model is missing from the installation ({path}); reinstall "
                "convcrf-deploy or regenerate it with scripts/train_demo_model.py")
    else:
        path = Path(path_or_demo)
    data = _read(path, map_location)
    try:
        metadata = ModelMetadata.from_dict(data["metadata"])
        crf_config = (CRFConfig.from_dict(data["crf_config"]) if data["crf_config"] is not None
                      else None)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: invalid metadata or CRF configuration: {exc}") from exc
    unary, spec = _load_unary(data, path, allow_pickle)
    crf = ConvCRF(crf_config) if crf_config is not None else None
    try:
        model = SegmentationModel(unary, crf, metadata, unary_spec=spec,
                                  output_key=data.get("unary_output_key"))
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    state_dict = data["state_dict"]
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path}: state_dict is a {type(state_dict).__name__}, not a dict")
    broken = non_finite_tensors(state_dict)
    if broken:
        raise CheckpointError(f"{path}: the weights hold NaN or infinite values "
                              f"({', '.join(broken)}), e.g. from a diverged training run; "
                              "use an earlier checkpoint")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: the stored weights do not fit the architecture "
            f"{spec['name'] if spec else 'pickled unary'!r}: {exc}") from exc
    model.to(map_location)
    return model.eval()
