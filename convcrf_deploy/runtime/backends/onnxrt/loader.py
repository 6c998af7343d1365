"""How to obtain an ONNX Runtime session for an exported model.

Short provider names map to ONNX Runtime's: ``"cpu"``, ``"cuda"``, ``"tensorrt"``. Graphs of
the ``plugin`` export flavour contain ``trt.plugins`` nodes that only TensorRT (with our
plugin library) can run; :class:`SessionLoader` refuses them up front on other providers with
a message saying what to do, instead of ONNX Runtime's opaque "could not find a kernel".
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ....install import install_hint
from ....tensorrt.plugin import PLUGIN_ENV
from ..base import BackendUnavailableError

#: short name -> ONNX Runtime execution provider.
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}

#: domain of the custom ConvCRF nodes (docs/ops.md).
PLUGIN_DOMAIN = "trt.plugins"


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(
            "onnxruntime is not installed: `pip install onnxruntime` (CPU) or "
            f"{install_hint('gpu')} (CUDA/TensorRT providers)") from exc
    return onnxruntime


def needs_tensorrt_plugin(model_proto) -> bool:
    """True when the graph has ``trt.plugins`` nodes without a model-local function body
    (the ``plugin`` flavour); the ``single-file`` flavour defines them as functions."""
    local = {(f.domain, f.name) for f in model_proto.functions}
    return any(node.domain == PLUGIN_DOMAIN and (node.domain, node.op_type) not in local
               for node in model_proto.graph.node)


class SessionLoader:
    """Builds an ``onnxruntime.InferenceSession``.

    Args:
        path: the ``.onnx`` file.
        providers: short provider names in priority order, e.g. ``("cpu",)``,
            ``("cuda", "cpu")`` or ``("tensorrt", "cuda", "cpu")``.
        plugin_library: the ConvCRF TensorRT plugin (``libconvcrf_trt_plugin.so``), handed to
            the TensorRT provider as ``trt_extra_plugin_lib_paths``; defaults to
            ``$CONVCRF_TRT_PLUGIN``.
        threads: intra-op threads (``None``: ONNX Runtime's default, all cores).
        spinning: idle intra-op threads busy-wait for the next run (ONNX Runtime's default:
            lowest latency, but they hold the cores for a while after each run, which slows
            PyTorch or other work interleaved with the session 10-30x on a small CPU).
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] = ("cpu",),
                 plugin_library: str | os.PathLike | None = None, threads: int | None = None,
                 spinning: bool = True):
        self.path = Path(path)
        unknown = [p for p in providers if p not in PROVIDERS]
        if not providers or unknown:
            raise ValueError(f"providers must be a non-empty sequence of {sorted(PROVIDERS)}, "
                             f"got {tuple(providers)!r}")
        self.providers = tuple(providers)
        plugin_library = plugin_library or os.environ.get(PLUGIN_ENV)
        self.plugin_library = Path(plugin_library) if plugin_library else None
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads = threads
        self.spinning = spinning

    def __call__(self):
        ort = import_onnxruntime()
        if not self.path.exists():
            raise FileNotFoundError(f"ONNX model {str(self.path)!r} does not exist")
        model_proto = read_onnx(self.path)
        available = set(ort.get_available_providers())
        missing = [p for p in self.providers if PROVIDERS[p] not in available]
        if missing:
            raise BackendUnavailableError(
                f"ONNX Runtime provider(s) {missing} are not available in this onnxruntime "
                f"(available: {sorted(available)}); install {install_hint('gpu')} "
                "(onnxruntime-gpu, with CUDA and TensorRT) or use providers=('cpu',)")
        if needs_tensorrt_plugin(model_proto):
            if "tensorrt" not in self.providers:
                raise BackendUnavailableError(
                    f"{self.path.name} is a 'plugin'-flavour export: its ConvCRF nodes run only "
                    "in TensorRT with the ConvCRF plugin. Export the 'single-file' or "
                    "'portable' flavour for ONNX Runtime on CPU/CUDA (convcrf-export --flavor "
                    "single-file), or run it with providers=('tensorrt', 'cuda', 'cpu') and "
                    "--plugin LIB")
            if self.plugin_library is None or not self.plugin_library.exists():
                raise BackendUnavailableError(
                    f"{self.path.name} needs the ConvCRF TensorRT plugin library: pass "
                    "plugin_library= (--plugin) or set CONVCRF_TRT_PLUGIN; "
                    f"got {str(self.plugin_library) if self.plugin_library else 'none'}")
        options = ort.SessionOptions()
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        if not self.spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        provider_list = []
        for name in self.providers:
            if name == "tensorrt" and self.plugin_library is not None:
                provider_list.append((PROVIDERS[name], {
                    "trt_extra_plugin_lib_paths": str(self.plugin_library)}))
            else:
                provider_list.append(PROVIDERS[name])
        try:
            session = ort.InferenceSession(str(self.path), sess_options=options,
                                           providers=provider_list)
        except Exception as exc:    # onnxruntime's pybind errors share no useful base class
            if type(exc).__name__ not in ("InvalidProtobuf", "InvalidGraph", "Fail",
                                          "NoSuchFile", "InvalidArgument"):
                raise
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ValueError(f"ONNX Runtime cannot load {self.path}: {first_line[:300]}") from None
        return session, model_proto


def read_onnx(path: Path):
    """The ``ModelProto`` of ``path`` without external data (only the graph is inspected),
    its digest checked (:func:`convcrf_deploy.files.check_onnx_digest`).

    Raises:
        ValueError: the file is empty, truncated, corrupt or not ONNX; ``DamagedFileError``
            (a ``ValueError``) when its graph does not match the digest written at export.
    """
    import onnx
    from google.protobuf.message import DecodeError

    from ....files import check_onnx_digest

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
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{path} is not a readable ONNX model (truncated, corrupt or another "
                         f"kind of file: {first_line[:200]}); export it again "
                         "(convcrf-export)") from None
    if not model_proto.graph.node and not model_proto.graph.output:
        raise ValueError(f"{path} is not an ONNX model (it holds no graph: truncated, corrupt "
                         "or another kind of file); export it again (convcrf-export)")
    check_onnx_digest(model_proto, path)
    return model_proto
