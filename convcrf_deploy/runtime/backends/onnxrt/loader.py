"""How to obtain an ONNX Runtime session for an exported model.

Short provider names map to ONNX Runtime's: ``"cpu"``, ``"cuda"``, ``"tensorrt"``. The
ConvCRF nodes of an export (``trt.plugins::ConvCRFKernel`` / ``ConvCRFMessagePassing``) run
in ONNX Runtime on our custom-op library ``libconvcrf_ort_ops`` (docs/onnxruntime.md), which
:class:`SessionLoader` registers with every session when it is installed: the ``plugin``
flavour needs it, and the ``single-file`` flavour's nodes then run on it instead of their
standard-op function bodies. A ``plugin``-flavour file without the library is refused up front
with a message saying how to get it, instead of ONNX Runtime's opaque "could not find a
kernel". With the TensorRT provider the nodes are TensorRT's (our TensorRT plugin) instead.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from .... import _native
from ....errors import describe_error
from ....exported_model import ExportedModel
from ....install import install_hint
from ....tensorrt.plugin import PLUGIN_ENV
from ..base import BackendUnavailableError
from ....ort_session import inference_session

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
        threads: intra-op threads (``None``: ONNX Runtime's default, all cores), also the
            worker threads of the custom ops' native kernels (session config entry
            ``convcrf.num_threads``; ``None``: every CPU the process may use).
        spinning: idle intra-op threads busy-wait for the next run (ONNX Runtime's default:
            lowest latency, but they hold the cores for a while after each run, which slows
            PyTorch or other work interleaved with the session 10-30x on a small CPU).
        custom_ops: the ONNX Runtime custom-op library of the ConvCRF nodes: ``None`` (default)
            registers the installed ``libconvcrf_ort_ops`` (its CUDA variant when the providers
            include ``"cuda"`` and it is installed) when there is one; a path registers that
            file; ``False`` registers none. Not used with the ``"tensorrt"`` provider, whose
            ConvCRF nodes are the TensorRT plugin's.

    Attributes:
        custom_ops_library: the library registered with the sessions (``Path``), or ``None``.
        custom_ops_missing: why none is registered (``""`` when one is).

    Raises:
        ValueError: invalid providers or threads, or ``custom_ops`` names no file.
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] = ("cpu",),
                 plugin_library: str | os.PathLike | None = None, threads: int | None = None,
                 spinning: bool = True, custom_ops: str | os.PathLike | bool | None = None):
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
        self.custom_ops_library, self.custom_ops_missing = self._custom_ops(custom_ops)

    def _custom_ops(self, wanted) -> tuple[Path | None, str]:
        if wanted is False:
            return None, "custom_ops=False was given"
        if "tensorrt" in self.providers:
            return None, "the TensorRT provider runs them with the TensorRT plugin"
        if wanted is not None and wanted is not True:
            path = Path(wanted).expanduser()
            if not path.is_file():
                raise ValueError(f"custom_ops={str(wanted)!r} is not a file; pass the path of "
                                 "libconvcrf_ort_ops (convcrf_deploy.ort_ops_library())")
            return path, ""
        if "cuda" in self.providers:
            try:
                return Path(_native.ort_ops_library(cuda=True)), ""
            except _native.NativeError:
                pass  # the CPU variant below: ONNX Runtime copies the tensors to it
        try:
            return Path(_native.ort_ops_library()), ""
        except _native.NativeError as exc:
            return None, str(exc)

    def session_options(self, spinning: bool | None = None):
        """``onnxruntime.SessionOptions`` with the threads, spinning policy and custom-op
        library of this loader (also used for sessions of parts of the graph).

        Raises:
            BackendUnavailableError: ONNX Runtime refuses the custom-op library (too old an
                ONNX Runtime, a damaged file).
        """
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        if not (self.spinning if spinning is None else spinning):
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.custom_ops_library is not None:
            if self.threads is not None:  # read when the library registers: set it first
                options.add_session_config_entry(_native.ORT_OPS_THREADS_KEY, str(self.threads))
            try:
                options.register_custom_ops_library(str(self.custom_ops_library))
            except Exception as exc:  # onnxruntime's pybind errors share no useful base class
                raise BackendUnavailableError(describe_error(
                    exc, f"ONNX Runtime {ort.__version__} cannot register the ConvCRF custom-op "
                    f"library {self.custom_ops_library}", "it needs ONNX Runtime >= 1.16 and "
                    "libconvcrf_cpu beside it (reinstall with `pip install --force-reinstall "
                    ".`)")) from None
        return options

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
        if model.needs_custom_ops:
            self._check_plugin_flavour_can_run()
        options = self.session_options()
        provider_list = []
        for name in self.providers:
            if name == "tensorrt" and self.plugin_library is not None:
                provider_list.append((PROVIDERS[name], {
                    "trt_extra_plugin_lib_paths": str(self.plugin_library)}))
            else:
                provider_list.append(PROVIDERS[name])
        try:
            session = inference_session(self.path, options, providers=provider_list)
        except Exception as exc:    # onnxruntime's pybind errors share no useful base class
            if type(exc).__name__ not in ("InvalidProtobuf", "InvalidGraph", "Fail",
                                          "NoSuchFile", "InvalidArgument", "RuntimeException"):
                raise
            session = self._from_memory(model, options, provider_list) \
                if model.uses_external_data else None
            if session is None:
                raise ValueError(describe_error(exc, f"ONNX Runtime {ort.__version__} cannot "
                                                f"load {self.path}")) from None
        return session, model

    @staticmethod
    def _from_memory(model: ExportedModel, options, provider_list):
        """A session on the model with its external data read in (``None`` when that fails
        too): ONNX Runtime cannot read every tensor from external data (new-user trial:
        "Cannot parse data from external tensors" for the small int64 constants that
        ``onnx.save(..., save_as_external_data=True, size_threshold=0)`` moves out), and our
        reader can. Models over protobuf's 2 GiB cannot be held in one message: None."""
        try:
            data = model.load_proto_with_data().SerializeToString()
            return inference_session(data, options, providers=provider_list)
        except Exception:           # noqa: BLE001 - the caller reports the first error
            return None

    def _check_plugin_flavour_can_run(self) -> None:
        """A ``plugin``-flavour graph: its ConvCRF nodes need our kernels registered."""
        if "tensorrt" in self.providers:
            if self.plugin_library is None or not self.plugin_library.exists():
                raise BackendUnavailableError(
                    f"{self.path.name} needs the ConvCRF TensorRT plugin library: pass "
                    "plugin_library= (--plugin) or set CONVCRF_TRT_PLUGIN; "
                    f"got {str(self.plugin_library) if self.plugin_library else 'none'}")
            return
        if self.custom_ops_library is None:
            raise BackendUnavailableError(
                f"{self.path.name} is a 'plugin'-flavour export: ONNX Runtime runs its ConvCRF "
                "nodes (domain trt.plugins) only with our custom-op library libconvcrf_ort_ops "
                f"registered, and it is not available: {self.custom_ops_missing}. This runtime "
                "registers it by itself once it is installed; in your own code: "
                "options.register_custom_ops_library(convcrf_deploy.ort_ops_library()). Or "
                "export the 'single-file' flavour (convcrf-export --flavor single-file), which "
                "runs in any ONNX Runtime")

