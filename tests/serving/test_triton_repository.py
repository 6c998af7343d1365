"""convcrf-triton: the model repository it writes, its refusals and its output safety
(no server needed; tests/test_triton_server.py serves what it writes)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from convcrf_deploy.cli import triton as triton_cli
from convcrf_deploy.metadata import ModelMetadata
from convcrf_deploy.runtime.testing import write_toy_onnx
from convcrf_deploy.serving import repository
from convcrf_deploy.serving.repository import (EngineProfile, ModelOptions, RepositoryError,
                                               write_python_model, write_tensorrt_model)


@pytest.fixture
def toy(tmp_path) -> Path:
    return write_toy_onnx(tmp_path / "toy.onnx")


def parse_parameters(config: str) -> dict[str, str]:
    """The string parameters of a config.pbtxt written by render_config (one per line)."""
    out = {}
    for line in config.splitlines():
        if line.startswith("parameters {"):
            key = line.split('key: "', 1)[1].split('"', 1)[0]
            value = line.split("string_value: ", 1)[1].rsplit(" } }", 1)[0]
            out[key] = json.loads(value)  # our quoting is a subset of JSON string syntax
    return out


def test_python_model_config_carries_interface_batching_and_metadata(toy, tmp_path):
    target = write_python_model(toy, tmp_path / "repo", ModelOptions("seg", max_batch=4, instances=3,
                                                                     queue_delay_us=500),
                                input_dtype="float32", max_frame_size=(480, 640), threads=2)
    assert target == tmp_path / "repo" / "seg"
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()) == \
        ["1/model.onnx", "1/model.py", "README.md", "config.pbtxt", "convcrf-triton.json"]
    config = (target / "config.pbtxt").read_text()
    assert 'name: "seg"' in config and 'backend: "python"' in config
    assert "max_batch_size: 4" in config
    assert '{ name: "image" data_type: TYPE_FP32 dims: [ 3, -1, -1 ] }' in config
    assert '{ name: "labels" data_type: TYPE_INT64 dims: [ -1, -1 ] }' in config
    assert '{ name: "probabilities" data_type: TYPE_FP32 dims: [ 5, -1, -1 ] }' in config
    assert "dynamic_batching { max_queue_delay_microseconds: 500 }" in config
    assert "instance_group [ { count: 3 kind: KIND_CPU } ]" in config
    params = parse_parameters(config)
    metadata = ModelMetadata.from_onnx_props(params)  # what the triton client backend reads
    assert metadata.class_names == ["background", "disc", "box", "triangle", "star"]
    assert params["convcrf.max_pixels"] == str(480 * 640)
    assert params["convcrf.intra_op_threads"] == "2"
    readme = (target / "README.md").read_text()
    assert "tritonserver --model-repository" in readme and "--backend triton --model seg" in readme
    assert "TritonPythonModel" in (target / "1" / "model.py").read_text()


def test_uint8_is_the_default_input(toy, tmp_path):
    config = (write_python_model(toy, tmp_path / "r") / "config.pbtxt").read_text()
    assert '{ name: "image" data_type: TYPE_UINT8 dims: [ 3, -1, -1 ] }' in config


def test_existing_model_is_refused_without_force_and_replaced_with_it(toy, tmp_path):
    target = write_python_model(toy, tmp_path / "repo", ModelOptions(max_batch=2))
    other = tmp_path / "repo" / "someone_elses_model"
    other.mkdir()
    (other / "config.pbtxt").write_text("keep me")
    with pytest.raises(RepositoryError, match="--force"):
        write_python_model(toy, tmp_path / "repo", ModelOptions(max_batch=4))
    assert "max_batch_size: 2" in (target / "config.pbtxt").read_text()
    (target / "1" / "__pycache__").mkdir()  # what a server leaves behind
    (target / "1" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"x")
    write_python_model(toy, tmp_path / "repo", ModelOptions(max_batch=4), force=True)
    assert "max_batch_size: 4" in (target / "config.pbtxt").read_text()
    assert (other / "config.pbtxt").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_force_never_deletes_files_it_did_not_write(toy, tmp_path):
    target = write_python_model(toy, tmp_path / "repo")
    (target / "2").mkdir()
    (target / "2" / "model.onnx").write_bytes(b"the user's version 2")
    with pytest.raises(RepositoryError, match="did not write"):
        write_python_model(toy, tmp_path / "repo", force=True)
    assert (target / "2" / "model.onnx").read_bytes() == b"the user's version 2"
    foreign = tmp_path / "repo2" / "convcrf"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(RepositoryError, match="not written by convcrf-triton"):
        write_python_model(toy, tmp_path / "repo2", force=True)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_failure_while_writing_leaves_previous_model_intact(toy, tmp_path, monkeypatch):
    target = write_python_model(toy, tmp_path / "repo", ModelOptions(max_batch=2))
    before = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}

    def broken_readme(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(repository, "_readme", broken_readme)
    with pytest.raises(OSError, match="disk full"):
        write_python_model(toy, tmp_path / "repo", ModelOptions(max_batch=8), force=True)
    assert {p: p.read_bytes() for p in target.rglob("*") if p.is_file()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_non_convcrf_onnx_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(tmp_path / "foreign.onnx"))
    with pytest.raises(RepositoryError, match="convcrf-export"):
        write_python_model(tmp_path / "foreign.onnx", tmp_path / "repo")
    (tmp_path / "garbage.onnx").write_bytes(b"\x00not onnx")
    with pytest.raises(RepositoryError, match="not a readable ONNX model"):
        write_python_model(tmp_path / "garbage.onnx", tmp_path / "repo")
    assert not (tmp_path / "repo" / "convcrf").exists()


@pytest.mark.parametrize("name", ["", "a/b", "../x", ".hidden", "has space"])
def test_bad_model_names_are_refused(name):
    with pytest.raises(RepositoryError, match="model name"):
        ModelOptions(name)


# -- GPU repository (written and checked here; served only where there is a GPU) --------------
def test_tensorrt_model_config_and_command(toy, tmp_path):
    engine = tmp_path / "toy.engine"
    engine.write_bytes(b"serialized engine bytes")
    target = write_tensorrt_model(toy, engine, tmp_path / "repo", ModelOptions("gpu", max_batch=8),
                                  plugin=tmp_path / "libconvcrf_trt_plugin_static_reg.so",
                                  profile=EngineProfile((1, 3, 240, 320), (8, 3, 240, 320)))
    config = (target / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in config
    assert '{ name: "image" data_type: TYPE_FP32 dims: [ 3, 240, 320 ] }' in config  # static H, W
    assert '{ name: "labels" data_type: TYPE_INT64 dims: [ 240, 320 ] }' in config
    assert "instance_group [ { count: 1 kind: KIND_GPU } ]" in config
    assert (target / "1" / "model.plan").read_bytes() == b"serialized engine bytes"
    readme = (target / "README.md").read_text()
    assert "--backend-config=tensorrt,plugins=" in readme and "LD_PRELOAD=" in readme
    dynamic = write_tensorrt_model(toy, engine, tmp_path / "repo", ModelOptions("dyn", max_batch=4),
                                   profile=EngineProfile((1, 3, 120, 160), (4, 3, 480, 640)),
                                   frame_sizes=[(240, 320), (480, 640)])
    assert "dims: [ 3, -1, -1 ]" in (dynamic / "config.pbtxt").read_text()


@pytest.mark.parametrize("profile, max_batch, sizes, message", [
    (((1, 3, 240, 320), (4, 3, 240, 320)), 8, None, "batch 1..4"),
    (((2, 3, 240, 320), (8, 3, 240, 320)), 8, None, "batch 2..8"),
    (((1, 3, 240, 320), (8, 3, 240, 320)), 8, [(480, 640)], "640x480 is outside"),
    (((1, 3, 300, 400), (8, 3, 480, 640)), 8, None, "320x240 is outside"),  # model's input size
])
def test_engine_profile_must_cover_batch_and_frame_sizes(toy, tmp_path, profile, max_batch, sizes,
                                                         message):
    engine = tmp_path / "toy.engine"
    engine.write_bytes(b"x")
    with pytest.raises(RepositoryError, match=message):
        write_tensorrt_model(toy, engine, tmp_path / "repo", ModelOptions(max_batch=max_batch),
                             profile=EngineProfile(*profile), frame_sizes=sizes)
    assert not (tmp_path / "repo" / "convcrf").exists()


def test_engine_without_profile_and_without_tensorrt_is_refused_clearly(toy, tmp_path):
    engine = tmp_path / "toy.engine"
    engine.write_bytes(b"x")
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here: the profile would be read from the engine")
    with pytest.raises(RepositoryError, match="--min NxCxHxW --max NxCxHxW"):
        write_tensorrt_model(toy, engine, tmp_path / "repo")


# -- the command ----------------------------------------------------------------------------
def test_cli_writes_repository_and_prints_server_command(toy, tmp_path, capsys):
    assert triton_cli.main([str(toy), "-o", str(tmp_path / "repo"), "--max-batch", "4"]) == 0
    out = capsys.readouterr().out
    assert f"tritonserver --model-repository={(tmp_path / 'repo').resolve()}" in out
    # Second new-user trial: the repository's README installed convcrf-deploy from the
    # package index, where it is not (install.py: from the checkout).
    written = (tmp_path / "repo" / "convcrf" / "README.md").read_text()
    assert "pip install convcrf-deploy " not in written and "pip install /path/to/" in written
    assert triton_cli.main([str(toy), "-o", str(tmp_path / "repo")]) == 2   # a refused output
    assert "--force" in capsys.readouterr().err
    # Second new-user trial: a repository inside a model's version folder was written.
    assert triton_cli.main([str(toy), "-o", str(tmp_path / "repo" / "convcrf" / "1"),
                            "--name", "y"]) == 2
    assert "lies inside the model folder" in capsys.readouterr().err
    assert not (tmp_path / "repo" / "convcrf" / "1" / "y").exists()


@pytest.mark.parametrize("extra, message", [
    (["--plugin", "lib.so"], "only apply with --engine"),
    (["--engine", "x.engine", "--min", "1x3x240x320"], "both --min and --max"),
    # new-user trial: a missing model was status 1
    (["--name", "bad/name"], "must be a plain folder name"),
])
def test_cli_usage_errors(toy, tmp_path, capsys, extra, message):
    """Bad arguments and unusable inputs are status 2 (README, "Exit status")."""
    assert triton_cli.main([str(toy), "-o", str(tmp_path / "repo"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_cli_engine_plan_with_stated_profile(toy, tmp_path, capsys):
    engine = tmp_path / "toy.engine"
    engine.write_bytes(b"x")
    plugin = tmp_path / "libconvcrf_trt_plugin_static_reg.so"
    plugin.write_bytes(b"x")
    assert triton_cli.main([str(toy), "-o", str(tmp_path / "repo"), "--engine", str(engine),
                            "--plugin", str(plugin), "--min", "1x3x240x320",
                            "--max", "8x3x240x320"]) == 0
    assert f'--backend-config=tensorrt,plugins="{plugin.resolve()}"' in capsys.readouterr().out
    assert triton_cli.main([str(toy), "-o", str(tmp_path / "repo2"), "--engine", str(engine),
                            "--min", "1x3x240x320", "--max", "2x3x240x320"]) == 2
    assert "--max-batch 2" in capsys.readouterr().err


def test_engine_profile_is_checked_at_the_sizes_sent_after_padding(toy, tmp_path):
    """Frames are padded to the unary's input constraints before they are sent (issue 18):
    240x320 frames of a stride-32 model arrive as 256x320."""
    import onnx

    from convcrf_deploy import exported_model
    model = onnx.load(str(toy))
    props = {p.key: p.value for p in model.metadata_props}
    props["convcrf.pad_multiple"] = "32"
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    exported_model.write(model, toy)        # sealed: a deliberate edit
    engine = tmp_path / "toy.engine"
    engine.write_bytes(b"x")
    with pytest.raises(RepositoryError, match="320x256 is outside"):
        write_tensorrt_model(toy, engine, tmp_path / "repo",
                             profile=EngineProfile((1, 3, 240, 320), (8, 3, 240, 320)))
    assert write_tensorrt_model(toy, engine, tmp_path / "repo",
                                profile=EngineProfile((1, 3, 256, 320), (8, 3, 256, 320)))


def test_cli_unusable_models_are_status_2(toy, tmp_path, capsys):
    """New-user trial: a missing, an empty and a truncated model were status 1 ("the work
    failed") where every other command says 2 (an input that cannot be used)."""
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(toy.read_bytes()[:len(toy.read_bytes()) // 2])
    for model in (tmp_path / "nope.onnx", empty, truncated):
        assert triton_cli.main([str(model), "-o", str(tmp_path / "repo")]) == 2
        err = capsys.readouterr().err
        assert model.name in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "repo" / "convcrf").exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_cli_refuses_a_repository_it_cannot_write_or_serve(toy, tmp_path, capsys):
    """Second new-user trial: -o /proc/repo was status 1 after the model was read, and a
    --max-frame-size below the model's input size wrote a model that refuses every client."""
    assert triton_cli.main([str(toy), "-o", "/proc/repo"]) == 2
    assert "cannot create files in /proc" in capsys.readouterr().err
    assert triton_cli.main([str(toy), "-o", str(tmp_path / "repo"), "--max-frame-size",
                            "8x8"]) == 2
    err = capsys.readouterr().err
    assert "--max-frame-size 8x8 is below" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "repo" / "convcrf").exists()
