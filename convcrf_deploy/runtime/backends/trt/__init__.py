"""TensorRT backend: runs engines built with the ConvCRF plugins (``convcrf-build``).

Importing this package imports neither tensorrt nor pycuda; :class:`TensorRTBackend` does on
construction and raises ``BackendUnavailableError`` naming ``pip install
convcrf-deploy[tensorrt]`` when they are missing.
"""
from .loader import BufferPool, EngineLoader
from .runner import TensorRTBackend

__all__ = ["TensorRTBackend", "EngineLoader", "BufferPool"]
