"""ONNX Runtime sessions, created one way by every part of the package (no torch).

ONNX Runtime's Python ``InferenceSession`` retries a session that failed to load with its
"fallback" providers, and first prints a four-line ``*** EP Error *** ... Falling back to
['CPUExecutionProvider'] and retrying`` banner to standard output. With CPU providers only the
retry fails the same way, so the banner is noise before our one-line error (new-user trial:
``convcrf-export --unary damaged.onnx``, ``convcrf-seal``). :func:`inference_session` turns the
fallback off when the session runs on the CPU only (``enable_fallback=0``, ONNX Runtime >= 1.18;
older releases ignore it); a GPU session keeps ONNX Runtime's own fallback.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

CPU = "CPUExecutionProvider"


def inference_session(model: str | os.PathLike | bytes, options: Any = None,
                      providers: Sequence[Any] = (CPU,)):
    """An ``onnxruntime.InferenceSession`` for ``model`` (a path, or a serialised ModelProto).

    Args:
        model: the ONNX file's path, or its bytes.
        options: ``onnxruntime.SessionOptions`` (threads, custom-op libraries), or None.
        providers: execution providers, as ``InferenceSession`` takes them (names or
            ``(name, options)`` pairs); default the CPU execution provider alone.

    Raises:
        whatever ONNX Runtime raises for a model it cannot load (its pybind errors share no
        useful base class); callers turn it into one line with
        :func:`convcrf_deploy.errors.describe_error`.
    """
    import onnxruntime as ort

    names = [p[0] if isinstance(p, tuple) else p for p in providers]
    extra = {"enable_fallback": 0} if all(name == CPU for name in names) else {}
    path = os.fspath(model) if isinstance(model, os.PathLike) else model
    return ort.InferenceSession(path, sess_options=options, providers=list(providers), **extra)
