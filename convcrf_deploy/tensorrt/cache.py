"""The engine cache and the metadata sidecar of engines (no tensorrt needed).

Engines are specific to the GPU model and TensorRT version, so an engine built without an
explicit path goes to a cache (``$CONVCRF_ENGINE_CACHE`` or ``~/.cache/convcrf-deploy/engines``)
under :func:`engine_cache_key`. Engines carry no ONNX metadata_props: the model's
``ModelMetadata`` travels beside them as ``<engine>.json``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..files import write_text_atomic
from ..metadata import ModelMetadata
from .profiles import Profile

#: environment variable overriding the engine cache folder.
CACHE_ENV = "CONVCRF_ENGINE_CACHE"

def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def engine_cache_key(model_sha256: str, gpu: str, trt_version: str, profile: Profile,
                     version_compatible: bool = False, plugin_sha256: str = "",
                     allow_standard_op_crf: bool = False) -> str:
    """Hex key identifying an engine: same model bytes, GPU, TensorRT, profile and options
    give the same key; any change gives another. ``plugin_sha256`` covers rebuilt plugins;
    ``allow_standard_op_crf`` keeps engines built without the plugin check apart, so a cache
    hit without it is an engine whose plugin use was checked."""
    fields = {"model": model_sha256, "gpu": gpu, "tensorrt": trt_version,
              "profile": profile.to_dict(), "version_compatible": bool(version_compatible),
              "plugin": plugin_sha256}
    if allow_standard_op_crf:
        fields["allow_standard_op_crf"] = True
    record = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(record.encode()).hexdigest()[:24]


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "convcrf-deploy" / "engines"


def metadata_path_for(engine_path: str | os.PathLike) -> Path:
    """The sidecar JSON next to an engine: ``model.engine`` -> ``model.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def write_metadata(engine_path: str | os.PathLike, metadata: ModelMetadata) -> Path:
    path = metadata_path_for(engine_path)
    write_text_atomic(path, json.dumps(metadata.to_dict(), indent=2) + "\n")
    return path


def read_metadata(engine_path: str | os.PathLike) -> ModelMetadata | None:
    """The sidecar metadata of an engine, or ``None`` when there is none.

    Raises ``ValueError`` naming the file when it exists but is not valid.
    """
    path = metadata_path_for(engine_path)
    if not path.is_file():
        return None
    try:
        return ModelMetadata.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise ValueError(f"engine metadata {str(path)!r} is invalid ({exc}); rebuild the engine "
                         "with convcrf-build or delete the file") from exc
