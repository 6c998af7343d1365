"""The paper's synthetic noisy unary (Section 5.1)."""
import numpy as np
import pytest

from convcrf_deploy.data.synthetic import synthetic_logits, synthetic_logits_batch, synthetic_unary


def _labels(height=64, width=96):
    labels = np.zeros((height, width), np.int64)
    labels[8:40, 16:56] = 1
    labels[30:60, 60:90] = 2
    return labels


def test_unary_is_a_probability_map_and_reproducible_with_a_seed():
    labels = _labels()
    unary = synthetic_unary(labels, 3, rng=1)
    assert unary.shape == (3, 64, 96) and unary.dtype == np.float32
    assert unary.min() >= 0
    np.testing.assert_allclose(unary.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(unary, synthetic_unary(labels, 3, rng=1))
    assert not np.array_equal(unary, synthetic_unary(labels, 3, rng=2))


def test_keep_probability_one_gives_the_blurred_truth_and_zero_gives_pure_noise():
    labels = _labels()
    clean = synthetic_unary(labels, 3, keep_probability=1.0, rng=0)
    # Away from boundaries (more than one low-res cell) the blurred one-hot is exact.
    assert clean[1, 16:32, 24:48].min() == pytest.approx(1.0)
    assert (clean.argmax(0) == labels).mean() > 0.95
    noise = synthetic_unary(labels, 3, keep_probability=0.0, rng=0)
    agreement = (noise.argmax(0) == labels).mean()
    assert agreement < 0.6  # random labels agree with the truth about 1/3 of the time


def test_noise_flips_about_a_fifth_of_the_low_resolution_cells():
    labels = np.zeros((800, 800), np.int64)
    unary = synthetic_unary(labels, 5, rng=0)
    # Sample at low-res cell centres (the up-sampling is exact there); a dropped cell keeps
    # class 0 only if its random label is 0 (1/5), so wrong ~ 0.2 * 4/5 = 0.16.
    centres = unary[:, 4::8, 4::8].argmax(0)
    assert centres.shape == (100, 100)
    assert 0.13 < (centres != 0).mean() < 0.19


def test_void_label_is_background_for_the_unary():
    labels = np.full((32, 32), 255, np.int64)
    unary = synthetic_unary(labels, 4, keep_probability=1.0, rng=0)
    np.testing.assert_allclose(unary[0], 1.0, atol=1e-6)


def test_logits_are_finite_logs_of_the_unary():
    labels = _labels()
    logits = synthetic_logits(labels, 3, rng=3, epsilon=1e-4)
    unary = synthetic_unary(labels, 3, rng=3)
    assert np.isfinite(logits).all()
    np.testing.assert_allclose(np.exp(logits), np.maximum(unary, 1e-4), rtol=1e-5)


def test_batch_helper_gives_each_image_its_own_noise():
    torch = pytest.importorskip("torch")
    labels = torch.from_numpy(np.stack([_labels(), _labels()]))
    logits = synthetic_logits_batch(labels, 3, seed=5)
    assert logits.shape == (2, 3, 64, 96) and logits.dtype == torch.float32
    assert not torch.equal(logits[0], logits[1])
    assert torch.equal(logits, synthetic_logits_batch(labels, 3, seed=5))


def test_bad_labels_are_rejected_with_the_reason():
    with pytest.raises(ValueError, match="class 9"):
        synthetic_unary(np.array([[0, 9]]), 3, rng=0)
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        synthetic_unary(np.zeros((2, 2, 2), np.int64), 3, rng=0)
    with pytest.raises(ValueError, match="integers"):
        synthetic_unary(np.zeros((4, 4), np.float32), 3, rng=0)
