"""Unary output conventions (model/outputs.py) and input constraints in SegmentationModel
(issue 18 items 2 and 3): every convention gives the same logits, wrong outputs name the real
cause, images that do not meet the constraints are padded and cropped back."""
from __future__ import annotations

from collections import OrderedDict
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from convcrf_deploy import ConvCRF, CRFConfig, SegmentationModel
from convcrf_deploy.metadata import ModelMetadata
from convcrf_deploy.model import load_model, save_model
from convcrf_deploy.model.constraints import (ConstraintError, probe_constraints,
                                              with_probed_constraints)
from convcrf_deploy.model.outputs import UnaryOutputError, select_logits, unary_logits

CLASSES = ["background", "a", "b"]


class QuarterNet(nn.Module):
    """Logits at 1/4 resolution (ceil), in the convention ``wrap`` chooses."""

    def __init__(self, wrap=lambda logits: logits, num_classes: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, num_classes, 5, stride=4, padding=2)
        self.wrap = wrap

    def forward(self, x):
        return self.wrap(self.conv(x))


class HFOutput(OrderedDict):
    """Like transformers' ModelOutput: a mapping that also has attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


CONVENTIONS = {
    "tensor": lambda z: z,
    "tuple": lambda z: (z, z.mean((2, 3))),
    "list": lambda z: [z],
    "dict out+aux (torchvision)": lambda z: {"out": z, "aux": z * 0},
    "dict logits": lambda z: {"logits": z},
    ".logits object": lambda z: SimpleNamespace(logits=z, hidden_states=None),
    "ModelOutput": lambda z: HFOutput(logits=z),
}


def _model(wrap, metadata=None, output_key=None, crf=True):
    return SegmentationModel(QuarterNet(wrap), ConvCRF(CRFConfig(num_classes=3)) if crf else None,
                             metadata or ModelMetadata(CLASSES), output_key=output_key).eval()


@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
def test_every_convention_gives_the_resized_logits(convention):
    image = torch.rand(2, 3, 37, 50) * 255
    model = _model(CONVENTIONS[convention])
    reference = _model(CONVENTIONS["tensor"])
    with torch.no_grad():
        logits = model.forward_unary(image)
        raw = reference.unary(reference.normalize(image))
        expected = F.interpolate(raw, size=(37, 50), mode="bilinear", align_corners=False)
        assert raw.shape[-2:] == (10, 13)
        torch.testing.assert_close(logits, expected)
        torch.testing.assert_close(model(image), reference(image))


def test_output_key_selects_an_entry_and_an_attribute():
    image = torch.rand(1, 3, 16, 16) * 255
    expected = _model(CONVENTIONS["tensor"]).forward_unary(image)
    by_key = _model(lambda z: {"seg": z, "edges": z * 0}, output_key="seg")
    by_attribute = _model(lambda z: SimpleNamespace(seg=z), output_key="seg")
    torch.testing.assert_close(by_key.forward_unary(image), expected)
    torch.testing.assert_close(by_attribute.forward_unary(image), expected)


@pytest.mark.parametrize("output, words", [
    ({"seg": torch.zeros(1, 3, 4, 4)}, ["keys ['seg']", "'out' or 'logits'", "--output-key"]),
    ("logits", ["is a str", "not a logits tensor"]),
    (None, ["is a NoneType"]),
    ((), ["is a tuple of 0"]),
    ([None, torch.zeros(1)], ["first element", "NoneType"]),
    ({"out": [1, 2]}, ["output['out']", "is a list of 2"]),
])
def test_outputs_that_are_not_logits_name_the_cause(output, words):
    with pytest.raises(UnaryOutputError) as info:
        select_logits(output)
    for word in words:
        assert word in str(info.value)


def test_missing_output_key_and_wrong_shape_are_named():
    with pytest.raises(UnaryOutputError, match="without the output key 'seg'"):
        select_logits({"out": torch.zeros(1)}, "seg")
    with pytest.raises(UnaryOutputError, match=r"expected \(2, 3, h, w\)"):
        unary_logits(torch.zeros(2, 5, 4, 4), (2, 3, 16, 16), 3)
    with pytest.raises(UnaryOutputError, match=r"expected \(2, 3, h, w\)"):
        unary_logits(torch.zeros(1, 3, 4, 4), (2, 3, 16, 16), 3)
    with pytest.raises(ValueError, match="output_key"):
        SegmentationModel(QuarterNet(), None, ModelMetadata(CLASSES), output_key="")


def test_output_key_and_constraints_survive_a_checkpoint(tmp_path):
    from convcrf_deploy.model import register_unary

    def dict_net(num_classes=3):
        return QuarterNet(lambda z: {"seg": z}, num_classes)
    register_unary("test_outputs_dict_net", dict_net, overwrite=True)
    from convcrf_deploy.model import build_unary
    unary = build_unary({"name": "test_outputs_dict_net", "kwargs": {}})
    metadata = ModelMetadata(CLASSES, pad_multiple=8, min_size=24)
    model = SegmentationModel(unary, ConvCRF(CRFConfig(num_classes=3)), metadata,
                              output_key="seg").eval()
    save_model(model, tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.output_key == "seg"
    assert (loaded.metadata.pad_multiple, loaded.metadata.min_size) == (8, 24)
    image = torch.rand(1, 3, 21, 30) * 255
    torch.testing.assert_close(loaded(image), model(image))


# ---- input constraints -------------------------------------------------------------------------

class Stride32Net(nn.Module):
    """Refuses sizes that are not multiples of 32 (like smp's check_input_shape)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.down = nn.Conv2d(3, 3, 32, stride=32)
        self.calls = []

    def forward(self, x):
        self.calls.append(tuple(x.shape[-2:]))
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise RuntimeError(f"Wrong input shape height={x.shape[-2]}, width={x.shape[-1]}")
        return F.interpolate(self.down(x), size=x.shape[-2:], mode="nearest")


def test_forward_pads_to_the_constraints_with_edge_pixels_and_crops_back():
    metadata = ModelMetadata(CLASSES, pad_multiple=32)
    model = SegmentationModel(Stride32Net(), ConvCRF(CRFConfig(num_classes=3)), metadata).eval()
    image = torch.rand(1, 3, 77, 101) * 255
    with torch.no_grad():
        probabilities = model(image)
        logits = model.forward_unary(image)
        padded = F.pad(image, (0, 128 - 101, 0, 96 - 77), mode="replicate")
        assert padded[0, :, 95, 127].tolist() == image[0, :, 76, 100].tolist()
        expected = model.crf(model.unary_logits(padded), padded)[..., :77, :101]
        expected_logits = model.unary_logits(padded)[..., :77, :101]
    assert model.unary.calls[-1] == (96, 128)
    assert probabilities.shape == (1, 3, 77, 101)
    torch.testing.assert_close(probabilities, expected)
    torch.testing.assert_close(logits, expected_logits)
    # Without the constraint the same network fails: the padding is what makes it run.
    bare = SegmentationModel(Stride32Net(), None, ModelMetadata(CLASSES)).eval()
    with pytest.raises(RuntimeError, match="Wrong input shape"):
        bare(image)


def test_probe_finds_the_multiple_the_minimum_and_nothing_for_plain_networks():
    assert probe_constraints(_model(CONVENTIONS["tensor"], crf=False)).pad_multiple == 4
    stride32 = probe_constraints(SegmentationModel(Stride32Net(), None, ModelMetadata(CLASSES)))
    assert (stride32.pad_multiple, stride32.min_size) == (32, 1)
    assert stride32.failures and "Wrong input shape" in stride32.failures[0][2]

    class NeedsForty(nn.Module):
        def forward(self, x):
            if min(x.shape[-2:]) < 40:
                raise RuntimeError("Kernel size can't be greater than actual input size")
            return torch.zeros(x.shape[0], 3, *x.shape[-2:])

    forty = probe_constraints(SegmentationModel(NeedsForty(), None, ModelMetadata(CLASSES)))
    assert (forty.pad_multiple, forty.min_size) == (1, 40)
    given = probe_constraints(SegmentationModel(NeedsForty(), None, ModelMetadata(CLASSES)),
                              pad_multiple=8)
    assert (given.pad_multiple, given.min_size) == (8, 40)

    class Nowhere(nn.Module):
        def forward(self, x):
            raise RuntimeError("never")

    with pytest.raises(ConstraintError, match="--pad-multiple N .* --min-size N"):
        probe_constraints(SegmentationModel(Nowhere(), None, ModelMetadata(CLASSES)))
    with pytest.raises(UnaryOutputError, match="'out' or 'logits'"):
        probe_constraints(_model(lambda z: {"seg": z}, crf=False))


def test_with_probed_constraints_copies_and_keeps_recorded_ones():
    model = SegmentationModel(Stride32Net(), None, ModelMetadata(CLASSES))
    probed = with_probed_constraints(model)
    assert probed is not model and probed.unary is model.unary
    assert probed.metadata.pad_multiple == 32 and model.metadata.pad_multiple == 1
    recorded = SegmentationModel(Stride32Net(), None, ModelMetadata(CLASSES, pad_multiple=64))
    assert with_probed_constraints(recorded) is recorded
    plain = SegmentationModel(nn.Conv2d(3, 3, 1), None, ModelMetadata(CLASSES))
    assert with_probed_constraints(plain) is plain


def test_with_probed_constraints_probes_a_model_once():
    """evaluate_model and model_examples each make sure of the constraints; convcrf-train
    called model_examples twice (training and held-out images) and probed each time."""
    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.calls = nn.Conv2d(3, 3, 1), 0

        def forward(self, x):
            self.calls += 1
            return self.conv(x)

    plain = SegmentationModel(Counting(), None, ModelMetadata(CLASSES))
    assert with_probed_constraints(plain) is plain
    calls = plain.unary.calls
    assert calls > 0
    assert with_probed_constraints(plain) is plain and plain.unary.calls == calls
    probed = with_probed_constraints(SegmentationModel(Stride32Net(), None, ModelMetadata(CLASSES)))
    assert with_probed_constraints(probed) is probed
