"""Triton backend: the model runs on a shared Triton Inference Server, reached with NVIDIA's
``tritonclient`` over HTTP or gRPC (docs/serving.md); the server's repository is written by
``convcrf-triton``."""
from .loader import PROTOCOLS, ClientLoader, TritonRequestError
from .runner import TritonBackend

__all__ = ["TritonBackend", "ClientLoader", "TritonRequestError", "PROTOCOLS"]
