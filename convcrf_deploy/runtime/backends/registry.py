"""The backend registry: one declarative entry per backend, read by everything that offers a
choice of backend (``convcrf-run``'s ``--backend`` choices and help, :class:`Segmenter`,
``convcrf-bench``, the Triton client). Importing it imports nothing heavy: each backend's module
is imported only when that backend is created.

A new backend is a folder beside the others (``loader.py``, ``runner.py`` with a
:class:`~.base.Backend` subclass) plus one :class:`BackendSpec` in :data:`BACKENDS`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class BackendSpec:
    """What a backend is and what it can do, known before its module is imported.

    Attributes:
        name: registry name (``--backend``).
        module, class_name: where the :class:`~.base.Backend` subclass lives.
        summary: one line for ``--help``.
        aliases: other accepted spellings of ``name``.
        suffixes: model files it runs (lower-case, with the dot); it is chosen for them when
            no backend is named.
        extra: the ``pip install`` extra that provides its library.
        remote: the model is a name on a server, not a local file.
        devices: where it runs (``"cpu"``, ``"cuda"``).
        crf_executors: how it can run the CRF (``Backend.crf_executor`` values; the first is
            the default). ``"native"``: our CPU library beside the backend's unary.
        crf_switchable: it can skip the CRF and run the unary alone (``Segmenter(crf=False)``;
            the others report the unary's labels from a graph that still runs the CRF).
        warm_start: it can start mean-field from the previous frame (``--warm-start``).
        options: the constructor options it takes from the command line (``threads``,
            ``device``, ``providers``, ``plugin_library``, ``crf_executor``, ``warm_start``,
            ``url``, ...); ``convcrf-run`` passes exactly these.
    """

    name: str
    module: str
    class_name: str
    summary: str
    aliases: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()
    extra: str = ""
    remote: bool = False
    devices: tuple[str, ...] = ("cpu",)
    crf_executors: tuple[str, ...] = ("graph",)
    crf_switchable: bool = False
    warm_start: bool = False
    options: tuple[str, ...] = ()

    def supports(self, capability: str) -> bool:
        """Whether ``capability`` (``"warm_start"``, ``"crf_switchable"``, a device, a CRF
        executor or an option name) applies to this backend."""
        return bool(getattr(self, capability, False)) or capability in self.devices \
            or capability in self.crf_executors or capability in self.options


_PACKAGE = "convcrf_deploy.runtime.backends"

#: every backend, by registry name (the order is the order of ``--help``).
BACKENDS: dict[str, BackendSpec] = {spec.name: spec for spec in (
    BackendSpec(
        "torch", f"{_PACKAGE}.torch", "TorchBackend",
        "PyTorch checkpoints (.pt), unaries saved by torch.export (.pt2) or TorchScript, and "
        "the demo model; CRF on the fused native CPU path",
        aliases=("pytorch", "pt"), suffixes=(".pt", ".pth", ".pt2"), extra="torch",
        devices=("cpu", "cuda"), crf_executors=("torch",), crf_switchable=True, warm_start=True,
        options=("device", "threads", "warm_start", "allow_pickle")),
    BackendSpec(
        "onnxruntime", f"{_PACKAGE}.onnxrt", "OnnxRuntimeBackend",
        "exported .onnx files; the unary in ONNX Runtime, the CRF natively on the CPU",
        aliases=("onnx", "ort", "onnxrt"), suffixes=(".onnx",), extra="gpu",
        devices=("cpu", "cuda"), crf_executors=("native", "graph"), crf_switchable=True,
        warm_start=True,  # with the native CRF executor (the graph's iterations are fixed)
        options=("providers", "plugin_library", "threads", "crf_executor", "warm_start")),
    BackendSpec(
        "tensorrt", f"{_PACKAGE}.trt", "TensorRTBackend",
        "TensorRT engines (.engine/.plan/.trt) with the ConvCRF plugin (NVIDIA GPU)",
        aliases=("trt",), suffixes=(".engine", ".plan", ".trt"), extra="tensorrt",
        devices=("cuda",), crf_executors=("engine",), options=("plugin_library",)),
    BackendSpec(
        "triton", f"{_PACKAGE}.triton", "TritonBackend",
        "a model on a Triton Inference Server (--model is its name there; docs/serving.md)",
        extra="triton", remote=True, devices=("cpu", "cuda"), crf_executors=("graph",),
        options=("url", "protocol", "timeout")),
)}

#: accepted spelling -> registry name.
ALIASES: dict[str, str] = {alias: spec.name for spec in BACKENDS.values()
                           for alias in spec.aliases}

#: model file suffix -> registry name.
SUFFIXES: dict[str, str] = {suffix: spec.name for spec in BACKENDS.values()
                            for suffix in spec.suffixes}


def backend_spec(name: str) -> BackendSpec:
    """The :class:`BackendSpec` of ``name`` (an alias is accepted, any case); ``ValueError``
    listing the choices otherwise."""
    key = str(name).lower()
    key = ALIASES.get(key, key)
    if key not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return BACKENDS[key]


def backend_name_for(model: Any, backend: str | None = None) -> str:
    """The registry name of the backend to use for ``model`` (a path, ``"demo"`` or an
    in-memory model), honouring an explicit ``backend``; raises ``ValueError`` otherwise."""
    if backend is not None:
        return backend_spec(backend).name
    if not isinstance(model, (str, Path)):
        return "torch"  # an in-memory SegmentationModel
    if str(model) == "demo":
        return "torch"
    if Path(model).is_dir():
        raise ValueError(f"{str(model)!r} is a folder, not a model file; give the model's "
                         f"{'/'.join(SUFFIXES)} file, or 'demo'")
    suffix = Path(model).suffix.lower()
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    raise ValueError(f"cannot tell which backend runs {str(model)!r} from its suffix; use a "
                     f"{'/'.join(SUFFIXES)} file, 'demo', or name the backend (convcrf-run "
                     f"--backend, Segmenter(backend=...)): one of {', '.join(BACKENDS)}")


def backends_help() -> str:
    """``--backend``'s help: every backend with its one-line summary."""
    return "; ".join(f"{spec.name}: {spec.summary}" for spec in BACKENDS.values())
