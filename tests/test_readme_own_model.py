"""The README's "Your own model" section, run exactly as written (issue 18): its Python blocks
are written to the files their first line names, its shell commands run one by one in that
folder, in fresh processes (so ``--import`` really is what registers the user's network).
Editing the section changes what this test runs; a section that no longer works fails it."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Your own model"


def section_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, code)`` of each fenced block of the "Your own model" section."""
    body = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", body, re.S)


def _command(line: str) -> list[str]:
    """A README command line as this interpreter runs it: ``python X`` with this Python,
    ``convcrf-NAME`` as ``python -m convcrf_deploy.cli.NAME`` (the installed console script
    runs the same ``main``; the module form also works from a source tree)."""
    argv = shlex.split(line)
    if argv[0] in ("python", "python3"):
        return [sys.executable, *argv[1:]]
    if argv[0].startswith("convcrf-"):
        module = argv[0].removeprefix("convcrf-").replace("-", "_")
        return [sys.executable, "-m", f"convcrf_deploy.cli.{module}", *argv[1:]]
    raise AssertionError(f"the README section runs an unknown command: {line}")


def test_the_section_has_the_files_and_commands_it_describes():
    blocks = section_blocks(README.read_text())
    names = [code.splitlines()[0] for language, code in blocks if language == "python"]
    assert [name.split(":")[0] for name in names] == ["# my_unet.py", "# train.py"]
    commands = [code for language, code in blocks if language == "bash"]
    assert len(commands) == 1 and "--import my_unet.py" in commands[0]


def test_your_own_model_section_runs_as_written(tmp_path):
    environment = {**os.environ, "OMP_NUM_THREADS": "2"}
    # The package under test (a source tree on PYTHONPATH, or the installed one) is the one
    # the subprocesses import; the README's files sit in the working folder.
    import convcrf_deploy
    package_root = str(Path(convcrf_deploy.__file__).resolve().parents[1])
    environment["PYTHONPATH"] = os.pathsep.join(
        [package_root, *filter(None, [os.environ.get("PYTHONPATH")])])
    for language, code in section_blocks(README.read_text()):
        if language == "python":
            name = code.splitlines()[0].split(":")[0].removeprefix("# ").strip()
            (tmp_path / name).write_text(code)
            continue
        for line in code.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            done = subprocess.run(_command(line), cwd=tmp_path, env=environment,
                                  capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, f"{line}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            if line.startswith("convcrf-export"):
                assert "parity PASSED" in done.stdout
                # what the README says the export prints
                assert "multiples of 16 (--pad-multiple 16) (probed at" in done.stdout
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["frames"] == 20 and stats["source"].startswith("demo scene 250x170")
    assert (tmp_path / "my_model.pt").is_file() and (tmp_path / "my_model.onnx").is_file()
