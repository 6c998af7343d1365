"""Built-in unary networks and the registry that lets checkpoints name their architecture.

A unary maps a normalised image ``(N, 3, H, W)`` to class logits ``(N, C, h, w)``; the
built-in ones return logits at the input size. They use only ops that export to ONNX and
TensorRT without custom code (Conv2d, BatchNorm2d, ReLU, MaxPool2d, bilinear
``F.interpolate``, add), and need no torchvision.

Checkpoints (:mod:`convcrf_deploy.model.checkpoint`) store a unary as a *spec*
``{"name": ..., "kwargs": {...}}`` plus a state dict, never as pickled code. To save and
load your own network the same safe way, register a factory once, in code that runs before
``load_model``::

    from convcrf_deploy.model import register_unary, build_unary
    register_unary("my_net", MyNet)             # MyNet(**kwargs) -> nn.Module
    unary = build_unary({"name": "my_net", "kwargs": {"num_classes": 5}})

The commands run that code when told to: ``--import my_module`` or ``--import nets.py``; or an
installed package declares the architecture as an entry point in the group
``convcrf_deploy.unaries`` (see :mod:`convcrf_deploy.user_code`).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

#: Attribute under which :func:`build_unary` records the spec a module was built from.
SPEC_ATTRIBUTE = "unary_spec"


def _conv_bn_relu(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _check_stride(name: str, output_stride: int, allowed: tuple[int, ...]) -> None:
    if output_stride not in allowed:
        raise ValueError(f"{name}: output_stride must be one of {allowed}, got {output_stride}")


class FastFCN(nn.Module):
    """Small fully convolutional network for real-time demos (~0.15 M parameters).

    A strided encoder down to ``output_stride`` (4 or 8), a context block of dilated
    convolutions (receptive field ~250 px, enough to see whole objects), a 1x1 classifier and
    bilinear upsampling to the input size. At stride 8 its boundaries are blurry, which is
    what a CRF refines.

    Args:
        num_classes: output channels C.
        width: channels of the deepest features (earlier stages use width/4 and width/2).
        output_stride: 4 or 8.

    Shapes:
        input ``(N, 3, H, W)`` normalised image -> logits ``(N, C, H, W)``.
    """

    def __init__(self, num_classes: int, width: int = 64, output_stride: int = 8):
        super().__init__()
        _check_stride("FastFCN", output_stride, (4, 8))
        if num_classes < 1 or width < 4:
            raise ValueError(f"FastFCN: need num_classes >= 1 and width >= 4, got "
                             f"{num_classes}, {width}")
        self.unary_spec = {"name": "fast_fcn",
                     "kwargs": {"num_classes": num_classes, "width": width,
                                "output_stride": output_stride}}
        quarter, half = max(width // 4, 1), max(width // 2, 1)
        last_stride = 2 if output_stride == 8 else 1
        self.encoder = nn.Sequential(
            _conv_bn_relu(3, quarter, stride=2),
            _conv_bn_relu(quarter, half, stride=2),
            _conv_bn_relu(half, half),
            _conv_bn_relu(half, width, stride=last_stride))
        scale = 8 // output_stride      # keep the receptive field when the stride is 4
        self.context = nn.Sequential(
            _conv_bn_relu(width, width, dilation=2 * scale),
            _conv_bn_relu(width, width, dilation=4 * scale),
            _conv_bn_relu(width, width, dilation=8 * scale))
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        features = features + self.context(features)
        logits = self.classifier(features)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


class _BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions with a residual connection."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetFCN(nn.Module):
    """ResNet-style FCN (basic blocks, dilated last stages), the family of the ConvCRF
    paper's unary, without torchvision.

    Stem (7x7 stride 2 + max-pool), four stages of basic blocks; stages after
    ``output_stride`` is reached use dilation instead of striding (DeepLab style), then a 1x1
    classifier and bilinear upsampling to the input size.

    Args:
        num_classes: output channels C.
        widths: channels of the four stages (ResNet-18 uses (64, 128, 256, 512)).
        blocks: basic blocks per stage (ResNet-18 uses (2, 2, 2, 2)).
        output_stride: 8, 16 or 32.

    Shapes:
        input ``(N, 3, H, W)`` normalised image -> logits ``(N, C, H, W)``.
    """

    def __init__(self, num_classes: int, widths: tuple[int, ...] | list[int] = (32, 64, 128, 256),
                 blocks: tuple[int, ...] | list[int] = (2, 2, 2, 2), output_stride: int = 8):
        super().__init__()
        _check_stride("ResNetFCN", output_stride, (8, 16, 32))
        widths, blocks = [int(w) for w in widths], [int(b) for b in blocks]
        if len(widths) != 4 or len(blocks) != 4 or min(widths) < 1 or min(blocks) < 1:
            raise ValueError(f"ResNetFCN: widths and blocks need 4 positive entries each, got "
                             f"{widths}, {blocks}")
        self.unary_spec = {"name": "resnet_fcn",
                     "kwargs": {"num_classes": num_classes, "widths": widths, "blocks": blocks,
                                "output_stride": output_stride}}
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1))
        stages = []
        stride_so_far, dilation, cin = 4, 1, widths[0]
        for index, (cout, count) in enumerate(zip(widths, blocks)):
            stride = 1 if index == 0 else 2
            if stride == 2 and stride_so_far >= output_stride:
                stride, dilation = 1, dilation * 2
            stride_so_far *= stride
            layers = [_BasicBlock(cin, cout, stride=stride, dilation=dilation)]
            layers += [_BasicBlock(cout, cout, dilation=dilation) for _ in range(count - 1)]
            stages.append(nn.Sequential(*layers))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.classifier = nn.Conv2d(cin, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.stages(self.stem(x)))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


#: Architecture name -> factory called as ``factory(**kwargs)``; extend with register_unary.
UNARY_ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "fast_fcn": FastFCN,
    "resnet_fcn": ResNetFCN,
}


def register_unary(name: str, factory: Callable[..., nn.Module], *, overwrite: bool = False) -> None:
    """Make ``factory(**kwargs) -> nn.Module`` loadable from checkpoints under ``name``.

    Register before calling ``load_model`` on a checkpoint that uses ``name``: in your own
    module, which the commands import with ``--import MODULE_OR_FILE.py``, or declare the
    factory as an entry point in the group ``convcrf_deploy.unaries`` of an installed package.
    Re-registering the same factory is a no-op; replacing a different one needs
    ``overwrite=True`` (else ``ValueError``).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_unary: name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise ValueError(f"register_unary: factory for {name!r} must be callable, got "
                         f"{type(factory).__name__}")
    existing = UNARY_ARCHITECTURES.get(name)
    if existing is not None and existing is not factory and not overwrite:
        raise ValueError(f"register_unary: {name!r} is already registered to {existing!r}; "
                         "pass overwrite=True to replace it")
    UNARY_ARCHITECTURES[name] = factory


