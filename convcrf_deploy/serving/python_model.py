"""The Triton Python-backend model of the CPU repository (``convcrf-triton`` without ``--engine``).

``tritonserver`` imports this through the repository's ``<name>/1/model.py`` (a two-line shim)
and calls :class:`TritonPythonModel`. It runs the exported ONNX graph next to it
(``<name>/1/model.onnx``) with our runtime's ONNX Runtime backend, i.e. exactly what a local
``Segmenter`` runs, with the graph's interface:

* input ``image``: ``[N, 3, H, W]`` RGB 0..255, ``TYPE_UINT8`` or ``TYPE_FP32`` (the
  repository's choice; uint8 moves 4x fewer bytes), ``N`` up to ``max_batch_size``;
* outputs ``labels`` ``TYPE_INT64 [N, H, W]``, ``probabilities`` ``TYPE_FP32 [N, C, H, W]`` and
  ``unary_labels`` (when the graph has it); only the outputs a request asks for are returned
  (a client that needs labels does not pay for 4*C bytes per pixel).

Dynamic batching hands :meth:`TritonPythonModel.execute` several requests at once; requests
with the same frame size are concatenated and run as one batch. Every request is checked
(rank, channels, ``1 <= H, W``, ``H*W <= max_pixels``) and a bad one gets its own error
response while the others are served. Imports numpy, onnxruntime and convcrf_deploy's runtime;
no torch. Runs only inside tritonserver (``triton_python_backend_utils`` comes from there).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: model-config parameter keys (besides the convcrf.* metadata keys of ONNX_KEYS).
MAX_PIXELS_KEY = "convcrf.max_pixels"
THREADS_KEY = "convcrf.intra_op_threads"


def _parameter(config: dict, key: str, default: str | None = None) -> str | None:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


def check_frames(image: np.ndarray, max_pixels: int) -> str | None:
    """Why ``image`` (one request's input) cannot be served, or ``None`` when it can."""
    if image.ndim != 4 or image.shape[1] != 3:
        return (f"'image' must be [N, 3, H, W] RGB, got shape {list(image.shape)}; "
                "send frames in channel-first RGB order")
    n, _, h, w = image.shape
    if n < 1 or h < 1 or w < 1:
        return f"'image' has an empty dimension: shape {list(image.shape)}; send N, H, W >= 1"
    if h * w > max_pixels:
        return (f"'image' frame {w}x{h} has {h * w} pixels, more than this model's limit of "
                f"{max_pixels} ({MAX_PIXELS_KEY}); resize it on the client (Segmenter does)")
    if image.dtype != np.uint8:
        # Per request, so that one client's NaN frame fails its own request only.
        from ..runtime.backends.base import check_image_values
        try:
            check_image_values(image)
        except ValueError as exc:
            return str(exc)
    return None


def load_backend(model_path: str | Path, threads: int):
    """The backend this model serves ``model_path`` with (through the registry, as every other
    entry point: the same backend and options as ``convcrf-run --backend onnxruntime
    --providers cpu --threads N``), activated. ``convcrf-triton`` loads the file it wrote with
    it before committing the repository, so a repository whose model the server would refuse
    is never written."""
    from ..runtime.backends import create_backend

    return create_backend(Path(model_path), "onnxruntime", providers=("cpu",),
                          threads=threads).activate()


class TritonPythonModel:
    """Triton Python-backend model: ``initialize`` / ``execute`` / ``finalize``."""

    def initialize(self, args: dict) -> None:
        self.config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
        threads = int(_parameter(self.config, THREADS_KEY, "1"))
        self.max_pixels = int(_parameter(self.config, MAX_PIXELS_KEY, str(4096 * 4096)))
        self.backend = load_backend(version_dir / "model.onnx", threads)
        self.outputs = {o["name"]: o for o in self.config["output"]}

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        responses: list = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, np.ndarray, list[str]]]] = {}
        for index, request in enumerate(requests):
            image = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()
            problem = check_frames(image, self.max_pixels)
            if problem is not None:
                responses[index] = pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(problem))
                continue
            wanted = [n for n in (request.requested_output_names() or self.outputs)
                      if n in self.outputs]
            groups.setdefault(image.shape[1:], []).append((index, image, wanted))

        for members in groups.values():
            batch = np.concatenate([image for _, image, _ in members]).astype(np.float32)
            try:
                outputs = self.backend.infer({"image": batch}, check_values=False)  # checked
            except Exception as exc:  # one failing batch must not take the server down
                for index, _, _ in members:
                    responses[index] = pb_utils.InferenceResponse(
                        output_tensors=[], error=pb_utils.TritonError(
                            f"inference failed: {type(exc).__name__}: {exc}"))
                continue
            start = 0
            for index, image, wanted in members:
                stop = start + image.shape[0]
                tensors = [pb_utils.Tensor(name, np.ascontiguousarray(outputs[name][start:stop]))
                           for name in wanted if name in outputs]
                responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
                start = stop
        return responses

    def finalize(self) -> None:
        self.backend.deactivate()
