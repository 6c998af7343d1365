"""SegmentationModel: shapes, normalisation, the CRF toggle and input validation."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from convcrf_deploy import CRFConfig
from convcrf_deploy.metadata import ModelMetadata
from convcrf_deploy.model import ConvCRF, FastFCN, SegmentationModel

CLASSES = ["background", "a", "b"]


def make_model(crf=True, **crf_kwargs):
    torch.manual_seed(0)
    config = CRFConfig(num_classes=3, filter_size=5, blur=2, iterations=2, **crf_kwargs)
    return SegmentationModel(FastFCN(3, width=16), ConvCRF(config) if crf else None,
                             ModelMetadata.for_classes(CLASSES)).eval()


def test_forward_shapes_at_odd_size_and_batch_two():
    model = make_model()
    image = torch.rand(2, 3, 37, 53) * 255
    with torch.no_grad():
        probs = model(image)
    assert probs.shape == (2, 3, 37, 53)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 37, 53))


def test_crf_toggle_switches_between_crf_and_unary_softmax():
    model = make_model()
    image = torch.rand(1, 3, 40, 48) * 255
    with torch.no_grad():
        with_crf = model(image)
        model.crf_enabled = False
        without = model(image)
        unary = torch.softmax(model.forward_unary(image), 1)
        model.crf_enabled = True
        expected_crf = model.crf(model.forward_unary(image), image)
    torch.testing.assert_close(without, unary)
    torch.testing.assert_close(with_crf, expected_crf)
    assert (with_crf - without).abs().max() > 1e-3


def test_model_without_crf_returns_unary_softmax():
    model = make_model(crf=False)
    assert model.crf_enabled is False
    image = torch.rand(1, 3, 24, 30) * 255
    with torch.no_grad():
        torch.testing.assert_close(model(image), torch.softmax(model.forward_unary(image), 1))


class StrideFourUnary(nn.Module):
    """A unary whose logits are smaller than its input."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 4, stride=4)

    def forward(self, x):
        return self.conv(x)


def test_forward_unary_resizes_logits_to_input_size():
    model = SegmentationModel(StrideFourUnary(), None, ModelMetadata.for_classes(CLASSES))
    image = torch.rand(2, 3, 41, 63) * 255
    with torch.no_grad():
        logits = model.forward_unary(image)
        raw = model.unary(model.normalize(image))
    assert raw.shape == (2, 3, 10, 15)
    assert logits.shape == (2, 3, 41, 63)
    expected = torch.nn.functional.interpolate(raw, size=(41, 63), mode="bilinear",
                                               align_corners=False)
    torch.testing.assert_close(logits, expected)


def test_normalize_uses_metadata_mean_and_std():
    metadata = ModelMetadata(class_names=CLASSES, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    model = SegmentationModel(FastFCN(3, width=8), None, metadata)
    image = torch.full((1, 3, 2, 2), 255.0)
    out = model.normalize(image)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([1.0, 3.0, 1.0]))


def test_predict_returns_labels_for_an_hwc_uint8_image():
    model = make_model()
    rgb = torch.randint(0, 256, (30, 44, 3), dtype=torch.uint8)
    labels = model.predict(rgb.numpy())
    assert labels.shape == (30, 44) and labels.dtype == torch.int64
    assert 0 <= int(labels.min()) and int(labels.max()) < 3


def test_class_count_mismatch_between_crf_and_metadata_raises():
    with pytest.raises(ValueError, match="classes"):
        SegmentationModel(FastFCN(3, width=8), ConvCRF(CRFConfig(num_classes=4)),
                          ModelMetadata.for_classes(CLASSES))


@pytest.mark.parametrize("shape,hint", [((3, 20, 20), "unsqueeze"), ((1, 20, 20, 3), "permute"),
                                        ((1, 4, 20, 20), r"\(N, 3, H, W\)")])
def test_bad_image_shapes_raise_with_a_hint(shape, hint):
    model = make_model()
    with pytest.raises(ValueError, match=hint):
        model(torch.rand(*shape))


def test_unary_with_wrong_class_count_is_reported():
    model = SegmentationModel(nn.Conv2d(3, 5, 1), None, ModelMetadata.for_classes(CLASSES))
    with pytest.raises(ValueError, match="unary returned"):
        model(torch.rand(1, 3, 8, 8))


def test_gradients_reach_unary_and_crf():
    model = make_model().train()
    probs = model(torch.rand(1, 3, 24, 24) * 255)
    probs[:, 1].mean().backward()
    assert model.unary.classifier.weight.grad is not None
    assert model.crf.message_weight.grad is not None


# ---- the shipped demo model --------------------------------------------------------------

def test_demo_model_loads_with_scene_metadata():
    from convcrf_deploy.data.scenes import SyntheticScene
    from convcrf_deploy.model import DEMO_MODEL_PATH, load_model
    model = load_model("demo")
    assert DEMO_MODEL_PATH.stat().st_size < 1_000_000
    assert model.metadata.class_names == list(SyntheticScene.CLASS_NAMES)
    assert model.metadata.input_size == (240, 320) and model.metadata.resize == "stretch"
    assert model.crf is not None and model.crf.config.filter_size == 7
    assert model.crf.config.blur == 4 and not model.training


def test_demo_crf_improves_its_unary_on_fresh_frames():
    """Frames from scenes used neither in training (seeds >= 10000) nor in picking the CRF
    weights: the CRF must beat the unary on both pixel accuracy and mIoU."""
    from convcrf_deploy.data.scenes import SyntheticScene
    from convcrf_deploy.metrics import confusion_matrix, mean_iou, pixel_accuracy
    from convcrf_deploy.model import load_model
    model = load_model("demo")
    c = model.num_classes
    unary_cm, crf_cm = np.zeros((c, c), np.int64), np.zeros((c, c), np.int64)
    for seed in (5000, 5001, 5002):
        rgb, labels = SyntheticScene(seed=seed).render(123)
        image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
        with torch.no_grad():
            logits = model.forward_unary(image)
            unary_cm += confusion_matrix(logits[0].argmax(0).numpy(), labels, c)
            crf_cm += confusion_matrix(model(image)[0].argmax(0).numpy(), labels, c)
    assert pixel_accuracy(unary_cm) > 0.85                  # the unary is a real segmenter
    assert pixel_accuracy(crf_cm) > pixel_accuracy(unary_cm)
    assert mean_iou(crf_cm) > mean_iou(unary_cm) + 0.01


@pytest.mark.parametrize("names, message", [
    # new-user trial: each exported with status 0 and no warning
    ("abcd", "a list of names, got the string 'abcd'"),
    (["", "", ""], "class 0 has an empty name"),
    (["road", " ", "car"], "class 1 has an empty name"),
    (["a", "a", "b", "c"], "'a' names classes 0 and 1"),
])
def test_class_names_are_a_list_of_distinct_names(names, message):
    with pytest.raises(ValueError, match=message):
        ModelMetadata(class_names=names)
