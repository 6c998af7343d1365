"""SyntheticScene: deterministic, animated frames with consistent ground truth."""
import numpy as np
import pytest

from convcrf_deploy.data.scenes import SyntheticScene


def test_frame_types_and_shapes_at_odd_size():
    scene = SyntheticScene(height=97, width=131, seed=4)
    rgb, labels = scene.render(0)
    assert rgb.shape == (97, 131, 3) and rgb.dtype == np.uint8
    assert labels.shape == (97, 131) and labels.dtype == np.uint8
    assert labels.max() < len(SyntheticScene.CLASS_NAMES)
    assert SyntheticScene.CLASS_NAMES[0] == "background"


def test_render_is_a_pure_function_of_seed_and_time():
    a = SyntheticScene(seed=11)
    b = SyntheticScene(seed=11)
    rgb_late, labels_late = a.render(17)
    a.render(3)                                   # rendering other frames changes nothing
    for (rgb1, lab1), (rgb2, lab2) in ((a.render(17), (rgb_late, labels_late)),
                                       (b.render(17), (rgb_late, labels_late))):
        np.testing.assert_array_equal(rgb1, rgb2)
        np.testing.assert_array_equal(lab1, lab2)


def test_different_seeds_give_different_scenes():
    rgb0, labels0 = SyntheticScene(seed=0).render(0)
    rgb1, labels1 = SyntheticScene(seed=1).render(0)
    assert (labels0 != labels1).mean() > 0.02
    assert np.abs(rgb0.astype(int) - rgb1).mean() > 10


def test_objects_move_smoothly():
    scene = SyntheticScene(seed=2)
    _, first = scene.render(0)
    _, next_frame = scene.render(1)
    _, later = scene.render(40)
    step_change = (first != next_frame).mean()
    long_change = (first != later).mean()
    assert 0 < step_change < 0.05                  # consecutive frames: small motion
    assert long_change > 3 * step_change           # and the motion accumulates


def test_objects_are_present_and_labels_match_image_content():
    counts = np.zeros(len(SyntheticScene.CLASS_NAMES), int)
    for seed in range(6):
        rgb, labels = SyntheticScene(seed=seed).render(5)
        counts += np.bincount(labels.ravel(), minlength=len(counts))
        # An object's pixels look different from the background behind it: the image
        # changes where the labels say an object is.
        background = SyntheticScene(seed=seed, num_objects=0).render(5)[0]
        inside = labels > 0
        diff = np.abs(rgb.astype(int) - background).mean(axis=2)
        assert diff[inside].mean() > 3 * diff[~inside].mean()
    assert (counts[1:] > 0).all(), f"every object class appears in some scene: {counts}"


def test_no_objects_means_all_background():
    _, labels = SyntheticScene(seed=3, num_objects=0).render(9)
    assert not labels.any()


@pytest.mark.parametrize("kwargs", [dict(height=8), dict(width=0), dict(seed=-1),
                                    dict(num_objects=-2), dict(seed=1.5)])
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SyntheticScene(**kwargs)


def test_negative_time_raises():
    with pytest.raises(ValueError, match="t must be"):
        SyntheticScene().render(-1)
