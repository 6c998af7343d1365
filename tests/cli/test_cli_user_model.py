"""Every command that takes a model loads the user's own network (issue 18 item 1): the
checkpoint's architecture comes from ``--import`` (a module path or a dotted name) or an
installed package's entry point, never from the file; the same ``--allow-pickle`` everywhere;
unaries saved without class code (``.pt2``, TorchScript) through export, run, bench and eval."""
from __future__ import annotations

import importlib
import json
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")

from convcrf_deploy.cli.harness import ExitCode
from convcrf_deploy.user_code import ENTRY_POINT_GROUP

from user_model_fixtures import (ARCHITECTURE, NUM_CLASSES, fresh_registry,  # noqa: F401
                                 save_program, save_torchscript, user_checkpoint,
                                 write_user_module)

COLOURS = np.array([[120, 120, 120], [200, 60, 50], [50, 140, 210], [30, 200, 30]], np.uint8)
BENCH = ["--backends", "torch", "--sizes", "40x32", "--iterations", "1", "--warmup", "0",
         "--threads", "1"]


def labelled_folder(folder, count=2, height=30, width=36, classes=NUM_CLASSES):
    folder.mkdir(exist_ok=True)
    for index in range(count):
        labels = np.zeros((height, width), np.uint8)
        labels[4:20, 3 + index:18] = 1 % classes
        labels[14:28, 20:34] = 2 % classes
        cv2.imwrite(str(folder / f"img{index}_0img.png"), COLOURS[labels][:, :, ::-1])
        cv2.imwrite(str(folder / f"img{index}_5labels.png"), labels)
    return folder


def command_lines(model, tmp_path, classes=NUM_CLASSES):
    """name -> (module, argv) of the five commands on ``model``, each a small, fast run."""
    data = str(labelled_folder(tmp_path / "data", classes=classes))
    return {
        "export": ("export", [model, "-o", str(tmp_path / "out.onnx"), "--height", "24",
                              "--width", "28"]),
        "run": ("run", ["--video", "demo", "--model", model, "--headless", "--max-frames", "2",
                        "--size", "40x32"]),
        "bench": ("bench", [model, *BENCH]),
        "eval": ("eval", ["dataset", model, "--data", data, "--quiet"]),
        "train": ("train", ["crf", "--unary-model", model, "--data", data, "--epochs", "1",
                            "--holdout", "0.5", "--quiet"]),
    }


def run_command(module, argv):
    return importlib.import_module(f"convcrf_deploy.cli.{module}").main(argv)


COMMANDS = ["export", "run", "bench", "eval", "train"]


@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_loads_the_users_network_with_import(name, user_checkpoint, tmp_path,
                                                          capsys):
    module_path, checkpoint = user_checkpoint
    module, argv = command_lines(str(checkpoint), tmp_path)[name]
    assert run_command(module, [*argv, "--import", str(module_path)]) == 0, \
        capsys.readouterr().err
    if name == "export":
        assert (tmp_path / "out.onnx").is_file()


@pytest.mark.parametrize("name", COMMANDS)
def test_without_import_the_one_line_error_names_import_and_the_entry_point(
        name, user_checkpoint, tmp_path, capsys):
    _, checkpoint = user_checkpoint
    module, argv = command_lines(str(checkpoint), tmp_path)[name]
    assert run_command(module, argv) == ExitCode.USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert ARCHITECTURE in err and "--import" in err and ENTRY_POINT_GROUP in err, err


def test_import_by_dotted_module_name(user_checkpoint, tmp_path, capsys, monkeypatch):
    module_path, checkpoint = user_checkpoint
    monkeypatch.syspath_prepend(str(module_path.parent))
    assert run_command("bench", [str(checkpoint), *BENCH, "--import", "user_nets"]) == 0, \
        capsys.readouterr().err


@pytest.mark.parametrize("name", COMMANDS)
def test_a_module_that_raises_is_one_line_naming_it_and_its_exception(name, tmp_path, capsys,
                                                                       fresh_registry):
    broken = tmp_path / "broken_nets.py"
    broken.write_text("import torch\nraise RuntimeError('no GPU found in the lab')\n")
    module, argv = command_lines("demo", tmp_path)[name]
    assert run_command(module, [*argv, "--import", str(broken)]) == ExitCode.USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "broken_nets.py" in err and "RuntimeError: no GPU found in the lab" in err, err


def test_a_missing_module_says_so(tmp_path, capsys, fresh_registry):
    assert run_command("bench", ["demo", *BENCH, "--import", "no_such_user_module"]) == 2
    err = capsys.readouterr().err
    assert "no module named 'no_such_user_module'" in err
    assert run_command("bench", ["demo", *BENCH, "--import", str(tmp_path / "gone.py")]) == 2
    assert "no such file" in capsys.readouterr().err


class _EntryPoint:
    """What importlib.metadata returns for a declared entry point."""

    def __init__(self, name, value, target):
        self.name, self.value, self.group, self._target = name, value, ENTRY_POINT_GROUP, target
        self.dist = type("Dist", (), {"name": "user-nets"})()

    def load(self):
        if isinstance(self._target, BaseException):
            raise self._target
        return self._target


def test_entry_point_of_an_installed_distribution_is_found_without_import(
        user_checkpoint, tmp_path, capsys, monkeypatch):
    """A real dist-info on sys.path, as `pip install` leaves it: found through
    importlib.metadata, loaded only because the checkpoint names the architecture."""
    module_path, checkpoint = user_checkpoint
    site = tmp_path / "site"
    package = site / "convcrf_test_dist"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(module_path.read_text().replace(
        f'register_unary("{ARCHITECTURE}", SkipNet)', ""))
    info = site / "convcrf_test_dist-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: convcrf-test-dist\n"
                                   "Version: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n"
                                           f"{ARCHITECTURE} = convcrf_test_dist:SkipNet\n")
    monkeypatch.syspath_prepend(str(site))
    assert "convcrf_test_dist" not in sys.modules
    assert run_command("bench", [str(checkpoint), *BENCH]) == 0, capsys.readouterr().err
    assert "convcrf_test_dist" in sys.modules      # imported because the checkpoint asked


def test_an_entry_point_that_fails_to_load_is_one_line(user_checkpoint, capsys, monkeypatch):
    import convcrf_deploy.user_code as user_code

    _, checkpoint = user_checkpoint
    failing = _EntryPoint(ARCHITECTURE, "user_nets.broken:SkipNet",
                          ImportError("cannot import name 'SkipNet'"))
    unrelated = _EntryPoint("other_net", "x:Y", AssertionError("must not be loaded"))
    monkeypatch.setattr(user_code, "_entry_points", lambda: [unrelated, failing])
    assert run_command("eval", ["dataset", str(checkpoint), "--data", "unused"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "user-nets" in err and ENTRY_POINT_GROUP in err and "ImportError" in err, err


@pytest.mark.parametrize("name", COMMANDS)
def test_allow_pickle_is_on_every_command_with_the_same_words(name, tmp_path, capsys,
                                                              fresh_registry):
    """A checkpoint with a pickled (unregistered) unary: refused without --allow-pickle,
    loaded with it."""
    from convcrf_deploy import save_model
    from convcrf_deploy.user_code import import_user_code

    (module,) = import_user_code([str(write_user_module(tmp_path / "code"))])
    from user_model_fixtures import user_model
    model = user_model(module)
    model.unary_spec = None                      # as for a module nobody registered
    save_model(model, tmp_path / "pickled.pt")
    module_name, argv = command_lines(str(tmp_path / "pickled.pt"), tmp_path)[name]
    assert run_command(module_name, argv) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "--allow-pickle" in err and "pickled" in err, err
    assert run_command(module_name, [*argv, "--allow-pickle"]) == 0, capsys.readouterr().err
    from convcrf_deploy.cli.harness import ALLOW_PICKLE_HELP
    with pytest.raises(SystemExit):
        run_command(module_name, [*argv[:1], "--help"] if module_name in ("eval", "train")
                    else ["--help"])
    assert " ".join(ALLOW_PICKLE_HELP.split()[:6]) in " ".join(capsys.readouterr().out.split())


# ---- unaries saved without class code --------------------------------------------------------

@pytest.fixture(params=["pt2", "torchscript"])
def unary_file(request, tmp_path):
    if request.param == "pt2":
        return save_program(tmp_path / "unary.pt2")
    return save_torchscript(tmp_path / "unary_ts.pt")


def test_unary_file_through_export_with_crf_settings_and_metadata(unary_file, tmp_path, capsys):
    import onnx
    from convcrf_deploy.metadata import ModelMetadata

    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"class_names": ["ground", "tree", "water"],
                                "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}))
    out = tmp_path / "model.onnx"
    assert run_command("export", [str(unary_file), "-o", str(out), "--metadata", str(meta),
                                  "--crf-config", "filter_size=5,blur=2,iterations=2",
                                  "--height", "24", "--width", "28"]) == 0, \
        capsys.readouterr().err
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    metadata = ModelMetadata.from_onnx_props(props)
    assert metadata.class_names == ["ground", "tree", "water"]
    assert metadata.mean == (0.5, 0.5, 0.5)
    assert json.loads(props["convcrf.crf_config"])["filter_size"] == 5


def test_unary_file_runs_benches_and_evaluates(unary_file, tmp_path, capsys):
    from convcrf_deploy import ConvCRF, CRFConfig
    from convcrf_deploy.training import save_crf

    crf_path = tmp_path / "crf.pt"
    save_crf(ConvCRF(CRFConfig(num_classes=3, filter_size=3, blur=2, iterations=1)), crf_path)
    settings = ["--crf", str(crf_path), "--class-names", "a,b,c"]
    commands = command_lines(str(unary_file), tmp_path, classes=3)
    for name in ("run", "bench", "eval"):
        module, argv = commands[name]
        stats = ["--stats-json", str(tmp_path / "stats.json")] if name == "run" else []
        assert run_command(module, [*argv, *settings, *stats]) == 0, \
            (name, capsys.readouterr().err)
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["backend"] == "torch" and stats["frames"] == 2


def test_unary_file_settings_that_do_not_fit_are_one_line(unary_file, tmp_path, capsys):
    cases = [(["--class-names", "a,b"], "outputs 3 classes"),
             (["--crf-config", "filter_size=4"], "filter_size"),
             (["--metadata", str(tmp_path / "missing.json")], "--metadata")]
    for extra, message in cases:
        assert run_command("bench", [str(unary_file), *BENCH, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


def test_unary_settings_with_a_checkpoint_are_refused(capsys):
    assert run_command("bench", ["demo", *BENCH, "--class-names", "a,b"]) == 2
    assert "apply to a unary saved without class code" in capsys.readouterr().err


def test_train_on_a_unary_file_writes_a_crf_checkpoint(tmp_path, capsys):
    from convcrf_deploy.training import load_crf

    unary = save_program(tmp_path / "unary.pt2")
    out = tmp_path / "trained_crf.pt"
    _, argv = command_lines(str(unary), tmp_path, classes=3)["train"]
    assert run_command("train", [*argv, "--out", str(out)]) == 0, capsys.readouterr().err
    assert load_crf(out).config.num_classes == 3
    # ... which the other commands take with --crf
    assert run_command("bench", [str(unary), *BENCH, "--crf", str(out)]) == 0
