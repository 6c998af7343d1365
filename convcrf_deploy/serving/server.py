"""`TritonServer`: start and stop a local ``tritonserver`` from the ``nvidia-pytriton`` wheel.

The wheel bundles a stock ``tritonserver`` binary and its Python backend, so a CPU machine can
serve the Python-backend repository of ``convcrf-triton`` without Docker. What it takes
(checked on the project's machines, docs/serving.md):

* an interpreter with ``nvidia-pytriton`` installed (it pins ``numpy<2``, hence its own virtual
  environment: ``scripts/triton_env.sh`` makes one);
* the Python-backend stub built for that interpreter's minor version
  (``python_backend_stubs/3.X/triton_python_backend_stub``) placed as
  ``backends/python/triton_python_backend_stub``: we assemble that folder in a temporary
  directory of our own instead of writing into site-packages;
* ``LD_LIBRARY_PATH`` = the interpreter's ``LIBDIR`` (else the stub may pick the system's
  ``libpython3.X.so`` and fail with ``'_thread.RLock' object has no attribute
  '_recursion_count'``) + the wheel's ``nvidia_pytriton.libs``;
* ``PYTHONPATH`` reaching the packages the model imports: the environment's site-packages and
  the ``convcrf_deploy`` package this process imported (linked, not installed, so that the
  server runs exactly the code under test).

The server listens on 127.0.0.1 only, on free ports. :meth:`TritonServer.stop` ends the whole
process group (server and stubs) with bounded waits and checks that the ports are free again.
This is a development and test tool; production servers run NVIDIA's container
(docs/serving.md).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

#: environment variable naming the interpreter of the server environment (set by scripts/test.sh).
TRITON_PYTHON_ENV = "CONVCRF_TRITON_PYTHON"

_PROBE = r"""
import json, os, sys, sysconfig
import pytriton
site = [p for p in sys.path if p.endswith("site-packages")]
print(json.dumps({"pytriton": os.path.dirname(pytriton.__file__),
                  "libdir": sysconfig.get_config_var("LIBDIR"),
                  "version": "%d.%d" % sys.version_info[:2], "site": site}))
