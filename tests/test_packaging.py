"""The installed package is the whole package: every module and data file of the source tree
is importable/readable from where convcrf_deploy was imported (the wheel, under CI)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import convcrf_deploy

SOURCE = Path(__file__).resolve().parents[1] / "convcrf_deploy"
INSTALLED = Path(convcrf_deploy.__file__).resolve().parent


def test_every_source_module_is_installed():
    modules = sorted(
        ".".join(("convcrf_deploy",) + path.relative_to(SOURCE).with_suffix("").parts)
        .removesuffix(".__init__")
        for path in SOURCE.rglob("*.py"))
    assert len(modules) > 20
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    assert not missing, f"modules missing from the installed package {INSTALLED}: {missing}"


def test_demo_model_is_installed():
    assert (INSTALLED / "assets" / "demo.pt").is_file()
