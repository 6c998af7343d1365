"""A user's own network, as a user would have it: a module of their own that registers it,
a checkpoint written by ``save_model``, and the same kind of network saved without class code
(``torch.export`` program, TorchScript). Shared by tests/model and tests/cli.

The network is unlike the demo's: an encoder-decoder with a skip connection, output stride 4,
logits at half the input resolution (the model resizes them), 4 classes.
"""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

ARCHITECTURE = "test_user_skip_net"
NUM_CLASSES = 4

USER_MODULE = textwrap.dedent(f'''
    """The user's network (written by the tests)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from convcrf_deploy.model import register_unary


    class SkipNet(nn.Module):
        def __init__(self, num_classes, width=6):
            super().__init__()
            self.down1 = nn.Conv2d(3, width, 3, stride=2, padding=1)
            self.down2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
            self.fuse = nn.Conv2d(3 * width, width, 3, padding=1)
            self.head = nn.Conv2d(width, num_classes, 1)

        def forward(self, x):
            skip = F.relu(self.down1(x))                       # 1/2
            deep = F.relu(self.down2(skip))                    # 1/4
            deep = F.interpolate(deep, size=skip.shape[-2:], mode="bilinear",
                                 align_corners=False)
            return self.head(F.relu(self.fuse(torch.cat([skip, deep], 1))))   # logits at 1/2


    register_unary("{ARCHITECTURE}", SkipNet)
''')


def write_user_module(folder: Path, name: str = "user_nets.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(USER_MODULE)
    return path


@pytest.fixture
def fresh_registry(monkeypatch):
    """A registry and ``sys.modules`` without the user's code, restored afterwards: each test
    starts as a fresh process would."""
    from convcrf_deploy.model import unaries

    monkeypatch.setattr(unaries, "UNARY_ARCHITECTURES", dict(unaries.UNARY_ARCHITECTURES))
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield unaries
    for name in set(sys.modules) - before:
        if name.startswith(("convcrf_user_", "user_nets", "convcrf_test_dist")):
            del sys.modules[name]


def user_model(module):
    """A SegmentationModel around the user's SkipNet (4 classes, a small CRF)."""
    import torch
    from convcrf_deploy import ConvCRF, CRFConfig, SegmentationModel
    from convcrf_deploy.metadata import ModelMetadata
    from convcrf_deploy.model import build_unary

    torch.manual_seed(0)
    unary = build_unary({"name": ARCHITECTURE, "kwargs": {"num_classes": NUM_CLASSES}})
    crf = ConvCRF(CRFConfig(num_classes=NUM_CLASSES, filter_size=5, blur=2, iterations=2))
    return SegmentationModel(unary, crf, ModelMetadata(["road", "car", "person", "sky"]))


@pytest.fixture
def user_checkpoint(tmp_path, fresh_registry):
    """``(module path, checkpoint path)``: the checkpoint is saved with the user's module
    imported; afterwards the registry is as in a fresh process (nothing registered)."""
    from convcrf_deploy import save_model
    from convcrf_deploy.user_code import import_user_code

    module_path = write_user_module(tmp_path / "user_code")
    (module,) = import_user_code([str(module_path)])
    checkpoint = tmp_path / "user_model.pt"
    save_model(user_model(module), checkpoint)
    fresh_registry.UNARY_ARCHITECTURES.pop(ARCHITECTURE)
    for name in [n for n in sys.modules if n.startswith("convcrf_user_")]:
        del sys.modules[name]
    return module_path, checkpoint


class ProgramNet:
    """Builds the network saved without class code: two strided convolutions, logits at 1/4
    (a different class per call is fine: no registry is involved)."""

    @staticmethod
    def build(num_classes: int = 3):
        import torch
        import torch.nn as nn

        torch.manual_seed(1)
        return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                             nn.Conv2d(8, num_classes, 3, stride=2, padding=1)).eval()


def save_program(path: Path, num_classes: int = 3) -> Path:
    """A ``torch.export`` program with dynamic batch, height and width (``.pt2``)."""
    import torch

    net = ProgramNet.build(num_classes)
    batch, height, width = (torch.export.Dim("batch", min=1, max=64),
                            torch.export.Dim("height", min=16, max=4096),
                            torch.export.Dim("width", min=16, max=4096))
    program = torch.export.export(net, (torch.rand(2, 3, 48, 64),),
                                  dynamic_shapes=({0: batch, 2: height, 3: width},))
    torch.export.save(program, str(path))
    return path


def save_torchscript(path: Path, num_classes: int = 3) -> Path:
    """A traced TorchScript module (``torch.jit.save``)."""
    import torch

    net = ProgramNet.build(num_classes)
    torch.jit.save(torch.jit.trace(net, torch.rand(1, 3, 48, 64)), str(path))
    return path
