"""Write a Triton Inference Server model repository for an exported model (``convcrf-triton``).

Three kinds of model, with the same interface as our ONNX graphs (docs/serving.md):

* **CPU / reference** (:func:`write_python_model`): Triton's Python backend runs the exported
  ``.onnx`` with our runtime (:mod:`convcrf_deploy.serving.python_model`); ``image`` is
  ``TYPE_UINT8`` (default) or ``TYPE_FP32`` ``[3, -1, -1]``;
* **ONNX Runtime** (:func:`write_onnxruntime_model`): Triton's onnxruntime backend runs the
  exported ``.onnx`` itself, its ConvCRF nodes on our custom-op library ``libconvcrf_ort_ops``
  declared in the configuration (``model_operations { op_library_filename: ... }``;
  docs/onnxruntime.md); ``image`` is ``TYPE_FP32`` ``[3, -1, -1]``. Written and validated
  against Triton's ``ModelConfig`` schema, **not run on a server here** (the bundled
  ``tritonserver`` has no onnxruntime backend);
* **NVIDIA GPU** (:func:`write_tensorrt_model`): Triton's TensorRT backend runs the engine from
  ``convcrf-build`` (``platform: "tensorrt_plan"``); the ConvCRF plugin library must be loaded
  into the server (``--backend-config=tensorrt,plugins=LIB`` or ``LD_PRELOAD=LIB``: the
  self-registering ``libconvcrf_trt_plugin_static_reg.so``, since neither calls
  ``getCreators``), and the engine's shape profile must cover ``max_batch`` and the frame sizes.

Both get ``max_batch_size``, ``dynamic_batching``, an ``instance_group``, the model's metadata
(classes, palette, normalisation, input size, resize policy: the ``convcrf.*`` keys of the ONNX
file) as ``parameters``, and a ``README.md`` saying how to start and query the server.

Output safety: ``REPO/<name>/`` is assembled in a temporary folder next to ``REPO`` and renamed
into place, so a failure leaves nothing half-written. An existing non-empty ``REPO/<name>`` is
refused unless ``force``; even then it is replaced only when every file in it is one that
convcrf-triton wrote (listed in its ``convcrf-triton.json``), so a user's files are never
deleted. Other models in ``REPO`` are left alone.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import describe_error
from ..exported_model import ExportedModel, check_written

#: file inside each written model folder listing what convcrf-triton wrote there.
MANIFEST = "convcrf-triton.json"
#: ONNX element type -> (Triton data type, numpy name).
_ONNX_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 7: "TYPE_INT64", 6: "TYPE_INT32", 2: "TYPE_UINT8"}
_NUMPY_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64",
                "int32": "TYPE_INT32", "uint8": "TYPE_UINT8"}
INPUT_DTYPES = {"uint8": "TYPE_UINT8", "float32": "TYPE_FP32"}


#: the repository's ``1/model.py``: the model's code is convcrf_deploy.serving.python_model.
MODEL_SHIM = """\
# Written by convcrf-triton. The model's code is convcrf_deploy.serving.python_model: install
# convcrf-deploy (with numpy<2, like nvidia-pytriton) in the environment tritonserver runs.
import os
import sys

