"""Built-in unaries, the architecture registry, and ONNX exportability."""
import pytest
import torch
import torch.nn as nn

from convcrf_deploy.model import (UNARY_ARCHITECTURES, FastFCN, ResNetFCN, build_unary,
                                  register_unary)
from convcrf_deploy.model.unaries import unary_spec_of


@pytest.mark.parametrize("factory,kwargs", [
    (FastFCN, dict(num_classes=5)),
    (FastFCN, dict(num_classes=3, width=16, output_stride=4)),
    (ResNetFCN, dict(num_classes=4, widths=(8, 8, 16, 16), blocks=(1, 1, 1, 1))),
    (ResNetFCN, dict(num_classes=4, widths=(8, 8, 16, 16), output_stride=16)),
])
def test_logits_at_input_size_for_odd_sizes_and_batches(factory, kwargs):
    net = factory(**kwargs).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 67, 93))
    assert out.shape == (2, kwargs["num_classes"], 67, 93)
    assert torch.isfinite(out).all()


def test_fast_fcn_is_small():
    params = sum(p.numel() for p in FastFCN(5).parameters())
    assert 50_000 < params < 500_000


def test_built_in_unaries_record_their_spec_and_rebuild_identically():
    for net in (FastFCN(3, width=16), ResNetFCN(3, widths=(8, 8, 8, 8))):
        spec = unary_spec_of(net)
        assert spec["name"] in UNARY_ARCHITECTURES
        rebuilt = build_unary(spec)
        assert type(rebuilt) is type(net)
        assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
               {k: v.shape for k, v in net.state_dict().items()}


def test_subclass_of_a_built_in_is_not_mistaken_for_it():
    class Wider(FastFCN):
        pass

    assert unary_spec_of(FastFCN(3, width=8)) is not None
    assert unary_spec_of(Wider(3, width=8)) is None


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="output_stride"):
        FastFCN(3, output_stride=16)
    with pytest.raises(ValueError, match="widths"):
        ResNetFCN(3, widths=(8, 8))


class TinyNet(nn.Module):
    def __init__(self, num_classes: int, hidden: int = 4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, hidden, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(hidden, num_classes, 1))

    def forward(self, x):
        return self.body(x)


def test_register_and_build_user_unary():
    register_unary("test_tiny_net", TinyNet)
    try:
        net = build_unary({"name": "test_tiny_net", "kwargs": {"num_classes": 3, "hidden": 6}})
        assert isinstance(net, TinyNet) and net.body[0].out_channels == 6
        assert unary_spec_of(net) == {"name": "test_tiny_net",
                                      "kwargs": {"num_classes": 3, "hidden": 6}}
        register_unary("test_tiny_net", TinyNet)           # same factory again: fine
        with pytest.raises(ValueError, match="already registered"):
            register_unary("test_tiny_net", FastFCN)
    finally:
        UNARY_ARCHITECTURES.pop("test_tiny_net", None)


def test_unknown_architecture_names_register_unary():
    with pytest.raises(ValueError, match="register_unary"):
        build_unary({"name": "no_such_net", "kwargs": {}})
    with pytest.raises(ValueError, match="spec"):
        build_unary("fast_fcn")


def test_fast_fcn_exports_to_onnx_with_dynamic_size(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    net = FastFCN(3, width=16).eval()
    example = torch.randn(1, 3, 64, 96)
    path = tmp_path / "fast_fcn.onnx"
    height, width = torch.export.Dim("height", min=32, max=1024), torch.export.Dim("width", min=32, max=1024)
    torch.onnx.export(net, (example,), str(path), dynamo=True,
                      dynamic_shapes={"x": {2: height, 3: width}}, input_names=["image"])
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    image = torch.randn(1, 3, 72, 104)
    (got,) = session.run(None, {session.get_inputs()[0].name: image.numpy()})
    with torch.no_grad():
        expected = net(image).numpy()
    assert got.shape == expected.shape
    assert abs(got - expected).max() < 1e-3
