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

from ....exported_model import ExportedModel
from ....install import install_hint
from ....tensorrt.plugin import PLUGIN_ENV
from ..base import BackendUnavailableError

#: short name -> ONNX Runtime execution provider.
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(
            "onnxruntime is not installed: `pip install onnxruntime` (CPU) or "
            f"{install_hint('gpu')} (CUDA/TensorRT providers)") from exc
    return onnxruntime


class SessionLoader:
    """Builds an ``onnxruntime.InferenceSession`` for an exported file, read and checked by
    :meth:`convcrf_deploy.exported_model.ExportedModel.open` first; calling the loader returns
    ``(session, ExportedModel)``.

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
        # The one reader of exported files: digest, metadata against graph, then ONNX Runtime.
        model = ExportedModel.open(self.path)
        available = set(ort.get_available_providers())
        missing = [p for p in self.providers if PROVIDERS[p] not in available]
        if missing:
            raise BackendUnavailableError(
                f"ONNX Runtime provider(s) {missing} are not available in this onnxruntime "
                f"(available: {sorted(available)}); install {install_hint('gpu')} "
                "(onnxruntime-gpu, with CUDA and TensorRT) or use providers=('cpu',)")
        if model.needs_tensorrt_plugin:
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
        return session, model
