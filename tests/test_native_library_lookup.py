"""The native library of an editable install (issue 18 item 8): scikit-build-core imports the
package from the source tree but installs the built library into site-packages; _native finds
it there, or warns once naming the fix. Tested on a fake editable layout (the real
`pip install -e .` was checked by hand: see the commit message)."""
from __future__ import annotations

import json
import shutil
import sys

import pytest

from convcrf_deploy import _native


class FakeRedirectFinder:
    """What scikit-build-core's editable redirect puts on sys.meta_path (the attributes
    _native reads): the package's modules map to the source tree, built files live in ``dir``."""

    def __init__(self, site):
        self.dir = str(site)
        self.known_source_files = {"convcrf_deploy": "/src/convcrf_deploy/__init__.py"}
        self.known_wheel_files = {}

    def find_spec(self, *args, **kwargs):
        return None


@pytest.fixture
def editable(tmp_path, monkeypatch):
    """A source tree without ``_lib`` and a site-packages the redirect points at."""
    real = _native.cpu_library_path()
    if real is None:
        pytest.skip("no native CPU library built to copy into the fake site-packages")
    site = tmp_path / "site-packages"
    (site / "convcrf_deploy" / "_lib").mkdir(parents=True)
    monkeypatch.setattr(_native, "LIB_DIR", tmp_path / "src" / "convcrf_deploy" / "_lib")
    monkeypatch.delenv("CONVCRF_CPU_LIBRARY", raising=False)
    # The source tree's _lib is not a namespace portion here (as in a fresh clone).
    monkeypatch.setattr(_native.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(sys, "meta_path", [FakeRedirectFinder(site), *sys.meta_path])
    _native.cpu_library.cache_clear()
    yield site, real
    _native.cpu_library.cache_clear()


def test_the_library_installed_beside_an_editable_redirect_is_found(editable):
    site, real = editable
    installed = site / "convcrf_deploy" / "_lib" / real.name
    shutil.copy(real, installed)
    assert _native.cpu_library_path() == installed.resolve()
    assert _native.cpu_library() is not None


def test_an_editable_install_without_its_library_says_so_once(editable, recwarn):
    assert _native.cpu_library() is None
    assert _native.cpu_library() is None          # cached: one warning, not one per call
    warned = [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert len(warned) == 1
    assert "editable install" in str(warned[0].message) and "pip install -e ." in \
        str(warned[0].message)


def test_check_env_reports_an_editable_install(editable, capsys):
    from convcrf_deploy.cli.check_env import main

    site, real = editable
    main(["--json"])
    missing = json.loads(capsys.readouterr().out)["native CPU library"]
    assert missing["ok"] is False and "editable install" in missing["detail"]
    shutil.copy(real, site / "convcrf_deploy" / "_lib" / real.name)
    _native.cpu_library.cache_clear()
    main(["--json"])
    found = json.loads(capsys.readouterr().out)["native CPU library"]
    assert found["ok"] is True and str(site) in found["detail"] and "editable" in found["detail"]


def test_a_regular_layout_is_unchanged():
    assert _native.library_dirs()[0] == _native.LIB_DIR
