"""ONNX Runtime backend: runs exported ``.onnx`` files on CPU, CUDA or TensorRT providers."""
from .loader import PROVIDERS, SessionLoader
from .runner import OnnxRuntimeBackend

__all__ = ["OnnxRuntimeBackend", "SessionLoader", "PROVIDERS"]
