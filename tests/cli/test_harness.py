"""The one CLI harness (issue 19): exit statuses, error handling and argument types in one place,
the same for every command, and the table in the README saying what each status means."""
from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from convcrf_deploy.cli import harness
from convcrf_deploy.cli.harness import ExitCode, FrameSize, frame_size, parse_frame_size

import convcrf_deploy

REPO = Path(__file__).resolve().parents[2]
PACKAGE_ROOT = Path(convcrf_deploy.__file__).resolve().parents[1]
COMMANDS = ("run", "export", "build", "bench", "eval", "train", "triton", "seal", "check_env")


def test_no_command_keeps_its_own_exit_table_or_error_printer():
    """Before: EXIT_* constants and a fail() in five files, with a missing torch exiting 1 from
    one command and 2 from another."""
    for name in COMMANDS:
        module = importlib.import_module(f"convcrf_deploy.cli.{name}")
        source = inspect.getsource(module)
        assert not re.search(r"^EXIT_\w+\s*=|\bdef fail\(", source, re.M), name
        assert not re.search(r"\breturn [0-9]+\s*$", source, re.M), name
        assert getattr(module.main, "__wrapped__", None) is not None, \
            f"cli/{name}.py's main is not wrapped by harness.command"


def test_readme_exit_status_table_is_the_harness_table():
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Exit status"):]
    rows = dict(re.findall(r"^\| `?(\d+)`? \| ([^|]+)\|", section, re.M))
    for code in (ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE, ExitCode.MISSING_DEPENDENCY,
                 ExitCode.SOURCE_LOST):
        assert str(int(code)) in rows, f"README lacks exit status {int(code)}"
    documented = {int(c) for c in rows}
    assert documented <= {int(c) for c in ExitCode}, documented
    assert "130" in section and "143" in section


def test_signal_exit_codes_are_128_plus_the_signal():
    assert harness.signal_exit_code("SIGINT") == 130
    assert harness.signal_exit_code("SIGTERM") == 143
    assert harness.signal_exit_code("SIGHUP") == 129
    assert harness.signal_exit_code(None) == 130


def test_command_turns_errors_into_one_line_and_their_status(capsys):
    from convcrf_deploy.install import MissingDependencyError

    @harness.command("convcrf-x")
    def main(argv):
        kind = argv[0]
        if kind == "usage":
            raise harness.UsageError("bad flag; use --good")
        if kind == "missing":
            raise MissingDependencyError("foo is not installed: pip install foo")
        if kind == "lost":
            raise harness.SourceLostError("camera cam0 lost")
        if kind == "interrupt":
            raise KeyboardInterrupt
        return ExitCode.OK

    assert main(["ok"]) == 0
    for kind, code, text in (("usage", 2, "bad flag"), ("missing", 3, "pip install foo"),
                             ("lost", 4, "cam0 lost"), ("interrupt", 130, "interrupted")):
        assert main([kind]) == code
        err = capsys.readouterr().err
        assert text in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


_WITHOUT_TORCH = textwrap.dedent("""
    import importlib.abc, sys
    sys.path.insert(0, sys.argv[1])

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, BlockTorch())
    import importlib
    main = importlib.import_module("convcrf_deploy.cli." + sys.argv[2]).main
    sys.exit(main(sys.argv[3:]))
""")


@pytest.mark.parametrize("command, args", [
    ("export", ["demo", "-o", "x.onnx"]),
    ("bench", ["demo"]),
    ("eval", ["synthetic", "--data", "."]),
    ("train", ["crf", "--data", ".", "--synthetic"]),
])
def test_a_missing_torch_is_status_3_from_every_command(command, args, tmp_path):
    done = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH, str(PACKAGE_ROOT), command,
                           *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == ExitCode.MISSING_DEPENDENCY, done.stderr
    assert "torch" in done.stderr and "pip install" in done.stderr
    assert "Traceback" not in done.stderr


