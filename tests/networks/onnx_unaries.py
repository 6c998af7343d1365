"""The user's network exported alone by ``torch.onnx``, as users do before they come to us:
the input of ``convcrf-export --unary`` in the tests of this folder."""
from __future__ import annotations

from pathlib import Path

import torch

#: the user's module (``--import``), holding the networks' architectures.
USER_MODULE = Path(__file__).resolve().parent / "user_networks.py"


class Logits(torch.nn.Module):
    """The network with its output convention resolved (tensor, dict, ``.logits``)."""

    def __init__(self, network):
        super().__init__()
        self.network = network

    def forward(self, x):
        from convcrf_deploy.model.outputs import select_logits
        return select_logits(self.network(x))


def export_onnx_unary(architecture: str, path: Path, size: tuple[int, int], num_classes: int,
                      he_init: bool = False) -> torch.nn.Module:
    """Export ``architecture`` of :data:`USER_MODULE` to ``path``: input ``input`` float32
    ``[N, 3, H, W]`` normalised, output ``logits`` (at 1/4 for the DeepLabV3+ and Segformer),
    N, H and W dynamic, traced at ``size`` (which must meet the network's input constraints).
    ``he_init``: He-initialised convolutions, whose logits vary over the image as a trained
    network's do. Returns the exported module (:class:`Logits`, eval mode)."""
    from convcrf_deploy.model import build_unary
    from convcrf_deploy.user_code import import_user_code
    import_user_code([str(USER_MODULE)])      # as --import does (once per process)
    torch.manual_seed(0)
    network = build_unary({"name": architecture, "kwargs": {"num_classes": num_classes}})
    if he_init:
        for module in network.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    network = Logits(network).eval()
    dims = {axis: torch.export.Dim(name) for axis, name in ((0, "batch"), (2, "height"),
                                                            (3, "width"))}
    torch.onnx.export(network, (torch.randn(2, 3, *size),), str(path), dynamo=True,
                      input_names=["input"], output_names=["logits"],
                      dynamic_shapes={"x": dims}, verbose=False, external_data=False)
    return network
