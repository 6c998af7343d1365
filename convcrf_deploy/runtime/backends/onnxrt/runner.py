"""`OnnxRuntimeBackend`: the runtime backend for exported ``.onnx`` files."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from ....metadata import ONNX_KEYS, ModelMetadata
from ..base import INPUT_NAME, OPTIONAL_OUTPUT_NAMES, OUTPUT_NAMES, Backend
from .loader import SessionLoader


class OnnxRuntimeBackend(Backend):
    """Runs a graph exported by ``convcrf-export`` (input ``image`` float32 ``[N, 3, H, W]``
    RGB 0..255; outputs ``probabilities``, ``labels`` and, when exported, ``unary_labels``).

    The session is created on construction (so a bad file or provider fails early); the
    metadata comes from the file's ``convcrf.*`` metadata_props.

    Args:
        path: the ``.onnx`` file.
        providers: ``("cpu",)``, ``("cuda", "cpu")`` or ``("tensorrt", "cuda", "cpu")``.
        plugin_library: ConvCRF TensorRT plugin for ``plugin``-flavour graphs.
        threads: intra-op threads (``None``: all cores).

    Example:
        >>> with OnnxRuntimeBackend("model.onnx") as backend:
        ...     out = backend.infer({"image": np.zeros((1, 3, 240, 320), np.float32)})
    """

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] = ("cpu",),
                 plugin_library: str | os.PathLike | None = None, threads: int | None = None):
        self.loader = SessionLoader(path, providers, plugin_library, threads)
        self.session, model_proto = self.loader()
        props = {p.key: p.value for p in model_proto.metadata_props}
        super().__init__(ModelMetadata.from_onnx_props(props))
        self.flavor = props.get("convcrf.flavor")
        #: the graph contains a ConvCRF (the export records its configuration).
        self.has_crf = ONNX_KEYS["crf_config"] in props
        inputs = [i.name for i in self.session.get_inputs()]
        if inputs != [INPUT_NAME]:
            raise ValueError(f"{self.loader.path.name} has inputs {inputs}; convcrf models "
                             f"take a single {INPUT_NAME!r} input. Was it exported by convcrf-export?")
        outputs = {o.name for o in self.session.get_outputs()}
        missing = [name for name in OUTPUT_NAMES if name not in outputs]
        if missing:
            raise ValueError(f"{self.loader.path.name} lacks output(s) {missing}")
        self.output_names = [*OUTPUT_NAMES, *(n for n in OPTIONAL_OUTPUT_NAMES if n in outputs)]

    @property
    def providers(self) -> list[str]:
        """Execution providers the session actually uses, in priority order."""
        return self.session.get_providers()

    def _activate(self) -> None:
        pass  # the session is created in __init__ so that errors surface at construction

    def _deactivate(self) -> None:
        pass

    def _infer(self, image: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(self.output_names, {INPUT_NAME: image})
        return dict(zip(self.output_names, values))
