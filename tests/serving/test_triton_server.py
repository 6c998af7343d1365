"""Against a real Triton Inference Server (the stock ``tritonserver`` of the nvidia-pytriton
wheel, CPU, Python backend) serving repositories written by convcrf-triton.

The server runs from its own virtual environment (numpy<2): ``scripts/test.sh`` creates it
with ``scripts/triton_env.sh`` and sets ``CONVCRF_TRITON_PYTHON``; without that variable these
tests skip and say how to run them. Every test starts its own server on 127.0.0.1 (free ports)
and the fixture stops it (process group, bounded waits) and checks that the ports are free,
also when the test fails.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from convcrf_deploy.runtime import Segmenter
from convcrf_deploy.runtime.testing import write_toy_onnx
from convcrf_deploy.serving import TRITON_PYTHON_ENV, ModelOptions, TritonServer, write_python_model
from convcrf_deploy.serving.server import TritonServerError, port_is_free

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient is in the [test] extra")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient is in the [test] extra")
from tritonclient.utils import InferenceServerException  # noqa: E402

from convcrf_deploy.runtime.backends.triton import TritonBackend, TritonRequestError  # noqa: E402

if not os.environ.get(TRITON_PYTHON_ENV):
    pytest.skip(f"{TRITON_PYTHON_ENV} is not set: no Triton server environment. `bash "
                "scripts/test.sh` creates one (.venv-triton, nvidia-pytriton) and sets it; or run "
                f"`bash scripts/triton_env.sh` and export {TRITON_PYTHON_ENV}=$PWD/.venv-triton/bin/python",
                allow_module_level=True)

MAX_FRAME = (480, 640)


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    """A repository with the toy model as uint8 (``toy``) and float32 (``toy_f32``) input."""
    root = tmp_path_factory.mktemp("triton")
    onnx_path = write_toy_onnx(root / "toy.onnx")
    repo = root / "repo"
    write_python_model(onnx_path, repo, ModelOptions("toy", max_batch=8, queue_delay_us=5000),
                       max_frame_size=MAX_FRAME)
    write_python_model(onnx_path, repo, ModelOptions("toy_f32", max_batch=4),
                       input_dtype="float32", max_frame_size=MAX_FRAME)
    return repo


@pytest.fixture
def server(repository):
    server = TritonServer(repository)
    try:
        yield server.start()
    finally:
        ports = (server.http_port, server.grpc_port, server.metrics_port)
        process = server.process
        server.stop()
        assert process is None or process.poll() is not None, "tritonserver still running"
        assert all(port_is_free(p) for p in ports), f"ports {ports} still taken"


def frames(count: int, seed: int, size=(240, 320)) -> list[np.ndarray]:
    """Frames with colour blobs (the toy model's classes) and noise, distinct per seed."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        frame = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        small = rng.integers(0, 256, (size[0] // 16, size[1] // 16, 3), dtype=np.uint8)
        blobs = np.kron(small, np.ones((16, 16, 1), np.uint8))
        frame[: blobs.shape[0], : blobs.shape[1]] = blobs // 2 + frame[: blobs.shape[0], : blobs.shape[1]] // 2
        out.append(frame)
    return out


def test_labels_equal_local_segmenter(server, repository):
    """HTTP and gRPC, uint8 and float32 models (one server, to keep the test quick)."""
    local = Segmenter(repository.parent / "toy.onnx", return_probabilities=True)
    for seed, (protocol, model) in enumerate([("http", "toy"), ("grpc", "toy"),
                                              ("http", "toy_f32"), ("grpc", "toy_f32")]):
        url = server.http_url if protocol == "http" else server.grpc_url
        with Segmenter(model, "triton", url=url, protocol=protocol, probabilities=True,
                       return_probabilities=True) as remote:
            assert remote.metadata == local.metadata and remote.backend.has_crf
            for index, frame in enumerate(frames(3, seed=seed)):
                stamp = ("cam0", index)
                got, want = remote(frame, timestamp=stamp), local(frame)
                assert got.timestamp == stamp
                np.testing.assert_array_equal(got.labels, want.labels, err_msg=f"{protocol} {model}")
                np.testing.assert_array_equal(got.unary_labels, want.unary_labels)
                np.testing.assert_allclose(got.probabilities, want.probabilities, atol=1e-6)
            # A batch of 3 frames in one request (several frames from one client).
            batch = np.stack([local.preprocess(f)[0].copy() for f in frames(3, seed=9)])
            np.testing.assert_array_equal(remote.backend.infer({"image": batch})["labels"],
                                          local.backend.infer({"image": batch})["labels"])


def test_eight_clients_get_their_own_answers_and_the_server_batches(server, repository):
    """8 concurrent clients x 50 frames at 320x240: nothing lost, nothing mixed up, and the
    dynamic batcher formed batches > 1 (server statistics). Figures: benchmarks/bench_triton.py."""
    local = Segmenter(repository.parent / "toy.onnx")
    streams = {c: frames(50, seed=100 + c) for c in range(8)}
    expected = {c: [local(f).labels for f in fs] for c, fs in streams.items()}
    results: dict[int, list] = {c: [] for c in streams}
    errors: list[BaseException] = []
    start = threading.Barrier(8, timeout=60)

    def client(c: int) -> None:
        try:
            protocol = "grpc" if c % 2 else "http"
            url = server.grpc_url if c % 2 else server.http_url
            with Segmenter("toy", "triton", url=url, protocol=protocol, timeout=60) as seg:
                start.wait()
                for frame in streams[c]:
                    results[c].append(seg(frame).labels)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert not errors, errors
    for c in streams:
        assert len(results[c]) == 50, f"client {c} lost {50 - len(results[c])} responses"
        for i, (got, want) in enumerate(zip(results[c], expected[c])):
            assert np.array_equal(got, want), f"client {c} frame {i}: another frame's labels"
    stats = httpclient.InferenceServerClient(server.http_url, network_timeout=30) \
        .get_inference_statistics("toy")["model_stats"][0]
    assert int(stats["inference_count"]) == 400
    batch_sizes = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["batch_stats"]}
    print(f"\nbatches formed by the server (size: count): {dict(sorted(batch_sizes.items()))}")
    assert max(batch_sizes) > 1, f"no dynamic batching observed: {batch_sizes}"
    assert int(stats["execution_count"]) < 400