"""


class TritonServerError(RuntimeError):
    """The server could not be set up, did not become ready, or did not stop."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether a new server could listen on 127.0.0.1:``port`` (connections of a stopped one
    lingering in TIME_WAIT do not count: servers, tritonserver included, bind with
    SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class TritonServer:
    """A ``tritonserver`` process serving ``model_repository`` on 127.0.0.1.

    Args:
        model_repository: folder written by ``convcrf-triton`` (Python-backend models).
        python: interpreter of an environment with ``nvidia-pytriton`` (default:
            ``$CONVCRF_TRITON_PYTHON``).
        startup_timeout: seconds to wait for ``/v2/health/ready``.
        extra_args: more ``tritonserver`` options.

    Use as a context manager; ``http_url``/``grpc_url`` are ``host:port`` strings for
    ``tritonclient``, ``metrics_url`` is Prometheus' ``http://.../metrics``. ``log`` holds the
    server's output (also after it stopped). Not thread-safe: start and stop from one thread.

    Raises:
        TritonServerError: no interpreter given, ``nvidia-pytriton`` missing, no stub for that
            Python version, the server exited or was not ready within ``startup_timeout``.
    """

    def __init__(self, model_repository: str | os.PathLike, python: str | os.PathLike | None = None,
                 startup_timeout: float = 120.0, extra_args: Sequence[str] = ()):
        self.model_repository = Path(model_repository).resolve()
        python = python or os.environ.get(TRITON_PYTHON_ENV)
        if not python:
            raise TritonServerError(
                f"no server environment: set {TRITON_PYTHON_ENV} to the python of a virtual "
                "environment with nvidia-pytriton (bash scripts/triton_env.sh creates "
                ".venv-triton)")
        self.python = Path(python)
        self.startup_timeout = float(startup_timeout)
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen | None = None
        self.http_port = self.grpc_port = self.metrics_port = 0
        self._workdir: Path | None = None
        self._log_handle = None
        self.log = ""

    # -- addresses ------------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    # -- setup ----------------------------------------------------------------------------------
    def _probe(self) -> dict:
        if not self.python.exists():
            raise TritonServerError(f"{TRITON_PYTHON_ENV}={self.python} does not exist; run "
                                    "bash scripts/triton_env.sh")
        try:
            out = subprocess.run([str(self.python), "-c", _PROBE], capture_output=True,
                                 text=True, timeout=60, check=True).stdout
        except subprocess.CalledProcessError as exc:
            raise TritonServerError(f"{self.python} cannot import pytriton ({exc.stderr.strip()[-300:]}); "
                                    "install nvidia-pytriton there (bash scripts/triton_env.sh)") from None
        except subprocess.TimeoutExpired:
            raise TritonServerError(f"{self.python} did not answer within 60 s") from None
        return json.loads(out.strip().splitlines()[-1])

    def _assemble(self, info: dict) -> tuple[list[str], dict[str, str]]:
        root = Path(info["pytriton"]) / "tritonserver"
        binary = root / "bin" / "tritonserver"
        stub = root / "python_backend_stubs" / info["version"] / "triton_python_backend_stub"
        if not binary.is_file() or not stub.is_file():
            raise TritonServerError(f"nvidia-pytriton at {root} has no tritonserver binary or no "
                                    f"Python-backend stub for Python {info['version']}")
        self._workdir = Path(tempfile.mkdtemp(prefix="convcrf-triton-"))
        python_backend = self._workdir / "backends" / "python"
        python_backend.mkdir(parents=True)
        for item in (root / "backends" / "python").iterdir():
            if item.is_file():
                (python_backend / item.name).symlink_to(item)
        shutil.copy2(stub, python_backend / "triton_python_backend_stub")
        # The package under test, alone: its site-packages would bring numpy 2 along.
        package = Path(__file__).resolve().parents[1]
        (self._workdir / "pythonpath").mkdir()
        (self._workdir / "pythonpath" / package.name).symlink_to(package)

        env = dict(os.environ)
        libs = Path(info["pytriton"]).parent / "nvidia_pytriton.libs"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (info["libdir"], str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
        env["PYTHONPATH"] = os.pathsep.join([str(self._workdir / "pythonpath"), *info["site"]])
        # One intra-op thread per instance unless the repository says otherwise; a CPU server
        # scales with instance_group count.
        env.setdefault("OMP_NUM_THREADS", "1")
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        command = [str(binary), f"--model-repository={self.model_repository}",
                   f"--backend-directory={self._workdir / 'backends'}",
                   "--http-address=127.0.0.1", f"--http-port={self.http_port}",
                   "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
                   "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
                   "--exit-on-error=true", "--exit-timeout-secs=5", "--strict-readiness=true",
                   *self.extra_args]
        return command, env

    def start(self) -> "TritonServer":
        """Start the server and wait until it and its models are ready."""
        if self.process is not None:
            return self
        if not self.model_repository.is_dir():
            raise TritonServerError(f"model repository {self.model_repository} does not exist")
        info = self._probe()
        try:
            command, env = self._assemble(info)
            self._log_handle = open(self._workdir / "server.log", "wb")
            # A new session: stop() ends the server and its Python-backend stubs as one group.
            self.process = subprocess.Popen(command, env=env, stdout=self._log_handle,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
            deadline = time.monotonic() + self.startup_timeout
            while True:
                if self.process.poll() is not None:
                    raise TritonServerError(f"tritonserver exited with {self.process.returncode} "
                                            f"during start-up:\n{self.errors()}")
                if self._ready():
                    return self
                if time.monotonic() > deadline:
                    raise TritonServerError(f"tritonserver not ready after {self.startup_timeout:.0f} s:"
                                            f"\n{self.errors()}")
                time.sleep(0.25)
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def errors(self) -> str:
        """The error lines of the server's log (model load failures and the like), without the
        NVML/CUDA complaints every start on a machine without a GPU prints."""
        harmless = ("CudaDriverHelper", "NVML", "DCGM", "CUDA driver")
        lines = [line for line in self._read_log().splitlines()
                 if (re.match(r"^E\d{4} ", line) or line.startswith("error:"))
                 and not any(h in line for h in harmless)]
        return "\n".join(lines)[-4000:] or self._read_log()[-2000:]

    def _read_log(self) -> str:
        if self._workdir is not None and (self._workdir / "server.log").is_file():
            return (self._workdir / "server.log").read_text(errors="replace")
        return self.log

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``timeout`` s, wait for the ports to be
        released (bounded), remove the temporary folder. Safe to call twice."""
        process, self.process = self.process, None
        if process is not None:
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    process.wait(timeout=wait)
                except subprocess.TimeoutExpired:
                    continue
                # The leader is gone; stubs in the group may still be exiting.
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                break
            if process.poll() is None:
                raise TritonServerError(f"tritonserver (pid {process.pid}) did not stop")
            deadline = time.monotonic() + 10.0
            ports = [p for p in (self.http_port, self.grpc_port, self.metrics_port) if p]
            while not all(port_is_free(p) for p in ports) and time.monotonic() < deadline:
                time.sleep(0.1)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        if self._workdir is not None:
            self.log = self._read_log()
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
