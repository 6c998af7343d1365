"""The CI and kit shell scripts: no path of a particular machine, shellcheck-clean."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = [REPO / ".ci" / "run", REPO / "scripts" / "ci_native.sh", REPO / "scripts" / "gpu_check.sh"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_no_machine_specific_paths(script):
    """CI runs in a fresh clone beside ../shared on any machine: absolute paths of one
    machine (its home, work or temp folders) must not appear; relative paths and environment
    variables must be used instead."""
    code = "\n".join(line for line in script.read_text().splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"(?<![\w.$])/(work|home|root|tmp|mnt|opt)/", code), script


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck_clean():
    result = subprocess.run(["shellcheck", *map(str, SCRIPTS)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout
