"""Decoupled CRF training, CRF-only checkpoints and the end-to-end loss."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from convcrf_deploy import ConvCRF, CRFConfig
from convcrf_deploy.data.folder import LabelledSample
from convcrf_deploy.training import (crf_nll_loss, evaluate_crf, joint_loss, load_crf,
                                     run_decoupled_training, save_crf, split_holdout,
                                     synthetic_examples, train_crf)

COLOURS = np.array([[120, 120, 120], [200, 60, 50], [50, 140, 210]], np.float64)


def scene(seed, height=48, width=64):
    rng = np.random.default_rng(seed)
    labels = np.zeros((height, width), np.int64)
    y, x = rng.integers(4, 20, size=2)
    labels[y:y + 20, x:x + 28] = 1
    labels[30:46, 40 + seed % 8:62] = 2
    image = np.clip(COLOURS[labels] + rng.normal(0, 10, (height, width, 3)), 0, 255)
    return LabelledSample(f"scene{seed}", image.astype(np.uint8), labels)


def test_nll_loss_matches_a_hand_computation_and_skips_void():
    q = torch.tensor([[[[0.5, 0.9]], [[0.5, 0.1]]]])   # (1, 2, 1, 2)
    labels = torch.tensor([[[1, 255]]])
    assert crf_nll_loss(q, labels).item() == pytest.approx(-np.log(0.5), rel=1e-6)


def test_training_lowers_the_loss_and_changes_only_trainable_groups():
    examples = synthetic_examples([scene(s) for s in range(3)], num_classes=3)
    crf = ConvCRF(CRFConfig(num_classes=3, filter_size=5, trainable=("kernel_weights", "bandwidths")))
    message_weight = crf.message_weight.detach().clone()
    before = evaluate_crf(crf, examples)["loss"]
    history = train_crf(crf, examples, epochs=4, lr=0.05)
    assert len(history) == 4
    assert evaluate_crf(crf, examples)["loss"] < before - 1e-3
    assert crf.appearance_weight.item() != pytest.approx(10.0)
    assert torch.equal(crf.message_weight, message_weight)  # not a trainable group


def test_decoupled_training_report_has_history_and_held_out_before_after():
    samples = [scene(s) for s in range(4)]
    train_samples, held_samples = split_holdout(samples, 0.25, seed=0)
    assert len(train_samples) == 3 and len(held_samples) == 1
    assert not {s.name for s in train_samples} & {s.name for s in held_samples}
    held_out = synthetic_examples(held_samples, num_classes=3, seed=100)
    config = CRFConfig(num_classes=3, filter_size=5, compatibility="learned",
                       trainable=("kernel_weights", "compatibility"))
    crf, report = run_decoupled_training(
        lambda epoch: synthetic_examples(train_samples, num_classes=3, seed=epoch), held_out,
        config, epochs=2, lr=0.05)
    assert len(report["loss_history"]) == 2
    assert set(report["held_out"]) == {"unary", "before", "after"}
    assert report["held_out_images"] == [held_samples[0].name]
    assert report["held_out"]["before"]["accuracy"] > report["held_out"]["unary"]["accuracy"]
    assert not torch.equal(crf.compatibility.weight, torch.eye(3).view(3, 3, 1, 1))


def test_split_holdout_refuses_to_leave_nothing_to_train_on():
    with pytest.raises(ValueError, match="still train"):
        split_holdout([1], 0.5)


def test_crf_checkpoint_round_trip_is_exact_and_loads_with_weights_only(tmp_path):
    crf = ConvCRF(CRFConfig(num_classes=3, filter_size=5, compatibility="learned",
                            learned_features=True))
    with torch.no_grad():
        crf.appearance_weight.fill_(7.5)
        crf.compatibility.weight.add_(0.1)
    save_crf(crf, tmp_path / "crf.pt")
    loaded = load_crf(tmp_path / "crf.pt")
    assert loaded.config == crf.config
    for name, tensor in crf.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    raw = torch.load(tmp_path / "crf.pt", weights_only=True)
    assert raw["format"] == "convcrf-deploy/crf" and raw["format_version"] == 1


def test_load_crf_rejects_other_files_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_crf(tmp_path / "missing.pt")
    torch.save({"format": "convcrf-deploy/model"}, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="load_model"):
        load_crf(tmp_path / "model.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="truncated, corrupt or not a PyTorch file"):
        load_crf(tmp_path / "junk.pt")


def test_joint_loss_trains_unary_and_crf_together():
    from convcrf_deploy import SegmentationModel
    from convcrf_deploy.metadata import ModelMetadata
    from convcrf_deploy.model import FastFCN

    torch.manual_seed(0)
    model = SegmentationModel(FastFCN(3, width=8), ConvCRF(CRFConfig(num_classes=3, filter_size=5)),
                              ModelMetadata(["background", "red", "blue"]))
    sample = scene(0)
    image = torch.from_numpy(sample.image).permute(2, 0, 1)[None].float()
    labels = torch.from_numpy(sample.labels)[None]
    loss = joint_loss(model, image, labels, aux_weight=0.5)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.unary.parameters())
    assert model.crf.appearance_weight.grad is not None
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = loss.item()
    for _ in range(5):
        optimizer.zero_grad()
        loss = joint_loss(model, image, labels, aux_weight=0.5)
        loss.backward()
        optimizer.step()
    assert joint_loss(model, image, labels).item() < first
    with pytest.raises(ValueError, match="labels must be"):
        joint_loss(model, image, labels[0])


def all_void(sample):
    return LabelledSample(sample.name + "-void", sample.image,
                          np.full_like(sample.labels, 255))


def test_all_void_images_are_skipped_and_counted_with_a_finite_loss():
    # Field report: one all-void image made evaluate_crf return loss nan and train_crf stop
    # with "the loss became nan ... lower the learning rate".
    from convcrf_deploy.training import count_all_void
    samples = [scene(0), all_void(scene(1)), scene(2)]
    examples = synthetic_examples(samples, num_classes=3)
    crf = ConvCRF(CRFConfig(num_classes=3, filter_size=5))
    result = evaluate_crf(crf, examples)
    assert np.isfinite(result["loss"]) and result["skipped_all_void"] == 1
    assert result["num_images"] == 2
    history = train_crf(crf, examples, epochs=2, lr=0.05)
    assert all(np.isfinite(history))
    assert count_all_void(examples) == 1
    _, report = run_decoupled_training(examples, examples[1:2] + examples[:1],
                                       CRFConfig(num_classes=3, filter_size=5), epochs=1)
    assert report["skipped_all_void"] == {"train": 1, "held_out": 1}
    assert np.isfinite(report["held_out"]["after"]["loss"])


def test_only_all_void_images_is_a_clear_error():
    examples = synthetic_examples([all_void(scene(0))], num_classes=3)
    crf = ConvCRF(CRFConfig(num_classes=3, filter_size=5))
    with pytest.raises(ValueError, match="all void"):
        evaluate_crf(crf, examples)
    with pytest.raises(ValueError, match="all void"):
        train_crf(crf, examples, epochs=1)


def test_evaluation_runners_skip_all_void_images_and_say_so():
    from convcrf_deploy.evaluation import evaluate_model, evaluate_synthetic, format_table
    from convcrf_deploy.metadata import ModelMetadata
    from convcrf_deploy.model import FastFCN, SegmentationModel
    samples = [all_void(scene(0)), scene(1)]
    result = evaluate_synthetic(samples, num_classes=3, filter_sizes=(3,), iterations=1,
                                fullcrf=False)
    assert result["num_images"] == 1
    assert "skipped 1 image(s) whose pixels are all void (255)" in format_table(result)
    model = SegmentationModel(FastFCN(3, width=8), ConvCRF(CRFConfig(num_classes=3, filter_size=3,
                                                                     iterations=1)),
                              ModelMetadata.for_classes(["a", "b", "c"]))
    result = evaluate_model(model, samples)
    assert result["num_images"] == 1 and result["notes"]
    with pytest.raises(ValueError, match="all void"):
        evaluate_synthetic(samples[:1], num_classes=3, filter_sizes=(3,), fullcrf=False)