def build_unary(spec: dict[str, Any]) -> nn.Module:
    """Instantiate the unary described by ``spec = {"name": ..., "kwargs": {...}}``.

    The returned module remembers its spec (attribute ``unary_spec``) so that ``save_model``
    can store it without pickling code. A ``name`` not registered yet is looked up among the
    entry points that installed packages declare in the group ``convcrf_deploy.unaries``
    (:mod:`convcrf_deploy.user_code`).

    Raises:
        ValueError: a malformed spec, or an architecture that is neither registered nor
            declared (one line naming ``--import`` and the entry-point group);
            ``UserCodeError`` (a ``ValueError``) when a declared entry point fails to load.
        TypeError: the factory rejects ``kwargs``.
    """
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ValueError(f"unary spec must be a dict {{'name': str, 'kwargs': dict}}, got {spec!r}")
    name, kwargs = spec["name"], spec.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"unary spec kwargs must be a dict, got {kwargs!r}")
    factory = UNARY_ARCHITECTURES.get(name)
    if factory is None:
        from ..user_code import load_entry_point, unknown_architecture_message
        if not load_entry_point(name):
            raise ValueError(unknown_architecture_message(name, UNARY_ARCHITECTURES))
        factory = UNARY_ARCHITECTURES[name]
    module = factory(**kwargs)
    if not isinstance(module, nn.Module):
        raise ValueError(f"unary factory for {name!r} returned {type(module).__name__}, "
                         "not an nn.Module")
    if getattr(module, SPEC_ATTRIBUTE, None) is None:
        setattr(module, SPEC_ATTRIBUTE, {"name": name, "kwargs": dict(kwargs)})
    return module


def unary_spec_of(module: nn.Module) -> dict[str, Any] | None:
    """The spec ``module`` was built from, or ``None`` for an unregistered module.

    A subclass of a registered class inherits its parent's spec but not its architecture,
    so it counts as unregistered (rebuilding it from the parent's spec would be wrong).
    """
    spec = getattr(module, SPEC_ATTRIBUTE, None)
    if not (isinstance(spec, dict) and isinstance(spec.get("name"), str)):
        return None
    factory = UNARY_ARCHITECTURES.get(spec["name"])
    if isinstance(factory, type) and type(module) is not factory:
        return None
    return {"name": spec["name"], "kwargs": dict(spec.get("kwargs") or {})}
