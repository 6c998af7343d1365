"""`TensorRTBackend`: the runtime backend for TensorRT engines built with the ConvCRF plugins."""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from ....metadata import ModelMetadata
from ....tensorrt import import_tensorrt
from ....tensorrt._modules import import_pycuda_driver
from ....tensorrt import PluginLibraryError
from ..base import INPUT_NAME, Backend, BackendUnavailableError, InputLimits
from .loader import BufferPool, EngineLoader

log = logging.getLogger(__name__)


class TensorRTBackend(Backend):
    """Runs a TensorRT engine (or an exported ONNX file, built and cached on first use).

    Input ``image`` float32 ``[N, 3, H, W]`` RGB 0..255 within the engine's optimisation profile;
    outputs ``probabilities`` float32 ``[N, C, H, W]``, ``labels`` int64 ``[N, H, W]`` and
    ``unary_labels`` when the engine has it. One CUDA stream; input and outputs go through
    pinned host buffers with asynchronous copies; buffers are reallocated only when a frame is
    larger than every earlier one.

    Metadata comes from ``metadata=``, else the sidecar ``<engine>.json`` written by
    ``convcrf-build``, else the ONNX file's metadata_props, else generic class names.

    Args:
        engine_or_onnx_path: ``.engine``/``.plan`` file or ``.onnx`` export.
        plugin_library: ``libconvcrf_trt_plugin.so`` (default: ``$CONVCRF_TRT_PLUGIN`` or the
            installed copy).
        metadata: overrides the stored metadata.
        device: CUDA device index.
        **build_options: for ONNX input, passed to ``build_engine`` (``min_shape``,
            ``opt_shape``, ``max_shape``, ``workspace_mb``, ``timing_cache``).

    Example:
        >>> with TensorRTBackend("model.engine") as backend:
        ...     out = backend.infer({"image": np.zeros((1, 3, 480, 640), np.float32)})
    """

    name = "tensorrt"
    #: one execution context and one set of buffers: calls are serialised.
    thread_safe = False

    def __init__(self, engine_or_onnx_path: str | os.PathLike,
                 plugin_library: str | os.PathLike | None = None,
                 metadata: ModelMetadata | None = None, device: int = 0, **build_options: Any):
        self.loader = EngineLoader(engine_or_onnx_path, plugin_library, build_options)
        self.info = self.loader()  # fails early: missing TensorRT, plugin or a bad engine
        if metadata is None:
            metadata = self.loader.metadata(self.info.path)
        if metadata is None:
            count = self.info.num_classes or 1
            log.warning("%s has no metadata sidecar (%s.json): using generic class names; build "
                        "it with convcrf-build to keep the exported class names and palette",
                        self.info.path.name, self.info.path.name)
            metadata = ModelMetadata.for_classes([f"class_{i}" for i in range(count)])
        super().__init__(metadata)
        self.device = device
        self._driver = None
        self._cuda_context = None
        self._stream = None
        self._context = None
        self._buffers: BufferPool | None = None

    @property
    def crf_executor(self) -> str:
        return "engine" if self.has_crf else "none"

    def describe(self):
        return {**super().describe(), "device": self.device, "engine": str(self.info.path)}

    @classmethod
    def check_available(cls) -> None:
        """tensorrt and pycuda (with a usable GPU)."""
        import_tensorrt()
        import_pycuda_driver()

    @classmethod
    def from_model(cls, model, folder, *, flavor: str = "single-file", fp16: bool = False,
                   sizes=((320, 240),), batch: int = 1, **_benchmark_options):
        """Export ``model`` (``portable`` is exported as ``single-file``: TensorRT runs our
        plugin for the ConvCRF nodes) and build an engine whose profile covers ``sizes``
        (``[(width, height)]``) at ``batch``."""
        from pathlib import Path

        from ....export import export_onnx

        widths, heights = [s[0] for s in sizes], [s[1] for s in sizes]
        shapes = {"min_shape": f"{batch}x3x{min(heights)}x{min(widths)}",
                  "opt_shape": f"{batch}x3x{max(heights)}x{max(widths)}",
                  "max_shape": f"{batch}x3x{max(heights)}x{max(widths)}"}
        path = Path(folder) / "model.trt.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(model, path, flavor="plugin" if flavor == "plugin" else "single-file",
                    fp16=fp16, part="full", verify=False)
        try:
            return cls(path, **shapes)
        except PluginLibraryError as exc:  # TensorRT is there but our plugin is not
            raise BackendUnavailableError(str(exc)) from exc

    @property
    def output_names(self) -> list[str]:
        return list(self.info.output_names)

    def _activate(self) -> None:
        driver = import_pycuda_driver()
        # The primary context is the one TensorRT (CUDA runtime API) uses too.
        self._cuda_context = driver.Device(self.device).retain_primary_context()
        self._cuda_context.push()
        try:
            self._driver = driver
            self._stream = driver.Stream()
            self._context = self.info.engine.create_execution_context()
            if self._context is None:
                raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")
            self._buffers = BufferPool(lambda n: driver.pagelocked_empty(n, np.uint8), driver.mem_alloc)
        except BaseException:
            self._cuda_context.pop()
            raise

    def _deactivate(self) -> None:
        try:
            if self._stream is not None:
                self._stream.synchronize()
            if self._buffers is not None:
                self._buffers.release()
        finally:
            self._context = self._buffers = self._stream = None
            if self._cuda_context is not None:
                self._cuda_context.pop()
                self._cuda_context = None

    def profile_range(self) -> tuple[tuple[int, ...], ...]:
        """``(min, opt, max)`` shapes of ``image`` in the engine's first profile."""
        return tuple(tuple(int(v) for v in s)
                     for s in self.info.engine.get_tensor_profile_shape(INPUT_NAME, 0))

    @property
    def input_limits(self) -> InputLimits:
        """The sizes and batches of the engine's optimisation profile."""
        (n0, _, h0, w0), _, (n1, _, h1, w1) = self.profile_range()
        return InputLimits((h0, w0), (h1, w1), batch=(n0, n1),
                           origin=f"the optimisation profile of {self.info.path.name}",
                           widen="rebuild the engine with convcrf-build --min/--max covering "
                                 "the frame sizes (and batch 1)")

    def _infer(self, image: np.ndarray) -> dict[str, np.ndarray]:
        driver, context, stream, buffers = self._driver, self._context, self._stream, self._buffers
        if not context.set_input_shape(INPUT_NAME, tuple(image.shape)):
            lo, opt, hi = ("x".join(map(str, s)) for s in self.profile_range())
            raise ValueError(f"image shape {'x'.join(map(str, image.shape))} is outside the engine's "
                             f"profile (min {lo}, opt {opt}, max {hi}); resize the input or rebuild "
                             "with convcrf-build --min/--max covering it")
        host, device_ptr = buffers.get(INPUT_NAME, image.shape, self.info.input_dtype)
        np.copyto(host, image, casting="unsafe")  # fp16 engines take fp16 input
        driver.memcpy_htod_async(device_ptr, host, stream)
        context.set_tensor_address(INPUT_NAME, device_ptr)
        hosts = {}
        for name in self.info.output_names:
            shape = tuple(context.get_tensor_shape(name))
            out_host, out_ptr = buffers.get(name, shape, self.info.output_dtypes[name])
            context.set_tensor_address(name, out_ptr)
            hosts[name] = (out_host, out_ptr)
        if not context.execute_async_v3(stream.handle):
            raise RuntimeError("TensorRT enqueue failed (see the TensorRT log above)")
        for out_host, out_ptr in hosts.values():
            driver.memcpy_dtoh_async(out_host, out_ptr, stream)
        stream.synchronize()
        # Copies: the pinned buffers are reused by the next call.
        outputs = {"probabilities": np.array(hosts["probabilities"][0], dtype=np.float32)}
        for name in self.info.output_names[1:]:
            outputs[name] = np.array(hosts[name][0], dtype=np.int64)
        return outputs
