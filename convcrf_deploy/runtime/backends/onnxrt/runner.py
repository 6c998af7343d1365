"""`OnnxRuntimeBackend`: the runtime backend for exported ``.onnx`` files."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ....crf.native import NativeCRF, NativeCRFUnavailable, argmax_classes
from ....crf.warm_start import WarmStartMeanField
from ....exported_model import extract_part, fixed_size_remedy, unary_logits_name
from ..base import (CRF_EXECUTOR_CHOICES, INPUT_NAME, OPTIONAL_OUTPUT_NAMES, OUTPUT_NAMES,
                    Backend, BackendUnavailableError, InputLimits)
from .loader import SessionLoader, import_onnxruntime
from ....ort_session import inference_session

log = logging.getLogger(__name__)


class OnnxRuntimeBackend(Backend):
    """Runs a graph exported by ``convcrf-export`` (input ``image`` float32 ``[N, 3, H, W]``
    RGB 0..255; outputs ``probabilities``, ``labels`` and, when exported, ``unary_labels``).

    The CRF runs natively (:class:`~convcrf_deploy.crf.native.NativeCRF`, the
    fused C library the PyTorch path uses) whenever the native library is present, the file
    carries the CRF's parameters and the session runs on the CPU provider alone: ONNX Runtime
    then runs only the unary part of the graph. Otherwise the graph's own CRF runs in ONNX
    Runtime: its ConvCRF nodes on our custom-op library ``libconvcrf_ort_ops`` when it is
    installed (which is also what lets ``plugin``-flavour files run here; docs/onnxruntime.md),
    else as the ``single-file`` flavour's standard-op function bodies (several times slower);
    the ``portable`` flavour is standard ops throughout. :meth:`describe` says which one and
    why. Both compute the same probabilities (within 1e-4;
    tests/runtime/backends/test_native_crf.py). With
    ``crf_enabled = False`` (``Segmenter(crf=False)``) only the unary part runs.

    The session is created on construction (so a bad file or provider fails early); the
    metadata comes from the file's ``convcrf.*`` metadata_props. Thread-safe (ONNX Runtime
    sessions and :class:`NativeCRF` are), except with ``warm_start``, whose calls are
    serialised. The stage calls (``infer_crf``) run the CRF cold, without the warm start.

    ``infer`` times the unary and the CRF apart (:attr:`Backend.last_stage_times`): with the
    native CRF, and with the graph's CRF on the CPU provider, which then runs as two sessions
    of the graph's parts (the same nodes; weights stored as external data are read into
    memory for them); on GPU providers the graph runs in one piece.

    Args:
        path: the ``.onnx`` file.
        providers: ``("cpu",)``, ``("cuda", "cpu")`` or ``("tensorrt", "cuda", "cpu")``.
        plugin_library: ConvCRF TensorRT plugin for ``plugin``-flavour graphs on the
            TensorRT provider.
        threads: intra-op threads of ONNX Runtime and the native CRF (``None``: all cores).
        crf_executor: ``"auto"`` (default), ``"native"`` (required: ``ValueError`` saying why
            when it cannot run) or ``"graph"``.
        spinning: idle ONNX Runtime threads busy-wait for the next run (see
            :class:`SessionLoader`; the unary session before the native CRF never spins).
        custom_ops: the custom-op library of the ConvCRF nodes (see :class:`SessionLoader`;
            default: the installed ``libconvcrf_ort_ops``; ``False``: none).
        warm_start: video mode: start each frame's mean-field from the previous frame's
            result (:class:`~convcrf_deploy.crf.WarmStartMeanField`) with
            ``warm_start_iterations`` iterations. Needs the native CRF executor (the graph's
            CRF runs the exported iteration count): ``ValueError`` saying why otherwise.
            Ignored for graphs without a CRF. Calls are then serialised (one stream's state).
        warm_start_iterations, warm_start_mix: see :class:`~convcrf_deploy.crf.WarmStartMeanField`.

    Example:
        >>> with OnnxRuntimeBackend("model.onnx") as backend:
        ...     out = backend.infer({"image": np.zeros((1, 3, 240, 320), np.float32)})
    """

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] = ("cpu",),
                 plugin_library: str | os.PathLike | None = None, threads: int | None = None,
                 crf_executor: str = "auto", spinning: bool = True,
                 custom_ops: str | os.PathLike | bool | None = None, warm_start: bool = False,
                 warm_start_iterations: int = 2, warm_start_mix: float = 0.5):
        if crf_executor not in CRF_EXECUTOR_CHOICES:
            raise ValueError(f"crf_executor must be one of {CRF_EXECUTOR_CHOICES}, got "
                             f"{crf_executor!r}")
        if warm_start and crf_executor == "graph":
            raise ValueError("warm start needs the native CRF executor (the graph's CRF runs "
                             "the exported number of iterations); use crf_executor 'native' "
                             "or 'auto'")
        self.loader = SessionLoader(path, providers, plugin_library, threads, spinning,
                                    custom_ops)
        self.session, model_file = self.loader()     # an ExportedModel, digest checked
        #: the exported file as read (:class:`~convcrf_deploy.exported_model.ExportedModel`).
        self.model_file = model_file
        model_proto, props = model_file.proto, model_file.props
        super().__init__(model_file.require_metadata())
        self.flavor = model_file.flavor
        self.threads = threads
        self.spinning = spinning
        #: the graph contains a ConvCRF (the export records its configuration).
        self.has_crf = model_file.has_crf_config
        inputs = [i.name for i in self.session.get_inputs()]
        if inputs != [INPUT_NAME]:
            raise ValueError(f"{self.loader.path.name} has inputs {inputs}; convcrf models "
                             f"take a single {INPUT_NAME!r} input. Was it exported by convcrf-export?")
        outputs = {o.name for o in self.session.get_outputs()}
        missing = [name for name in OUTPUT_NAMES if name not in outputs]
        if missing:
            raise ValueError(f"{self.loader.path.name} lacks output(s) {missing}")
        self.output_names = [*OUTPUT_NAMES, *(n for n in OPTIONAL_OUTPUT_NAMES if n in outputs)]
        self._model_proto = model_proto
        self._logits_name = unary_logits_name(model_proto)
        self._part_sessions: dict[str, Any] = {}
        self.native_crf: NativeCRF | None = None
        self._crf_executor, self.crf_executor_detail = self._choose_executor(props, crf_executor)
        #: with ``crf_enabled = False`` (Segmenter(crf=False)) only the unary part of the graph
        #: runs; without the unary logits' name the whole graph always runs (then Segmenter
        #: reports the graph's unary_labels, or the CRF's labels flagged as such).
        self.crf_switchable = self._logits_name is not None
        #: the stream state of the warm start (``None`` without one).
        self.warm_start: WarmStartMeanField | None = None
        if warm_start and self.has_crf:
            if self.native_crf is None:
                raise ValueError(f"{self.loader.path.name}: warm start needs the native CRF "
                                 f"executor, which cannot run here ({self.crf_executor_detail})")
            self.warm_start = WarmStartMeanField(self.native_crf, warm_start_iterations,
                                                 warm_start_mix)
        #: ``infer`` runs the unary and the CRF apart (and times each): with the native CRF,
        #: and with the graph's CRF on the CPU provider, as two sessions of the graph's parts
        #: (on a GPU provider the logits would cross to the host and back: one run there). Part
        #: sessions are built from bytes: weights stored as external data are read in first.
        self._runs_in_parts = self.has_crf and self._logits_name is not None and (
            self._crf_executor == "native" or self.loader.providers == ("cpu",))
        if self._runs_in_parts:
            # The unary session never spins: its idle threads would take the cores from the
            # CRF (native or the CRF part's session) that runs right after it.
            self._part_session("unary", spinning=False)
        log.info("%s: CRF executor %s (%s)", self.loader.path.name, self._crf_executor,
                 self.crf_executor_detail)

    def _choose_executor(self, props: dict[str, str], wanted: str) -> tuple[str, str | None]:
        if not self.has_crf:
            return "none", None
        if wanted == "graph":
            return "graph", f"the graph's CRF in ONNX Runtime ({self._crf_nodes()}; " \
                            "crf_executor='graph')"
        reason = None
        if self.loader.providers != ("cpu",):
            reason = f"providers {list(self.loader.providers)} (native CRF is CPU-only)"
        elif self._logits_name is None:
            reason = "the graph has no unary_labels output to find the unary logits by"
        else:
            try:
                self.native_crf = NativeCRF.from_onnx_props(props, self.threads)
            except NativeCRFUnavailable as exc:
                reason = str(exc)
        if reason is None:
            # "fp16" (whole graph) or "fp16-crf" (ConvCRF op I/O only): fp16 rounding either way
            self._check_native_against_graph((self.model_file.precision or "").startswith("fp16"))
            return "native", "libconvcrf_cpu (the fused native CPU path), unary in ONNX Runtime"
        if wanted == "native":
            raise ValueError(f"{self.loader.path.name}: the native CRF cannot run: {reason}")
        return "graph", f"the graph's CRF in ONNX Runtime ({self._crf_nodes()}): {reason}"

    def _crf_nodes(self) -> str:
        """What runs the graph's ConvCRF nodes, for :meth:`describe` and the stats."""
        if not self.model_file.crf_nodes:
            return "standard ONNX ops only"
        if self.loader.custom_ops_library is not None:
            return f"ConvCRF nodes on {self.loader.custom_ops_library.name}, the native kernels"
        if "tensorrt" in self.loader.providers:
            return "ConvCRF nodes on the TensorRT plugin"
        why = self.loader.custom_ops_missing.split(":")[0]  # its first clause
        return f"ConvCRF nodes as their standard-op function bodies: {why}"

    def _check_native_against_graph(self, fp16: bool) -> None:
        """Run the graph's CRF and the native one once on a small image (the graph's own size
        where its input is static; else 19 x 23 padded to the unary's input constraints, which
        the graph needs): the parameters in the metadata must be the ones in the
        graph (a file edited or damaged in one place only is refused, rather than silently
        giving other results than its graph). The criterion is the mean absolute difference
        of the probabilities: an fp16 graph differs from the fp32 native CRF by rounding
        (max errors up to 1e-1 on single pixels near ties), an edited parameter shifts the
        whole map."""
        small = self.metadata.padded_size(19, 23)
        batch, _, height, width = (d if isinstance(d, int) and d > 0 else default for d, default
                                   in zip(self.session.get_inputs()[0].shape, (1, 3, *small)))
        image = np.random.default_rng(0).uniform(0, 255, (batch, 3, height, width))
        image = image.astype(np.float32 if self.session.get_inputs()[0].type == "tensor(float)"
                             else np.float16)
        expected = self.session.run(["probabilities"], {INPUT_NAME: image})[0]
        logits = self._part_session("unary", spinning=False).run([self._logits_name],
                                                                 {INPUT_NAME: image})[0]
        tolerance = 2e-3 if fp16 else 1e-5
        error = float(np.abs(self.native_crf(logits.astype(np.float32), image.astype(np.float32))
                             - expected.astype(np.float32)).mean())
        if not error <= tolerance:
            raise ValueError(f"{self.loader.path.name}: the CRF parameters in its metadata "
                             f"disagree with its graph (mean difference {error:.2g}, more than "
                             f"{tolerance:g}): the file was edited or damaged; re-export the "
                             "model")

    def _part_session(self, part: str, spinning: bool | None = None):
        """A session of one part of the full graph (``"unary"``: image -> logits; ``"crf"``:
        logits, image -> probabilities), extracted in memory from the loaded file."""
        with self._activation_lock:  # created once, also when threads race to the first call
            if part not in self._part_sessions:
                self._part_sessions[part] = self._new_part_session(
                    part, self.spinning if spinning is None else spinning)
        return self._part_sessions[part]

    def _new_part_session(self, part: str, spinning: bool):
        if self._logits_name is None:
            raise ValueError(f"{self.loader.path.name}: cannot find the unary logits in the "
                             "graph (no unary_labels output)")
        inputs, outputs = {"unary": ([INPUT_NAME], [self._logits_name]),
                           "crf": ([self._logits_name, INPUT_NAME], ["probabilities"])}[part]
        if self.model_file.uses_external_data and self._model_proto is self.model_file.proto:
            self._model_proto = self.model_file.load_proto_with_data()   # once, for the parts
        extracted = extract_part(self._model_proto, inputs, outputs)
        import_onnxruntime()         # the one-line error when onnxruntime is missing
        return inference_session(extracted.SerializeToString(),
                                 self.loader.session_options(spinning),
                                 providers=self.session.get_providers())

    @property
    def crf_executor(self) -> str:
        return self._crf_executor

    @property
    def input_limits(self) -> InputLimits:
        """Sides (and the batch) the graph's ``image`` input fixes, e.g. a ``--static``
        export's ``[N, 3, 240, 320]``."""
        shape = self.session.get_inputs()[0].shape
        return InputLimits.from_shape(
            shape, f"the input shape of {self.loader.path.name}: "
                   f"{[d if isinstance(d, int) else '?' for d in shape]}",
            fixed_size_remedy(self.model_file.props))

    @property
    def thread_safe(self) -> bool:
        # The warm start keeps the previous frame: concurrent calls would mix streams.
        return self.warm_start is None

    def reset(self) -> None:
        """Forget per-stream state (the warm start's previous frame)."""
        if self.warm_start is not None:
            self.warm_start.reset()

    @property
    def providers(self) -> list[str]:
        """Execution providers the session actually uses, in priority order."""
        return self.session.get_providers()

    @property
    def stages(self) -> tuple[str, ...]:
        if self._logits_name is None:
            return ("full",)
        return ("unary", "crf", "full") if self.has_crf else ("unary", "full")

    def describe(self) -> dict[str, Any]:
        library = self.loader.custom_ops_library
        return {**super().describe(), "providers": self.providers, "threads": self.threads,
                "flavor": self.flavor, "model": str(self.loader.path),
                "custom_ops_library": str(library) if library is not None else None,
                "warm_start": self.warm_start is not None}

    @classmethod
    def check_available(cls) -> None:
        """onnxruntime, and onnx + onnxscript (the export of :meth:`from_model`) when torch
        is there to export with."""
        import_onnxruntime()
        try:
            import onnx  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailableError(
                f"exporting for ONNX Runtime needs onnx and onnxscript ({exc})") from exc

    @classmethod
    def from_model(cls, model: Any, folder: str | os.PathLike, *, flavor: str = "single-file",
                   fp16: bool = False, threads: int | None = None, device: str = "cpu",
                   crf_executor: str = "auto",
                   **_benchmark_options: Any) -> "OnnxRuntimeBackend":
        """Export ``model`` (a ``SegmentationModel``) to ``folder/model.onnx`` in ``flavor``
        (``"single-file"``, ``"portable"`` or, with ``libconvcrf_ort_ops`` installed,
        ``"plugin"``) and load it (CUDA provider when ``device`` is CUDA) with
        ``crf_executor``. Parity with PyTorch is the caller's check (the benchmark reports
        it)."""
        from ....export import FLAVORS, export_onnx

        if flavor not in FLAVORS:
            raise ValueError(f"flavor must be one of {list(FLAVORS)}, got {flavor!r}")
        path = Path(folder) / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(model, path, flavor=flavor, fp16=fp16, part="full", verify=False)
        providers = ("cuda", "cpu") if device.startswith("cuda") else ("cpu",)
        # spinning=False: the benchmark interleaves backends, and idle spinning threads would
        # slow the other backends' calls many times over.
        return cls(path, providers=providers, threads=threads, spinning=False,
                   crf_executor=crf_executor)

    def _activate(self) -> None:
        pass  # the session is created in __init__ so that errors surface at construction

    def _deactivate(self) -> None:
        self.reset()

    def _infer_unary(self, image: np.ndarray) -> np.ndarray:
        return self._part_session("unary").run([self._logits_name], {INPUT_NAME: image})[0]

    def _infer_crf(self, logits: np.ndarray, image: np.ndarray) -> np.ndarray:
        if self.native_crf is not None:
            return self.native_crf(logits, image)
        return self._part_session("crf").run(["probabilities"], {self._logits_name: logits,
                                                                INPUT_NAME: image})[0]

    def _infer(self, image: np.ndarray) -> dict[str, np.ndarray]:
        if self.crf_switchable and not self.last_crf_enabled:
            self.reset()  # a warm start is stale once the CRF skips frames
            with self._timed("unary"):
                logits = self._infer_unary(image)
                labels = argmax_classes(logits)
            shifted = logits - logits.max(axis=1, keepdims=True)
            probabilities = np.exp(shifted, out=shifted)
            probabilities /= probabilities.sum(axis=1, keepdims=True)
            return {"probabilities": probabilities, "labels": labels, "unary_labels": labels}
        if not self._runs_in_parts:
            if self.has_crf:
                values = self.session.run(self.output_names, {INPUT_NAME: image})
            else:  # the whole graph is the unary (and its softmax)
                with self._timed("unary"):
                    values = self.session.run(self.output_names, {INPUT_NAME: image})
            return dict(zip(self.output_names, values))
        with self._timed("unary"):
            logits = self._infer_unary(image)
            unary_labels = argmax_classes(logits)
        with self._timed("crf"):
            if self.native_crf is None:
                probabilities = self._infer_crf(logits, image)
            else:
                crf = self.warm_start if self.warm_start is not None else self.native_crf
                probabilities = crf(logits, image)
            labels = argmax_classes(probabilities)
        return {"probabilities": probabilities, "labels": labels, "unary_labels": unary_labels}