def test_one_size_parser_width_first():
    """Before: "WxH" parsed by two functions, one returning (width, height), the other
    (height, width)."""
    size = parse_frame_size("320x240")
    assert size == FrameSize(320, 240) and (size.width, size.height) == (320, 240)
    assert str(size) == "320x240"
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        parse_frame_size("320")
    with pytest.raises(ValueError, match="8..8192"):
        parse_frame_size("9000x10", 8, 8192)
    from convcrf_deploy.cli import bench, run
    run_size = run.build_parser().parse_args(["--size", "80x60"]).size
    bench_size = bench.build_parser().parse_args(["demo", "--size", "80x60"]).size
    assert run_size == bench_size == FrameSize(80, 60) == frame_size()("80x60")


def test_demo_frames_have_the_size_asked_for(tmp_path):
    import cv2

    from convcrf_deploy.cli.run import main
    from convcrf_deploy.runtime.testing import write_toy_onnx

    model = write_toy_onnx(tmp_path / "toy.onnx", input_size=(60, 80), resize="stretch")
    assert main(["--video", "demo", "--size", "96x64", "--model", str(model), "--headless",
                 "--max-frames", "1", "--save", str(tmp_path / "f_%03d.png")]) == 0
    assert cv2.imread(str(tmp_path / "f_000.png")).shape[:2] == (64, 96)  # 96 wide, 64 high


def test_backend_help_lists_every_registered_backend():
    """Before: --backend's help omitted triton."""
    from convcrf_deploy.cli.run import build_parser
    from convcrf_deploy.runtime.backends.registry import BACKENDS

    help_text = next(a.help for a in build_parser()._actions if "--backend" in a.option_strings)
    for name in BACKENDS:
        assert name in help_text, name


def test_native_status_codes_have_one_meaning_each():
    """Before: status 6 meant 'unsupported' in C and 'out of memory or thread creation failed'
    in Python, and the TensorRT plugin had a third table. Now the C header holds the only
    table; every code of its enum has its own message."""
    from convcrf_deploy import _native

    if _native.cpu_library() is None:
        pytest.skip("native CPU library not built")
    header = (REPO / "plugins" / "common" / "convcrf_math.h").read_text()
    codes = dict((int(v), k) for k, v in re.findall(r"^\s+(k\w+) = (\d+),", header, re.M))
    messages = {code: _native.status_message(code) for code in codes}
    assert len(set(messages.values())) == len(messages), messages
    assert "unknown" not in " ".join(messages.values())
    assert "memory" in messages[11] and "memory" not in messages[6]
    assert _native.status_message(999) == "unknown status"


def test_warnings_during_a_command_are_one_line_naming_it():
    """New-user trial: warnings came out as Python's two lines, the second quoting the
    entry-point script's ``sys.exit(main())``. Run as a program (pytest records warnings)."""
    script = textwrap.dedent("""
        import sys, warnings
        from convcrf_deploy.cli.harness import command
        from convcrf_deploy.exported_model import MissingDigestWarning
        formatwarning = warnings.formatwarning

        @command("convcrf-demo")
        def main(argv=None):
            warnings.warn("model.onnx has no digest:\\n  loading it unchecked",
                          MissingDigestWarning)
            warnings.warn("frame 3 is 77x101", UserWarning)
            return 0

        status = main([])
        assert warnings.formatwarning is formatwarning      # restored after the command
        sys.exit(status)
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "convcrf-demo: warning (MissingDigestWarning): model.onnx has no digest: loading it "
        "unchecked",
        "convcrf-demo: warning: frame 3 is 77x101"]


def test_an_oserror_no_command_expected_is_one_line_and_status_1(capsys):
    @harness.command("convcrf-demo")
    def main(argv=None):
        raise FileNotFoundError(2, "No such file or directory", "/gone/b.json")

    assert main([]) == harness.ExitCode.FAILED
    err = capsys.readouterr().err.strip()
    assert err.startswith("convcrf-demo: error: ") and "/gone/b.json" in err and \
        "free space" in err and len(err.splitlines()) == 1, err
