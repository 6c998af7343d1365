"""`TorchBackend`: runs a PyTorch ``SegmentationModel`` under ``torch.inference_mode``."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..base import Backend, InputLimits
from .loader import import_torch, load_segmentation_model


class TorchBackend(Backend):
    """PyTorch backend.

    Args:
        model: ``"demo"`` (the built-in model), a checkpoint path, or a ``SegmentationModel``.
        device: ``"cpu"`` or ``"cuda"``.
        crf: run the model's ConvCRF (``False``: softmax of the unary; really skipped, so
            the latency shows the CRF's cost). Changeable later through :attr:`crf_enabled`.
        warm_start: video mode: initialise mean-field from the previous frame
            (:class:`WarmStartMeanField`) with ``warm_start_iterations`` iterations.
        warm_start_iterations, warm_start_mix: see :class:`WarmStartMeanField`.
        threads: torch intra-op threads (``None``: torch's default).

    Outputs: ``probabilities`` [N, C, H, W] f32, ``labels`` and ``unary_labels`` [N, H, W] i64.
    Thread-safe (PyTorch inference is); with ``warm_start`` the calls are serialised, since
    the warm start carries one stream's previous frame.
    """

    name = "torch"
    crf_switchable = True

    def __init__(self, model: Any = "demo", device: str = "cpu", crf: bool = True,
                 warm_start: bool = False, warm_start_iterations: int = 2,
                 warm_start_mix: float = 0.5, threads: int | None = None,
                 allow_pickle: bool = False):
        self.torch = import_torch()
        if threads is not None:
            self.torch.set_num_threads(int(threads))
        self.device = device
        self.model = load_segmentation_model(model, device, allow_pickle=allow_pickle)
        super().__init__(self.model.metadata)
        self.crf_enabled = bool(crf)
        self.warm_start = None
        if warm_start and self.model.crf is not None:
            from .warm_start import WarmStartMeanField

            self.warm_start = WarmStartMeanField(self.model.crf, warm_start_iterations,
                                                 warm_start_mix)

    @property
    def has_crf(self) -> bool:
        return self.model.crf is not None

    @property
    def input_limits(self) -> InputLimits:
        """A unary saved as a ``torch.export`` program of one fixed size takes only that size,
        as does a network the constraint probe found to run at its ``input_size`` only; any
        other network, or a program with dynamic shapes: any size."""
        from ....model.unary_files import ProgramUnary, _static_size
        unary = getattr(self.model, "unary", None)
        size = _static_size(unary) if isinstance(unary, ProgramUnary) else None
        if size is not None:
            return InputLimits(size, size, origin=f"the torch.export program {unary.source}",
                               widen="export the unary again with dynamic shapes "
                                     "(torch.export.Dim for height and width)")
        size = getattr(self.model, "fixed_input_size", None)   # found by the constraint probe
        if size is not None:
            return InputLimits(size, size, origin="the unary network, which runs at its "
                               "input_size only", widen="make the network size-independent "
                               "(e.g. pool before its Linear layers)")
        return InputLimits()

    @property
    def thread_safe(self) -> bool:
        # The warm start keeps the previous frame: concurrent calls would mix streams.
        return self.warm_start is None

    @property
    def crf_executor(self) -> str:
        if self.model.crf is None:
            return "none"
        from .... import _native

        native = self.device == "cpu" and _native.cpu_library() is not None \
            and self.model.crf.implementation != "reference"
        return "native" if native else "torch"

    @property
    def stages(self) -> tuple[str, ...]:
        return ("unary", "crf", "full") if self.model.crf is not None else ("unary", "full")

    def describe(self):
        return {**super().describe(), "device": self.device,
                "threads": self.torch.get_num_threads(), "warm_start": self.warm_start is not None}

    @classmethod
    def from_model(cls, model, folder=None, *, device: str = "cpu", threads: int | None = None,
                   **_benchmark_options):
        """The model as it is (``folder`` unused)."""
        return cls(model, device=device, threads=threads)

    def reset(self) -> None:
        """Forget per-stream state (the warm start's previous frame)."""
        if self.warm_start is not None:
            self.warm_start.reset()

    def _activate(self) -> None:
        pass

    def _deactivate(self) -> None:
        self.reset()

    def _logits(self, x):
        logits = self.model.forward_unary(x)
        if logits.shape[-2:] != x.shape[-2:]:
            logits = self.torch.nn.functional.interpolate(
                logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits

    def _infer_unary(self, image: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            return self._logits(torch.from_numpy(image).to(self.device)).float().cpu().numpy()

    def _infer_crf(self, logits: np.ndarray, image: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(image).to(self.device)
            z = torch.from_numpy(logits).to(self.device)
            return self.model.crf(z, x).float().cpu().numpy()

    def _synchronize(self) -> None:
        """Wait for queued CUDA work, so that a stage's time is its own."""
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize(self.device)

    def _infer(self, image: np.ndarray) -> dict[str, np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(image).to(self.device)
            with self._timed("unary"):
                logits = self._logits(x)
                # max().indices, not argmax(): on CPU, argmax over the class axis of NCHW
                # takes ~8x longer (19 ms vs 2.5 ms at 320x240) and dominated the unary's time.
                unary_labels = logits.max(1).indices
                self._synchronize()
            if self.last_crf_enabled and self.model.crf is not None:
                with self._timed("crf"):
                    if self.warm_start is not None:
                        probabilities = self.warm_start(logits, x)
                    else:
                        probabilities = self.model.crf(logits, x)
                    labels = probabilities.max(1).indices
                    self._synchronize()
            else:
                if self.warm_start is not None:
                    self.warm_start.reset()  # stale once frames are skipped by the CRF
                probabilities = torch.softmax(logits.float(), dim=1)
                labels = probabilities.max(1).indices
            return {"probabilities": probabilities.float().cpu().numpy(),
                    "labels": labels.cpu().numpy(),
                    "unary_labels": unary_labels.cpu().numpy()}
