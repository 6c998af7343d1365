"""TensorRT backend: runs engines built with the ConvCRF plugins (``convcrf-build``).

Importing this package imports neither tensorrt nor pycuda; :class:`TensorRTBackend` does on
construction and raises ``BackendUnavailableError`` naming the ``tensorrt`` extra
(:func:`convcrf_deploy.install.install_hint`) when they are missing.
"""
from .loader import BufferPool, EngineLoader
from .runner import TensorRTBackend

__all__ = ["TensorRTBackend", "EngineLoader", "BufferPool"]
