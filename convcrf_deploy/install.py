"""How to install the optional parts: the one place every install hint comes from.

convcrf-deploy is not on the Python package index: it is installed from a checkout of its
repository, with the optional parts named as extras after the checkout's path
(``pip install "/path/to/convcrf-deploy[tensorrt]"``, or ``pip install ".[tensorrt]"`` inside
the checkout). ``pip install convcrf-deploy[...]`` would look the name up on the index and fail.
"""
from __future__ import annotations


class MissingDependencyError(ImportError):
    """A library this feature needs is not installed; the message names it and the
    ``pip install`` that provides it. Every "not installed" error of the package derives from
    it (backends, ROS/Foxglove, FullCRF, torch for the model tools), so the commands report it
    alike (exit status 3, :mod:`convcrf_deploy.cli.harness`)."""

#: what each extra adds (pyproject.toml's [project.optional-dependencies]).
EXTRAS = {"torch": "PyTorch and onnxscript (model, training, export, benchmarks)",
          "gpu": "onnxruntime-gpu (CUDA and TensorRT providers)",
          "tensorrt": "the TensorRT Python package and pycuda",
          "plot": "matplotlib", "fullcrf": "pydensecrf2 (module pydensecrf)",
          "triton": "tritonclient (HTTP and gRPC client of a Triton Inference Server)",
          "ros": "rosbags (ROS 1 / ROS 2 bags without ROS)",
          "foxglove": "foxglove-sdk (Foxglove WebSocket live view)",
          "test": "pytest, torch and the optional libraries the tests exercise"}


def install_hint(*extras: str) -> str:
    """The command that installs ``extras`` of convcrf-deploy, e.g.
    ``pip install "/path/to/convcrf-deploy[tensorrt]"`` (your checkout; inside it
    ``pip install ".[tensorrt]"``)."""
    unknown = [e for e in extras if e not in EXTRAS]
    if unknown:
        raise ValueError(f"unknown extra(s) {unknown}; known: {sorted(EXTRAS)}")
    names = ",".join(extras)
    return (f'pip install "/path/to/convcrf-deploy[{names}]" (the path of your checkout of the '
            f'repository; inside it: pip install ".[{names}]")')


#: what to run when torch is missing: the CPU build, then the extra.
TORCH_HINT = ("pip install torch --index-url https://download.pytorch.org/whl/cpu (CPU build; "
              "the public index's default build on Linux x86-64 is the CUDA one), then "
              + install_hint("torch"))
