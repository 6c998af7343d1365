"""`TritonBackend`: the runtime backend whose model runs on a Triton Inference Server."""
from __future__ import annotations

from typing import Any

import numpy as np

from ....metadata import ONNX_KEYS, ModelMetadata
from ..base import Backend, InputLimits
from .loader import ClientLoader

_NUMPY = {"UINT8": np.uint8, "FP32": np.float32, "FP16": np.float16}


class TritonBackend(Backend):
    """Sends frames to a model served by Triton (a repository written by ``convcrf-triton``).

    ``infer`` takes ``image`` float32 ``[N, 3, H, W]`` RGB 0..255 like every backend, converts
    it to the server model's input type (uint8 frames are rounded and clipped to 0..255), sends
    batches of at most the model's ``max_batch_size``, and returns ``labels`` int64
    ``[N, H, W]``, ``unary_labels`` when the model has them, and ``probabilities`` float32
    ``[N, C, H, W]`` only with ``probabilities=True`` (4 x C bytes per pixel over the network:
    a labels-only client does not ask for them). Metadata (classes, palette, resize policy,
    input size) comes from the model config's ``convcrf.*`` parameters, so ``Segmenter``
    pre- and post-processing, the HUD, stats and timestamps work as with local backends;
    ``last_inference_time`` includes the network round trip.

    Args:
        model: the model's name on the server (``convcrf-triton --name``, default ``convcrf``).
        url: ``HOST:PORT`` (HTTP default port 8000, gRPC 8001).
        protocol: ``"http"`` or ``"grpc"``.
        timeout: seconds allowed for connecting and for each request; a stalled server raises
            :class:`TritonRequestError` (an ``OSError``) instead of hanging.
        model_version: ``""``: the server's latest.
        probabilities: also request ``probabilities``.

    Raises (on construction):
        BackendUnavailableError: tritonclient is not installed.
        TritonRequestError: the server is unreachable, not live, or the model not ready.
        ValueError: bad url/protocol/timeout, or a model without the convcrf interface.

    Not thread-safe: a client connection belongs to one thread; give each camera thread its
    own ``TritonBackend`` (the server batches their requests together).
    """

    name = "triton"

    def __init__(self, model: str = "convcrf", url: str = "127.0.0.1:8000", protocol: str = "http",
                 timeout: float = 10.0, model_version: str = "", probabilities: bool = False):
        self.loader = ClientLoader(str(model), url, protocol, timeout, model_version)
        self.client, self.info = self.loader()
        try:
            super().__init__(ModelMetadata.from_onnx_props(self.info.parameters))
        except ValueError as exc:
            self.client.close()
            raise ValueError(f"{self.loader.describe()}: {exc} (its config.pbtxt lacks the "
                             "convcrf.* parameters: write the repository with convcrf-triton)") from None
        self.has_crf = ONNX_KEYS["crf_config"] in self.info.parameters
        wanted = ["labels", "unary_labels"] + (["probabilities"] if probabilities else [])
        self.output_names = [n for n in wanted if n in self.info.output_names]
        if probabilities and "probabilities" not in self.output_names:
            self.client.close()
            raise ValueError(f"{self.loader.describe()} has no 'probabilities' output")
        self.input_dtype = _NUMPY[self.info.input_datatype]

    @property
    def input_limits(self) -> InputLimits:
        """The server model's ``image`` dims (fixed for a fixed-size engine), its
        ``max_batch_size`` and ``convcrf.max_pixels`` (Python-backend repositories)."""
        return self.info.input_limits(self.loader.describe())

    def _activate(self) -> None:
        if self.client is None:
            self.client, self.info = self.loader()

    def _deactivate(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.close()

    def _request(self, image: np.ndarray) -> dict[str, np.ndarray]:
        module = self.loader.module
        if self.input_dtype == np.uint8:
            image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        else:
            image = image.astype(self.input_dtype, copy=False)
        tensor = module.InferInput("image", list(image.shape), self.info.input_datatype)
        tensor.set_data_from_numpy(np.ascontiguousarray(image))
        outputs = [module.InferRequestedOutput(n) for n in self.output_names]
        kwargs: dict[str, Any] = {"model_version": self.loader.model_version, "outputs": outputs}
        result = self.loader.call(self.client, "infer", self.loader.model_name, [tensor], **kwargs)
        values = {n: result.as_numpy(n) for n in self.output_names}
        for name in ("labels", "unary_labels"):
            if name in values:
                values[name] = values[name].astype(np.int64, copy=False)
        if "probabilities" in values:
            values["probabilities"] = values["probabilities"].astype(np.float32, copy=False)
        return values

    def _infer(self, image: np.ndarray) -> dict[str, np.ndarray]:
        if self.client is None:
            self.activate()
        step = self.info.max_batch_size or image.shape[0]
        if image.shape[0] <= step:
            return self._request(image)
        parts = [self._request(image[i:i + step]) for i in range(0, image.shape[0], step)]
        return {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}