def _raw_infer(client_module, url, model, array, datatype):
    client = client_module.InferenceServerClient(url)
    tensor = client_module.InferInput("image", list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return client.infer(model, [tensor], outputs=[client_module.InferRequestedOutput("labels")],
                        **({"client_timeout": 30} if client_module is grpcclient else {}))


def test_bad_requests_get_errors_and_the_server_keeps_serving(server):
    for protocol in ("http", "grpc"):
        check_bad_requests(server, protocol)


def check_bad_requests(server, protocol: str) -> None:
    module, url = (httpclient, server.http_url) if protocol == "http" else (grpcclient, server.grpc_url)
    good = np.zeros((1, 3, 240, 320), np.uint8)
    h, w = MAX_FRAME
    bad = [
        (good.astype(np.float32), "FP32", "data-type"),                 # wrong dtype
        (np.zeros((1, 240, 320), np.uint8), "UINT8", "shape"),         # wrong rank
        (np.zeros((1, 3, 240, 320, 1), np.uint8), "UINT8", "shape"),   # wrong rank
        (np.zeros((1, 4, 240, 320), np.uint8), "UINT8", "shape"),      # wrong channel count
        (np.zeros((1, 3, 0, 320), np.uint8), "UINT8", "empty dimension"),  # 0-sized frame
        (np.zeros((1, 3, h + 1, w), np.uint8), "UINT8", "more than this model's limit"),  # oversized
        (np.zeros((9, 3, 24, 32), np.uint8), "UINT8", "batch"),        # batch > max_batch_size
    ]
    for array, datatype, message in bad:
        with pytest.raises(InferenceServerException) as info:
            _raw_infer(module, url, "toy", array, datatype)
        assert message in str(info.value).lower() or message in str(info.value), \
            (array.shape, datatype, str(info.value))
        labels = _raw_infer(module, url, "toy", good, "UINT8").as_numpy("labels")
        assert labels.shape == (1, 240, 320)
    # Through our backend: the same refusal is one TritonRequestError naming the server.
    backend = TritonBackend("toy", url=url, protocol=protocol)
    with pytest.raises(TritonRequestError, match=f"Triton server {url}.*limit"):
        backend.infer({"image": np.zeros((1, 3, h + 1, w), np.float32)})
    assert backend.infer({"image": good.astype(np.float32)})["labels"].shape == (1, 240, 320)


_STREAMER = textwrap.dedent("""
    import sys, numpy as np
    from convcrf_deploy.runtime.backends.triton import TritonBackend
    backend = TritonBackend("toy", url=sys.argv[1], protocol=sys.argv[2], timeout=30)
    image = np.zeros((1, 3, 240, 320), np.float32)
    print("streaming", flush=True)
    while True:
        backend.infer({"image": image})
""")


def test_killing_one_client_mid_stream_loses_nothing_for_the_others(server, repository):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__import__("convcrf_deploy").__file__).parents[1]), *sys.path]))
    victims = [subprocess.Popen([sys.executable, "-c", _STREAMER, url, protocol], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for url, protocol in ((server.http_url, "http"), (server.grpc_url, "grpc"))]
    try:
        for victim in victims:
            assert victim.stdout.readline().strip() == "streaming", victim.stderr.read()
        local = Segmenter(repository.parent / "toy.onnx")
        survivors = frames(20, seed=7)
        expected = [local(f).labels for f in survivors]
        got = []
        with Segmenter("toy", "triton", url=server.grpc_url, protocol="grpc", timeout=30) as seg:
            for i, frame in enumerate(survivors):
                if i == 5:
                    for victim in victims:  # mid-stream, requests in flight
                        victim.send_signal(signal.SIGKILL)
                got.append(seg(frame).labels)
        assert len(got) == 20 and all(np.array_equal(a, b) for a, b in zip(got, expected))
    finally:
        for victim in victims:
            victim.kill()
            victim.wait(timeout=10)
    assert server.process.poll() is None, "the server died with a client"


def test_stalled_server_times_out_instead_of_hanging():
    """A server that accepts connections and never answers: every call ends within its timeout."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    url = f"127.0.0.1:{listener.getsockname()[1]}"
    try:
        for protocol in ("http", "grpc"):
            start = time.monotonic()
            with pytest.raises(TritonRequestError, match=url):
                TritonBackend("toy", url=url, protocol=protocol, timeout=1.0)
            assert time.monotonic() - start < 15, f"{protocol}: took {time.monotonic() - start:.1f} s"
    finally:
        listener.close()


def test_convcrf_run_streams_to_the_server_with_stats(server, tmp_path):
    import json

    from convcrf_deploy.cli import run

    stats = tmp_path / "stats.json"
    assert run.main(["--video", "demo", "--backend", "triton", "--model", "toy",
                     "--url", server.grpc_url, "--protocol", "grpc", "--headless",
                     "--max-frames", "5", "--stats-json", str(stats)]) == 0
    report = json.loads(stats.read_text())
    assert report["backend"] == "triton" and report["frames"] == 5


def test_convcrf_run_reports_an_unreachable_server_in_one_line(capsys):
    from convcrf_deploy.cli import run

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert run.main(["--video", "demo", "--backend", "triton", "--model", "toy",
                     "--url", f"127.0.0.1:{port}", "--headless", "--max-frames", "1",
                     "--request-timeout", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"127.0.0.1:{port}" in err[0]


def test_server_that_fails_to_load_is_reported_and_cleaned_up(tmp_path):
    repo = tmp_path / "repo"
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text('name: "broken"\nbackend: "python"\n'
                                                  "max_batch_size: 1\n")
    (repo / "broken" / "1" / "model.py").write_text("raise RuntimeError('model file is broken')\n")
    server = TritonServer(repo, startup_timeout=120)
    with pytest.raises(TritonServerError, match="model file is broken"):
        server.start()
    assert server.process is None
    assert all(port_is_free(p) for p in (server.http_port, server.grpc_port, server.metrics_port))


def test_runtime_runs_on_numpy1_in_the_server_environment(tmp_path, repository):
    """The Python-backend model imports our runtime next to numpy<2: Segmenter end to end there
    gives the labels it gives here (numpy 2)."""
    import convcrf_deploy

    link = tmp_path / "path"
    link.mkdir()
    (link / "convcrf_deploy").symlink_to(Path(convcrf_deploy.__file__).parent)
    frame = frames(1, seed=3)[0]
    np.save(tmp_path / "frame.npy", frame)
    script = textwrap.dedent(f"""
        import numpy as np
        assert np.__version__ < "2", np.__version__
        from convcrf_deploy.runtime import Segmenter
        labels = Segmenter({str(repository.parent / 'toy.onnx')!r})(np.load({str(tmp_path / 'frame.npy')!r})).labels
        np.save({str(tmp_path / 'labels.npy')!r}, labels)
    """)
    env = dict(os.environ, PYTHONPATH=str(link))
    subprocess.run([os.environ[TRITON_PYTHON_ENV], "-c", script], env=env, check=True, timeout=120)
    local = Segmenter(repository.parent / "toy.onnx")(frame).labels
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), local)
