"""convcrf_deploy.user_code: importing the user's modules and architectures declared as entry
points, only when asked, with one-line errors (issue 18 item 1)."""
from __future__ import annotations

import sys
import types

import pytest

torch = pytest.importorskip("torch")

from convcrf_deploy.model import CheckpointError, load_model
from convcrf_deploy.user_code import (ENTRY_POINT_GROUP, UserCodeError, import_user_code,
                                      load_entry_point)

from user_model_fixtures import (ARCHITECTURE, fresh_registry, user_checkpoint,  # noqa: F401
                                 write_user_module)


class FakeEntryPoint:
    def __init__(self, name, target, dist="user-nets"):
        self.name, self.value, self.group = name, f"pkg:{name}", ENTRY_POINT_GROUP
        self._target, self.loads = target, 0
        self.dist = types.SimpleNamespace(name=dist)

    def load(self):
        self.loads += 1
        if isinstance(self._target, BaseException):
            raise self._target
        return self._target


def test_a_file_is_imported_once_and_registers_its_architecture(tmp_path, fresh_registry):
    path = write_user_module(tmp_path)
    (first,) = import_user_code([str(path)])
    (second,) = import_user_code([str(path)])
    assert first is second and ARCHITECTURE in fresh_registry.UNARY_ARCHITECTURES
    assert str(tmp_path) in sys.path          # its neighbours are importable, as for a script


def test_loading_a_checkpoint_never_imports_the_users_code(user_checkpoint):
    _, checkpoint = user_checkpoint
    with pytest.raises(CheckpointError) as info:
        load_model(checkpoint)
    message = str(info.value)
    assert "\n" not in message and "--import" in message and ENTRY_POINT_GROUP in message
    assert not [name for name in sys.modules if name.startswith("convcrf_user_")]


@pytest.mark.parametrize("body, expected", [
    ("raise ValueError('weights folder missing')", "ValueError: weights folder missing"),
    ("import no_such_dependency_xyz", "ModuleNotFoundError: No module named "
                                      "'no_such_dependency_xyz'"),
    ("def broken(:\n    pass", "SyntaxError"),
    ("import sys\nsys.exit(2)", "SystemExit: 2"),
])
def test_a_failing_module_is_one_line_naming_it(tmp_path, fresh_registry, body, expected):
    path = tmp_path / "failing_nets.py"
    path.write_text(body + "\n")
    with pytest.raises(UserCodeError) as info:
        import_user_code([str(path)])
    message = str(info.value)
    assert "\n" not in message and str(path) in message and expected in message, message
    assert not [n for n in sys.modules if n.startswith("convcrf_user_failing")]


def test_entry_points_are_loaded_lazily_and_only_the_one_named(user_checkpoint, monkeypatch):
    import convcrf_deploy.user_code as user_code
    from user_model_fixtures import USER_MODULE

    module_path, checkpoint = user_checkpoint
    namespace: dict = {}
    exec(compile(USER_MODULE.replace(f'register_unary("{ARCHITECTURE}", SkipNet)', ""),
                 str(module_path), "exec"), namespace)
    wanted = FakeEntryPoint(ARCHITECTURE, namespace["SkipNet"])
    other = FakeEntryPoint("other_net", AssertionError("must not be loaded"))
    monkeypatch.setattr(user_code, "_entry_points", lambda: [other, wanted])
    model = load_model(checkpoint)
    assert type(model.unary).__name__ == "SkipNet"
    assert (wanted.loads, other.loads) == (1, 0)
    load_model(checkpoint)
    assert wanted.loads == 1                      # registered now: not looked up again


def test_an_entry_point_naming_a_module_that_does_not_register_is_explained(monkeypatch,
                                                                            fresh_registry):
    import convcrf_deploy.user_code as user_code

    empty = types.ModuleType("user_nets_empty")
    monkeypatch.setattr(user_code, "_entry_points",
                        lambda: [FakeEntryPoint("my_net", empty)])
    with pytest.raises(UserCodeError, match=r"names a module that did not register 'my_net'"):
        load_entry_point("my_net")
    assert load_entry_point("not_declared") is False


def test_python_39_style_entry_points_dict(monkeypatch, fresh_registry):
    import importlib.metadata

    import convcrf_deploy.user_code as user_code

    point = FakeEntryPoint("dict_net", lambda num_classes: torch.nn.Conv2d(3, num_classes, 1))
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda: {ENTRY_POINT_GROUP: [point]})
    assert user_code.declared_architectures() == ["dict_net"]
    assert load_entry_point("dict_net") and "dict_net" in fresh_registry.UNARY_ARCHITECTURES
