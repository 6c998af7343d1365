"""Serving on NVIDIA Triton Inference Server (docs/serving.md).

* :mod:`.repository`: ``convcrf-triton`` writes a model repository (Triton is an export target
  on the server side): a Python-backend model for CPU servers, a ``tensorrt_plan`` model for
  NVIDIA GPUs;
* :mod:`.python_model`: the Python-backend model that runs inside ``tritonserver``;
* :mod:`.server`: :class:`TritonServer`, a local ``tritonserver`` from the ``nvidia-pytriton``
  wheel on 127.0.0.1 (tests, benchmarks, development).

The client side is the runtime's ``triton`` backend (``runtime/backends/triton``). Importing
this package imports nothing beyond the standard library and numpy.
"""
from __future__ import annotations

from .repository import (EngineProfile, ModelOptions, RepositoryError, server_command,
                         write_python_model, write_tensorrt_model)
from .server import TRITON_PYTHON_ENV, TritonServer, TritonServerError

__all__ = ["EngineProfile", "ModelOptions", "RepositoryError", "TRITON_PYTHON_ENV",
           "TritonServer", "TritonServerError", "server_command", "write_python_model",
           "write_tensorrt_model"]