# The Python backend's embedded interpreter ignores PYTHONPATH; honour it (ahead of the base
# interpreter's site-packages) so that a virtual environment's packages are found.
for _path in reversed([p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from convcrf_deploy.serving.python_model import TritonPythonModel  # noqa: E402,F401
"""


class RepositoryError(ValueError):
    """The repository cannot be written as asked; the message says why and what to do."""


class RepositoryWriteError(RepositoryError):
    """The repository was written, but what was written does not read back as the server
    would read it (nothing is committed): a failure of the writing, not of the request."""


@dataclass(frozen=True)
class ModelOptions:
    """Serving options shared by both model kinds.

    Attributes:
        name: model name in the repository (the client's ``--model``).
        max_batch: ``max_batch_size``: largest batch the dynamic batcher forms (>= 1).
        instances: model instances (``instance_group.count``; per GPU for TensorRT).
        queue_delay_us: ``dynamic_batching.max_queue_delay_microseconds``: how long a request
            may wait for others to join its batch (latency traded for throughput).
    """

    name: str = "convcrf"
    max_batch: int = 8
    instances: int = 1
    queue_delay_us: int = 2000

    def __post_init__(self) -> None:
        if not self.name or self.name.startswith(".") or any(c in self.name for c in "/\\ \"'"):
            raise RepositoryError(f"model name {self.name!r} must be a plain folder name "
                                  "(letters, digits, '-', '_')")
        for field, low in (("max_batch", 1), ("instances", 1), ("queue_delay_us", 0)):
            if int(getattr(self, field)) < low:
                raise RepositoryError(f"{field} must be >= {low}, got {getattr(self, field)}")


# -- reading the exported model ----------------------------------------------------------------
def _open_onnx(onnx_path: Path):
    """The export as every reader sees it (digest, metadata against graph), and its
    ``convcrf.*`` metadata entries."""
    if not onnx_path.is_file():
        raise RepositoryError(f"ONNX model {str(onnx_path)!r} does not exist")
    try:
        model = ExportedModel.open(onnx_path)
        model.require_metadata()
    except ValueError as exc:     # not ONNX, damaged, inconsistent, not ours
        raise RepositoryError(str(exc)) from None
    return model, {k: v for k, v in model.props.items() if k.startswith("convcrf.")}


def _graph_io(model: ExportedModel) -> tuple[str, dict[str, tuple[str, list[int]]]]:
    """(input Triton type, {output name: (Triton type, dims without batch)}) of an export."""
    if model.part != "full":
        raise RepositoryError(f"{model.name} has inputs {list(model.inputs)} and outputs "
                              f"{list(model.outputs)}; Triton models take one 'image' and give "
                              "'probabilities' and 'labels' (export part 'full' with convcrf-export)")
    input_type = _ONNX_TYPES.get(model.inputs["image"].elem_type, "TYPE_FP32")
    outputs = {}
    for name, info in model.outputs.items():
        if name in ("labels", "probabilities", "unary_labels"):
            dims = [d if isinstance(d, int) and d > 0 else -1 for d in info.shape or ()]
            outputs[name] = (_ONNX_TYPES.get(info.elem_type, "TYPE_FP32"), dims[1:])
    return input_type, outputs


def _write_served_onnx(model: ExportedModel, written: Path, final: Path, load) -> None:
    """Write the export as one file (external data inlined; the content digest survives the
    re-save) and read it back as the server will (:func:`check_written`, then ``load``) before
    the folder is committed: a repository whose model the server refuses is never written."""
    import onnx

    onnx.save(model.load_proto_with_data(), str(written))
    try:
        check_written(written, final)
        load(written)
    except ValueError as exc:
        raise RepositoryWriteError(f"the server could not load the written model: {exc}") \
            from None


def _load_like_the_server(path: Path, ops_library) -> None:
    """Open ``path`` in ONNX Runtime with the custom-op library registered, as Triton's ONNX
    Runtime backend does; skipped when the library the server will use is not on this machine
    (the file itself was checked by :func:`check_written`)."""
    from ..runtime.backends.base import BackendUnavailableError
    from ..runtime.backends.onnxrt.loader import SessionLoader

    custom_ops = ops_library if ops_library is not None and Path(ops_library).is_file() else None
    try:
        SessionLoader(path, ("cpu",), threads=1, spinning=False, custom_ops=custom_ops)()
    except BackendUnavailableError:
        pass      # no onnxruntime or no custom-op library here: the server's to load


# -- config.pbtxt -------------------------------------------------------------------------------
def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _tensor(name: str, dtype: str, dims: Sequence[int]) -> str:
    return (f"  {{ name: {_quote(name)} data_type: {dtype} "
            f"dims: [ {', '.join(str(int(d)) for d in dims)} ] }}")


def render_config(*, options: ModelOptions, platform_line: str, input_type: str,
                  input_dims: Sequence[int], outputs: dict[str, tuple[str, list[int]]],
                  instance_kind: str, parameters: dict[str, str]) -> str:
    """The ``config.pbtxt`` text (protobuf text format of Triton's ModelConfig)."""
    lines = [f"name: {_quote(options.name)}", platform_line,
             f"max_batch_size: {options.max_batch}",
             "input [", _tensor("image", input_type, input_dims), "]",
             "output ["]
    lines.append(",\n".join(_tensor(n, t, d) for n, (t, d) in outputs.items()))
    lines += ["]",
              f"dynamic_batching {{ max_queue_delay_microseconds: {options.queue_delay_us} }}",
              f"instance_group [ {{ count: {options.instances} kind: {instance_kind} }} ]"]
    for key, value in parameters.items():
        lines.append(f"parameters {{ key: {_quote(key)} value: {{ string_value: {_quote(value)} }} }}")
    return "\n".join(lines) + "\n"


# -- writing ------------------------------------------------------------------------------------
def _check_target(target: Path, force: bool) -> None:
    if not target.exists():
        return
    if not target.is_dir():
        raise RepositoryError(f"{target} exists and is not a folder; choose another --name or -o")
    present = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    if not present:
        return
    if not force:
        raise RepositoryError(f"{target} already exists and is not empty; pass --force to replace "
                              "a model folder written by convcrf-triton")
    try:
        ours = set(json.loads((target / MANIFEST).read_text())["files"]) | {MANIFEST}
    except (OSError, ValueError, KeyError, TypeError):
        raise RepositoryError(f"{target} was not written by convcrf-triton (no readable {MANIFEST}); "
                              "refusing to replace it even with --force: move it away yourself") from None
    # __pycache__ is what the server's Python wrote when it imported model.py.
    foreign = [p for p in present if p not in ours and "__pycache__" not in Path(p).parts]
    if foreign:
        raise RepositoryError(f"{target} contains files convcrf-triton did not write ({foreign[:5]}); "
                              "refusing to delete them even with --force: move them away first")


def _commit(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; an old ``target`` is swapped out first and removed last."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        os.rmdir(old)
        os.rename(target, old)
    try:
        os.rename(staging, target)
    except OSError:
        if old is not None:
            os.rename(old, target)  # put the previous model back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_model(repository: Path, options: ModelOptions, force: bool, fill) -> Path:
    repository = Path(repository)
    if repository.exists() and not repository.is_dir():
        raise RepositoryError(f"-o {repository} exists and is not a folder")
    target = repository / options.name
    _check_target(target, force)
    repository.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=repository.parent, prefix=f".{repository.name}-{options.name}-"))
    try:
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide the model from a server user
        files = fill(staging)
        (staging / MANIFEST).write_text(json.dumps({"files": sorted(files)}, indent=2) + "\n")
        _commit(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _config_text(config: str, section: str) -> str:
    """``config`` with one more top-level ``section`` before its ``parameters``."""
    lines = config.splitlines()
    at = next((i for i, line in enumerate(lines) if line.startswith("parameters {")), len(lines))
    return "\n".join([*lines[:at], section, *lines[at:]]) + "\n"


def write_onnxruntime_model(onnx_path: str | os.PathLike, repository: str | os.PathLike,
                            options: ModelOptions = ModelOptions(), *,
                            ops_library: str | os.PathLike | None = None, threads: int = 1,
                            gpu: bool = False, force: bool = False) -> Path:
    """Write ``REPO/<name>/`` with an ``onnxruntime``-backend model of ``onnx_path``.

    The server's ONNX Runtime runs the whole graph; its ConvCRF nodes run on our custom-op
    library, which the configuration declares (``model_operations { op_library_filename }``):
    required for the ``plugin`` flavour, and for the ``single-file`` flavour it replaces the
    nodes' slower function bodies; a ``portable`` export needs none. Untested on a server here
    (docs/serving.md).

    Args:
        onnx_path: an export of any flavour (the graph's input is float32 in every flavour).
        repository: the model repository folder (created if needed).
        options: name, batching and instances.
        ops_library: ``libconvcrf_ort_ops`` as the *server* will find it (an absolute path; in
            a container, the path inside it). Default: the library installed here
            (:func:`convcrf_deploy.ort_ops_library`). Its ``libconvcrf_cpu`` must sit beside it,
            and the server's ONNX Runtime must be >= 1.16.
        threads: ONNX Runtime intra-op threads per instance (``intra_op_thread_count``).
        gpu: ``KIND_GPU`` instances (the server's CUDA provider; declare the CUDA variant,
            ``ort_ops_library(cuda=True)``, for the ConvCRF nodes to run on the GPU).
        force: replace a model folder previously written by convcrf-triton.

    Returns:
        ``REPO/<name>``.

    Raises:
        RepositoryError: bad options, a non-convcrf ONNX file, a graph with ConvCRF nodes and
            no library (not installed here and none named), a relative ``ops_library``, or an
            existing folder that may not be replaced.
    """
    from .. import _native

    if threads < 1:
        raise RepositoryError("threads must be >= 1")
    onnx_path = Path(onnx_path)
    model, props = _open_onnx(onnx_path)
    input_type, outputs = _graph_io(model)
    section = None
    if model.crf_nodes:
        if ops_library is None:
            try:
                ops_library = _native.ort_ops_library(cuda=gpu)
            except _native.NativeError as exc:
                raise RepositoryError(f"{onnx_path.name} has ConvCRF nodes, which the server's "
                                      f"ONNX Runtime runs on libconvcrf_ort_ops: {exc}; or name "
                                      "the server's copy with --ops-library") from None
        if not Path(ops_library).is_absolute():
            raise RepositoryError(f"--ops-library {ops_library} must be an absolute path (Triton "
                                  "loads it as given, not relative to the repository)")
        section = f"model_operations {{ op_library_filename: {_quote(str(ops_library))} }}"
    config = render_config(options=options, platform_line='backend: "onnxruntime"',
                           input_type=input_type, input_dims=[3, -1, -1], outputs=outputs,
                           instance_kind="KIND_GPU" if gpu else "KIND_CPU",
                           parameters={"intra_op_thread_count": str(threads), **props})
    if section is not None:
        config = _config_text(config, section)

    target = Path(repository) / options.name

    def fill(folder: Path) -> list[str]:
        (folder / "1").mkdir()
        _write_served_onnx(model, folder / "1" / "model.onnx", target / "1" / "model.onnx",
                           lambda path: _load_like_the_server(path, ops_library))
        (folder / "config.pbtxt").write_text(config)
        (folder / "README.md").write_text(_readme(options, "onnxruntime", "float32", outputs,
                                                  ops_library))
        return ["config.pbtxt", "README.md", "1/model.onnx"]

    return _write_model(Path(repository), options, force, fill)


def write_python_model(onnx_path: str | os.PathLike, repository: str | os.PathLike,
                       options: ModelOptions = ModelOptions(), *, input_dtype: str = "uint8",
                       max_frame_size: tuple[int, int] = (2160, 3840), threads: int = 1,
                       force: bool = False) -> Path:
    """Write ``REPO/<name>/`` with a Python-backend model running ``onnx_path`` on the CPU.

    Args:
        onnx_path: an export of any flavour; the ``plugin`` flavour needs the custom-op library
            ``libconvcrf_ort_ops`` in the server's convcrf-deploy (checked here, in this one).
        repository: the model repository folder (created if needed).
        options: name, batching and instances.
        input_dtype: ``"uint8"`` or ``"float32"``: the ``image`` type clients send.
        max_frame_size: ``(height, width)``: larger frames (by pixel count) are refused with
            an error response, bounding the server's memory per request.
        threads: ONNX Runtime intra-op threads per instance (scale with ``instances``).
        force: replace a model folder previously written by convcrf-triton.

    Returns:
        ``REPO/<name>``.

    Raises:
        RepositoryError: bad options, a non-convcrf ONNX file, a plugin-flavour file without
            the custom-op library, or an existing folder that may not be replaced.
    """
    from .. import _native

    if input_dtype not in INPUT_DTYPES:
        raise RepositoryError(f"input dtype must be one of {sorted(INPUT_DTYPES)}, got {input_dtype!r}")
    if threads < 1 or min(max_frame_size) < 1:
        raise RepositoryError("threads and the maximum frame size must be >= 1")
    onnx_path = Path(onnx_path)
    model, props = _open_onnx(onnx_path)
    metadata = model.metadata
    if metadata is not None:
        need = metadata.padded_size(*metadata.input_size)
        if max_frame_size[0] * max_frame_size[1] < need[0] * need[1]:
            # Clients send frames at the model's input size (Segmenter resizes to it): every
            # request would be refused (second new-user trial).
            raise RepositoryError(
                f"--max-frame-size {max_frame_size[1]}x{max_frame_size[0]} is below "
                f"{onnx_path.name}'s input size {need[1]}x{need[0]} (WxH), which clients "
                "send: every request would be refused; give at least that size")
    if model.needs_custom_ops:
        try:
            _native.ort_ops_library()
        except _native.NativeError as exc:
            raise RepositoryError(f"{onnx_path.name} is a 'plugin'-flavour export, which ONNX "
                                  f"Runtime runs only with libconvcrf_ort_ops: {exc}; or export "
                                  "--flavor single-file for the CPU repository") from None
    _, outputs = _graph_io(model)
    from .python_model import MAX_PIXELS_KEY, THREADS_KEY, load_backend

    parameters = {**props, MAX_PIXELS_KEY: str(max_frame_size[0] * max_frame_size[1]),
                  THREADS_KEY: str(threads)}
    config = render_config(options=options, platform_line='backend: "python"',
                           input_type=INPUT_DTYPES[input_dtype], input_dims=[3, -1, -1],
                           outputs=outputs, instance_kind="KIND_CPU", parameters=parameters)

    target = Path(repository) / options.name

    def fill(folder: Path) -> list[str]:
        (folder / "1").mkdir()
        # The server's own reader: the Python model's initialize.
        _write_served_onnx(model, folder / "1" / "model.onnx", target / "1" / "model.onnx",
                           lambda path: load_backend(path, threads=1).deactivate())
        (folder / "1" / "model.py").write_text(MODEL_SHIM)
        (folder / "config.pbtxt").write_text(config)
        (folder / "README.md").write_text(_readme(options, "python", input_dtype, outputs))
        return ["config.pbtxt", "README.md", "1/model.onnx", "1/model.py"]

    return _write_model(Path(repository), options, force, fill)


@dataclass(frozen=True)
class EngineProfile:
    """The ``image`` shape range an engine was built for: ``min``/``max`` ``(N, C, H, W)``."""

    min: tuple[int, int, int, int]
    max: tuple[int, int, int, int]


def read_engine_io(engine_path: Path, plugin: str | os.PathLike | None):
    """(profile, {name: Triton type}) read from the engine with TensorRT (needs a GPU)."""
    from ..runtime.backends.trt.loader import EngineLoader

    info = EngineLoader(engine_path, plugin_library=plugin)()
    lo, _, hi = info.engine.get_tensor_profile_shape("image", 0)
    types = {"image": _NUMPY_TYPES[info.input_dtype.name],
             **{n: _NUMPY_TYPES[d.name] for n, d in info.output_dtypes.items()}}
    return EngineProfile(tuple(lo), tuple(hi)), types


def check_profile(profile: EngineProfile, max_batch: int, frame_sizes: Sequence[tuple[int, int]]) -> None:
    """Refuse a configuration the engine's profile does not cover (Triton would fail requests)."""
    (n0, _, h0, w0), (n1, _, h1, w1) = profile.min, profile.max
    if n0 > 1 or n1 < max_batch:
        raise RepositoryError(
            f"the engine's profile covers batch {n0}..{n1}, but the dynamic batcher sends "
            f"1..{max_batch}: rebuild with convcrf-build --min 1x3xHxW --max {max_batch}x3xHxW, "
            f"or pass --max-batch {max(1, n1)}")
    for h, w in frame_sizes:
        if not (h0 <= h <= h1 and w0 <= w <= w1):
            raise RepositoryError(
                f"frame size {w}x{h} is outside the engine's profile ({w0}x{h0} .. {w1}x{h1}); "
                "rebuild the engine with convcrf-build --min/--max covering it")


def write_tensorrt_model(onnx_path: str | os.PathLike, engine_path: str | os.PathLike,
                         repository: str | os.PathLike, options: ModelOptions = ModelOptions(), *,
                         plugin: str | os.PathLike | None = None,
                         profile: EngineProfile | None = None,
                         frame_sizes: Sequence[tuple[int, int]] | None = None,
                         force: bool = False) -> Path:
    """Write ``REPO/<name>/`` with a ``tensorrt_plan`` model of ``engine_path``.

    Args:
        onnx_path: the export the engine was built from (names, types, metadata).
        engine_path: the engine from ``convcrf-build`` (copied as ``1/model.plan``).
        plugin: the plugin library to name in the server command line (and to load when the
            engine is read here).
        profile: the engine's ``image`` profile as given to ``convcrf-build --min/--max``;
            when ``None`` it is read from the engine, which needs TensorRT and a GPU
            (convcrf-build does not record it in its sidecar).
        frame_sizes: ``(height, width)`` sizes clients will send (default: the model's input
            size); each must lie inside the profile, as must batch ``1..max_batch``.
        force: replace a model folder previously written by convcrf-triton.

    Raises:
        RepositoryError: profile not given and not readable, or not covering the configuration.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not engine_path.is_file():
        raise RepositoryError(f"engine {str(engine_path)!r} does not exist; build it with convcrf-build")
    model, props = _open_onnx(onnx_path)
    input_type, outputs = _graph_io(model)
    types = {}
    if profile is None:
        try:
            profile, types = read_engine_io(engine_path, plugin)
        except Exception as exc:  # no tensorrt/pycuda/GPU, or a foreign engine
            raise RepositoryError(describe_error(
                exc, f"cannot read the engine's shape profile here ({type(exc).__name__})",
                "convcrf-build does not record it, so pass the shapes you built it with: "
                "--min NxCxHxW --max NxCxHxW")) from None
    metadata = model.require_metadata()
    # as sent: the client backend pads frames to the unary's input constraints
    sizes = [metadata.padded_size(*size) for size in (frame_sizes or [metadata.input_size])]
    check_profile(profile, options.max_batch, sizes)
    input_type = types.get("image", input_type)
    outputs = {n: (types.get(n, t), d) for n, (t, d) in outputs.items()}
    (_, _, h0, w0), (_, _, h1, w1) = profile.min, profile.max
    dims = [3, h0 if h0 == h1 else -1, w0 if w0 == w1 else -1]
    outputs = {n: (t, [*d[:-2], dims[1], dims[2]]) for n, (t, d) in outputs.items()}
    config = render_config(options=options, platform_line='platform: "tensorrt_plan"',
                           input_type=input_type, input_dims=dims, outputs=outputs,
                           instance_kind="KIND_GPU", parameters=props)

    def fill(folder: Path) -> list[str]:
        (folder / "1").mkdir()
        shutil.copyfile(engine_path, folder / "1" / "model.plan")
        (folder / "config.pbtxt").write_text(config)
        (folder / "README.md").write_text(_readme(options, "tensorrt", None, outputs, plugin))
        return ["config.pbtxt", "README.md", "1/model.plan"]

    return _write_model(Path(repository), options, force, fill)


def server_command(repository: str | os.PathLike, plugin: str | os.PathLike | None = None) -> str:
    """The ``tritonserver`` command line for a repository (with the plugin option for GPU models)."""
    command = f"tritonserver --model-repository={Path(repository).resolve()}"
    if plugin is not None:
        command += f' --backend-config=tensorrt,plugins="{Path(plugin).resolve()}"'
    return command


def _readme(options: ModelOptions, kind: str, input_dtype: str | None,
            outputs: dict[str, tuple[str, list[int]]], plugin: str | os.PathLike | None = None) -> str:
    name = options.name
    outs = ", ".join(f"`{n}` {t[5:].lower()}" for n, (t, _) in outputs.items())
    if kind == "onnxruntime":
        library = ("Its ConvCRF nodes run on the custom-op library declared in `model_operations`,\n"
                   f"`{plugin}`: the server must find it at that path, with\n"
                   "`libconvcrf_cpu.so` beside it (in a container, write the repository with\n"
                   "`--ops-library` naming the path inside the container).\n") if plugin else ""
        start = (
            "This is an **onnxruntime-backend** model: the server's ONNX Runtime runs\n"
            "`1/model.onnx`; it must be ONNX Runtime >= 1.16 (the Triton release notes list the\n"
            "version a server bundles). " + library +
            "convcrf-triton validates this configuration against Triton's model configuration\n"
            "schema, but convcrf-deploy's tests do not run it on a server (docs/serving.md).\n\n"
            "```bash\n"
            "tritonserver --model-repository=$PWD/..\n"
            "```\n")
        image = "`image` float32 [N, 3, H, W] RGB 0..255"
    elif kind == "python":
        start = (
            "This is a **Python-backend** model (CPU): the server runs the exported ONNX graph with\n"
            "convcrf-deploy's runtime (ONNX Runtime, no torch). In the server's Python environment:\n\n"
            "```bash\n"
            "pip install /path/to/convcrf-deploy nvidia-pytriton \"numpy<2\" \"opencv-python-headless<4.12\"\n"
            "#            ^ your checkout: convcrf-deploy is installed from source (README)\n"
            "tritonserver --model-repository=$PWD/..     # NVIDIA's container, or the wheel's binary\n"
            "```\n\n"
            "With the `nvidia-pytriton` wheel instead of the container, the Python-backend stub needs\n"
            "`LD_LIBRARY_PATH` = the interpreter's `LIBDIR` + the wheel's `nvidia_pytriton.libs`\n"
            "(docs/serving.md; `convcrf_deploy.serving.TritonServer` does it for you).\n")
        image = f"`image` {input_dtype} [N, 3, H, W] RGB 0..255"
    else:
        lib = Path(plugin).resolve() if plugin else "/path/to/libconvcrf_trt_plugin_static_reg.so"
        start = (
            "This is a **TensorRT** model (NVIDIA GPU): `1/model.plan` is the engine from\n"
            "convcrf-build. It runs only on the GPU model and TensorRT version it was built with;\n"
            "the server must load the ConvCRF plugin library (the self-registering variant, built\n"
            "against the server's TensorRT):\n\n"
            "```bash\n"
            f"tritonserver --model-repository=$PWD/.. --backend-config=tensorrt,plugins=\"{lib}\"\n"
            f"# or: LD_PRELOAD={lib} tritonserver --model-repository=$PWD/..\n"
            "```\n")
        image = "`image` float32 [N, 3, H, W] RGB 0..255 (the engine's input type)"
    return (
        f"# Triton model `{name}` (written by convcrf-triton)\n\n{start}\n"
        f"Interface: {image}; outputs {outs}. Ask only for the outputs you need (probabilities\n"
        f"are 4 bytes x classes per pixel). Batches of 1..{options.max_batch} frames per request;\n"
        f"the dynamic batcher waits up to {options.queue_delay_us} us to merge requests of the same\n"
        f"frame size; {options.instances} instance(s). Classes, palette, normalisation and resize\n"
        "policy are in `config.pbtxt` `parameters` (`convcrf.*`, the ONNX metadata keys).\n\n"
        "Query it from convcrf-deploy (pre-/post-processing on the client, like local backends):\n\n"
        "```bash\n"
        f"convcrf-run --backend triton --model {name} --url 127.0.0.1:8000 --video cam0\n"
        f"convcrf-run --backend triton --model {name} --url 127.0.0.1:8001 --protocol grpc --video clip.mp4\n"
        "```\n\n"
        "or from Python with NVIDIA's client (`pip install tritonclient[http]`):\n\n"
        "```python\n"
        "import numpy as np, tritonclient.http as httpclient\n"
        "client = httpclient.InferenceServerClient(\"127.0.0.1:8000\", network_timeout=10)\n"
        f"frame = np.zeros((1, 3, 240, 320), np.{input_dtype or 'float32'})\n"
        f"inp = httpclient.InferInput(\"image\", frame.shape, \"{'UINT8' if input_dtype == 'uint8' else 'FP32'}\")\n"
        "inp.set_data_from_numpy(frame)\n"
        f"result = client.infer(\"{name}\", [inp], outputs=[httpclient.InferRequestedOutput(\"labels\")])\n"
        "labels = result.as_numpy(\"labels\")   # int64 [1, 240, 320]\n"
        "```\n")
