"""Every install hint names a command that works: the package is installed from a checkout,
not from the package index (``pip install convcrf-deploy[...]`` fails there)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from convcrf_deploy.install import EXTRAS, TORCH_HINT, install_hint

ROOT = Path(__file__).resolve().parents[1]


def test_hint_installs_from_the_checkout():
    hint = install_hint("tensorrt")
    assert 'pip install "/path/to/convcrf-deploy[tensorrt]"' in hint
    assert 'pip install ".[tensorrt]"' in hint
    assert "download.pytorch.org/whl/cpu" in TORCH_HINT and install_hint("torch") in TORCH_HINT
    with pytest.raises(ValueError, match="unknown extra"):
        install_hint("nope")


def test_extras_match_pyproject():
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    declared = set(re.findall(r"^(\w+)\s*=", section, re.M))
    assert declared == set(EXTRAS)


def test_no_index_name_install_hint_anywhere():
    # The field report: every hint said `pip install convcrf-deploy[...]`, a name not on the
    # package index.
    offenders = []
    for path in [*ROOT.glob("convcrf_deploy/**/*.py"), *ROOT.glob("scripts/*.py"),
                 *ROOT.glob("docs/*.md"), ROOT / "README.md"]:
        if path.name == "install.py":       # it quotes the wrong form to explain it
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"pip install '?convcrf-deploy\[", line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}")
    assert not offenders
