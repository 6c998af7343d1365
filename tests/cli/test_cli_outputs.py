"""Every command checks its output paths before it works, ends Ctrl-C with one line, and
refuses sizes it cannot allocate (field reports of a new-user trial).

Before: ``--stats-json FOLDER`` and ``-o FOLDER`` failed with a traceback after the whole run;
``--save out.mp4 --stats-json out.mp4`` silently replaced the recording with JSON; ``--save
x.png`` reported frames that were never written; Ctrl-C printed a ``KeyboardInterrupt``
traceback in convcrf-export/-train/-bench; ``--size 100000x100000`` died allocating 112 GiB;
``convcrf-export`` without onnxscript blamed the model's operations.
"""
from __future__ import annotations

import pytest

from convcrf_deploy.cli import run as run_cli
from convcrf_deploy.runtime import streams
from convcrf_deploy.files import OutputPathError, check_output_paths


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def nothing_may_run(*args, **kwargs):
    raise AssertionError("the command opened its source before refusing its output")


def test_check_output_paths(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(OutputPathError, match="is a folder"):
        check_output_paths({"--json": tmp_path / "folder"}, {})
    with pytest.raises(OutputPathError, match="does not exist"):
        check_output_paths({"--json": tmp_path / "absent" / "a.json"}, {})
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        check_output_paths({"--json": tmp_path / "file.txt" / "a.json"}, {})
    with pytest.raises(OutputPathError, match="--save and --stats-json name the same file"):
        check_output_paths({"--save": tmp_path / "o.mp4", "--stats-json": tmp_path / "o.mp4"}, {})
    check_output_paths({"--save-bag": tmp_path / "folder"}, {}, folder_outputs=("--save-bag",))
    check_output_paths({"--json": tmp_path / "new.json", "--plot": None}, {})


@pytest.mark.parametrize("args, message", [
    (["--stats-json", "{folder}"], "is a folder"),
    (["--stats-json", "{file}/s.json"], "is a file, not a folder"),
    # (--stats-json must be .json or a stream, so the clash is met with a .json name)
    (["--save", "{tmp}/o.json", "--stats-json", "{tmp}/o.json"], "name the same file"),
    (["--save", "{tmp}/o.mp4", "--stats-json", "{tmp}/o.mp4"], "cannot be written as .mp4"),
    (["--save", "{tmp}/x.png"], "use a pattern such as"),
    (["--size", "100000x100000"], "16384"),
])
def test_convcrf_run_refuses_bad_outputs_and_sizes_before_running(tmp_path, capsys, args,
                                                                   message, monkeypatch):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.txt").write_text("x")
    args = [a.format(folder=tmp_path / "folder", file=tmp_path / "file.txt", tmp=tmp_path)
            for a in args]
    monkeypatch.setattr(streams, "open_source", nothing_may_run)
    code = None
    try:
        code = run_cli.main(["--video", "demo", "--headless", "--max-frames", "1", *args])
    except SystemExit as exc:                       # argparse's usage errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()       # argparse prints its usage above the error
    assert "Traceback" not in err and message in err.splitlines()[-1], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "folder"]


def test_convcrf_export_checks_its_output_and_onnxscript(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    from convcrf_deploy.cli import export as export_cli

    (tmp_path / "folder").mkdir()
    assert export_cli.main(["demo", "-o", str(tmp_path / "folder")]) == 2
    assert "is a folder" in one_line_error(capsys)
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxscript" else real(name, *a))
    # A missing library is status 3 (README, "Exit status"); the new-user trial found 2.
    assert export_cli.main(["demo", "-o", str(tmp_path / "demo.onnx")]) == 3
    err = one_line_error(capsys)
    assert "needs onnxscript" in err and ".[torch]" in err
    assert not (tmp_path / "demo.onnx").exists()


@pytest.mark.parametrize("command", ["export", "train", "bench", "eval", "build", "triton", "seal",
                                     "run"])
def test_ctrl_c_ends_every_command_with_one_line(command, capsys, monkeypatch):
    import importlib

    module = importlib.import_module(f"convcrf_deploy.cli.{command}")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    # Ctrl-C during argument parsing stands for Ctrl-C anywhere inside main.
    monkeypatch.setattr(module, "build_parser", interrupted)
    assert module.main([]) == 130
    assert one_line_error(capsys) == f"convcrf-{command}: interrupted; no partial output was written"


def test_bench_refuses_sizes_it_cannot_allocate(capsys):
    from convcrf_deploy.cli import bench

    with pytest.raises(SystemExit) as exit_info:
        bench.main(["demo", "--sizes", "640x480,100000x100000"])
    assert exit_info.value.code == 2 and "8..8192" in capsys.readouterr().err


# ---- issue 21: formats an output cannot be written in ----------------------------------------

@pytest.mark.parametrize("name, message", [
    ("out.gif", "one image cannot hold a video"), ("out.pnm", "one image cannot hold a video"),
    ("out.sr", "one image cannot hold a video"), ("out.avif", "one image cannot hold a video"),
    ("out.wmv", "supported: .mp4, .avi"), ("out.webm", "supported: .mp4, .avi"),
    ("out", "supported: .mp4, .avi"), ("f_%03d.gif", "supported: .png"),
    ("f_%03d.pgm", "supported: .png"), ("f_%s.png", "one integer field"),
])
def test_convcrf_run_refuses_a_recording_it_cannot_write_in_full(tmp_path, capsys, monkeypatch,
                                                                 name, message):
    # Field report: --save out.gif exited 0, kept 1 frame of 10 and left 9 hidden temp files.
    monkeypatch.setattr(streams, "open_source", nothing_may_run)
    assert run_cli.main(["--video", "demo", "--headless", "--max-frames", "10",
                         "--save", str(tmp_path / name)]) == 2
    err = one_line_error(capsys)
    assert message in err and f"--save {tmp_path / name}" in err
    assert list(tmp_path.iterdir()) == []


def test_every_command_refuses_output_formats_before_working(tmp_path, capsys):
    from convcrf_deploy.cli import bench, build, triton

    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"not really onnx")          # refused before it is read
    cases = [
        (bench.main, ["demo", "--plot", str(tmp_path / "p.gif")], "supported: .png, .svg"),
        (build.main, [str(onnx_file), "-o", str(tmp_path / "m.onnx.bin")],
         "supported: .engine, .plan, .trt"),
        (build.main, [str(onnx_file), "-o", "-"], "cannot be - (standard output)"),
        (triton.main, [str(onnx_file), "-o", str(onnx_file)], "is a file"),
        (triton.main, [str(tmp_path / "repo" / "convcrf" / "1" / "model.onnx"), "-o",
                       str(tmp_path / "repo")], "lies inside"),
    ]
    pytest.importorskip("torch")
    from convcrf_deploy.cli import export
    cases.append((export.main, ["demo", "-o", str(tmp_path / "demo.pt")], "supported: .onnx"))
    for main, args, message in cases:
        assert main(args) == 2, args
        err = one_line_error(capsys)
        assert message in err, (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_json_outputs_may_be_standard_output(tmp_path, capfd):
    import json

    from convcrf_deploy.runtime.testing import write_toy_onnx
    model = write_toy_onnx(tmp_path / "toy.onnx", input_size=(24, 32), resize="stretch")
    capfd.readouterr()
    assert run_cli.main(["--video", "demo", "--size", "64x48", "--max-frames", "2",
                         "--headless", "--model", str(model), "--stats-json", "-"]) == 0
    captured = capfd.readouterr()
    assert json.loads(captured.out)["frames"] == 2       # stdout carries the JSON alone
    assert "2 frames" in captured.err                     # the summary went to stderr
