"""How to reach a model on a Triton Inference Server: import ``tritonclient`` for the protocol,
connect with timeouts, check that the server is live and the model ready, read its config.

Every call made here and by the runner has a deadline (``timeout`` seconds), so a stalled or
unreachable server raises :class:`TritonRequestError` instead of hanging a camera loop.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from ....errors import describe_error
from ....install import install_hint
from ....serving.python_model import MAX_PIXELS_KEY  # the bound convcrf-triton writes
from ..base import BackendUnavailableError, InputLimits

#: protocol -> default port of tritonserver.
PROTOCOLS = {"http": 8000, "grpc": 8001}

_URL = re.compile(r"^(?:(?P<scheme>[a-z]+)://)?(?P<host>\[[0-9a-fA-F:]+\]|[^:/\s]+)(?::(?P<port>\d+))?/?$")


class TritonRequestError(OSError):
    """A request to the server failed, was refused or timed out. An ``OSError`` (like a lost
    camera), so callers that report I/O failures in one line (``convcrf-run``) do so."""


def import_tritonclient(protocol: str):
    """``tritonclient.http`` or ``tritonclient.grpc``; raises :class:`BackendUnavailableError`."""
    try:
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except ImportError as exc:
        raise BackendUnavailableError(
            f"tritonclient ({protocol}) is not installed ({exc}): "
            f"{install_hint('triton')}") from exc
    return module


def parse_url(url: str, protocol: str) -> str:
    """``"host"``, ``"host:port"`` or ``"http://host:port"`` -> ``"host:port"`` (default port of
    the protocol); raises ``ValueError`` for anything else."""
    match = _URL.match(url.strip()) if isinstance(url, str) else None
    if match is None:
        raise ValueError(f"--url must look like HOST:PORT (e.g. 127.0.0.1:{PROTOCOLS[protocol]}), "
                         f"got {url!r}")
    port = int(match["port"]) if match["port"] else PROTOCOLS[protocol]
    if not 0 < port < 65536:
        raise ValueError(f"--url port must be 1..65535, got {port}")
    return f"{match['host']}:{port}"


@dataclass
class ModelInfo:
    """What the runner needs from the server's model config."""

    input_datatype: str              # "UINT8", "FP32" or "FP16" (Triton's names)
    output_names: list[str]
    max_batch_size: int
    parameters: dict[str, str]       # the convcrf.* metadata and serving options
    input_dims: tuple[int, ...] = (3, -1, -1)   # 'image' dims without the batch (-1: any)

    def input_limits(self, where: str) -> InputLimits:
        """The frame sizes and batches this model config allows (``where`` names it)."""
        dims = [int(d) for d in self.input_dims[-2:]] if len(self.input_dims) >= 2 else [-1, -1]
        limits = InputLimits.from_shape(
            [None, 3, *dims], f"{where}'s config", "write its repository again (convcrf-triton: "
            "an engine built for larger frames, or a larger --max-frame-size)")
        pixels = self.parameters.get(MAX_PIXELS_KEY)
        max_pixels = int(pixels) if pixels and pixels.isdigit() else None
        batch = (1, self.max_batch_size) if self.max_batch_size > 0 else (1, None)
        return dataclasses.replace(limits, max_pixels=max_pixels, batch=batch)


class ClientLoader:
    """Creates a ``tritonclient`` client and reads the model's config.

    Args:
        model_name: the model's name in the server's repository (``convcrf-triton --name``).
        url: ``HOST:PORT`` of the server's HTTP (default port 8000) or gRPC (8001) endpoint.
        protocol: ``"http"`` or ``"grpc"``.
        timeout: seconds allowed for connecting and for every request.
        model_version: ``""`` for the server's policy (the latest version).
    """

    def __init__(self, model_name: str, url: str = "127.0.0.1:8000", protocol: str = "http",
                 timeout: float = 10.0, model_version: str = ""):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, got {protocol!r}")
        if not timeout or timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if not isinstance(model_name, str) or not model_name or "/" in model_name:
            raise ValueError(f"the Triton backend's model is the model's name on the server, "
                             f"got {model_name!r}")
        self.model_name = model_name
        self.protocol = protocol
        self.url = parse_url(url, protocol)
        self.timeout = float(timeout)
        self.model_version = str(model_version)
        self.module = import_tritonclient(protocol)

    def describe(self) -> str:
        return f"Triton server {self.url} ({self.protocol}), model {self.model_name!r}"

    def new_client(self):
        if self.protocol == "grpc":
            return self.module.InferenceServerClient(self.url)
        return self.module.InferenceServerClient(self.url, connection_timeout=self.timeout,
                                                 network_timeout=self.timeout)

    def call(self, client, method: str, *args: Any, **kwargs: Any) -> Any:
        """``client.method(...)`` with the deadline, errors turned into TritonRequestError."""
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout
        try:
            return getattr(client, method)(*args, **kwargs)
        except Exception as exc:  # InferenceServerException, socket/gevent timeouts, gRPC errors
            text = describe_error(exc)
            if "deadline" in text.lower() or "timed out" in text.lower() or "timeout" in type(exc).__name__.lower():
                text = f"no answer within {self.timeout:g} s ({text})"
            raise TritonRequestError(f"{self.describe()}: {text}") from exc

    def __call__(self) -> tuple[Any, ModelInfo]:
        """Connect and return ``(client, ModelInfo)``; raises :class:`TritonRequestError` when the
        server does not answer or the model is not ready, ``ValueError`` when the model does not
        have a convcrf model's interface."""
        client = self.new_client()
        try:
            if not self.call(client, "is_server_live"):
                raise TritonRequestError(f"{self.describe()}: the server is not live")
            if not self.call(client, "is_model_ready", self.model_name, self.model_version):
                raise TritonRequestError(f"{self.describe()}: the model is not loaded or not ready "
                                         "(check the server's log and its --model-repository)")
            if self.protocol == "grpc":
                config = self.call(client, "get_model_config", self.model_name, self.model_version,
                                   as_json=True)["config"]
            else:
                config = self.call(client, "get_model_config", self.model_name, self.model_version)
            return client, self.model_info(config)
        except BaseException:
            client.close()
            raise

    def model_info(self, config: dict) -> ModelInfo:
        inputs = {i["name"]: i for i in config.get("input", [])}
        outputs = [o["name"] for o in config.get("output", [])]
        if list(inputs) != ["image"] or not {"labels"} <= set(outputs):
            raise ValueError(f"{self.describe()} has inputs {list(inputs)} and outputs {outputs}; "
                             "convcrf models take 'image' and return 'labels' (write the "
                             "repository with convcrf-triton)")
        datatype = inputs["image"]["data_type"].replace("TYPE_", "")
        if datatype not in ("UINT8", "FP32", "FP16"):
            raise ValueError(f"{self.describe()}: 'image' has type {datatype}; expected UINT8, FP32 or FP16")
        parameters = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        try:   # ints over HTTP, strings in the protobuf JSON of gRPC
            dims = tuple(int(d) for d in inputs["image"].get("dims", (3, -1, -1)))
        except (TypeError, ValueError):
            dims = (3, -1, -1)
        return ModelInfo(datatype, outputs, int(config.get("max_batch_size", 0)), parameters,
                         dims)
