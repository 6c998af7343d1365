"""The mean-field schedule (convcrf_deploy/crf/schedule.py), written once for every executor:
the order of its steps, the warm start and the fast mode, seen through a recording executor
(no torch, no native library), and the arguments every CRF entry point checks alike."""
from __future__ import annotations

import numpy as np
import pytest

from convcrf_deploy import CRFConfig
from convcrf_deploy.crf.schedule import blurred_intermediate, check_arguments, mean_field


class RecordingExecutor:
    """Numbers stand in for arrays: each step returns a new label and logs what it got."""

    def __init__(self, compatibility: bool = False):
        self.has_compatibility = compatibility
        self.log: list[tuple] = []

    def softmax(self):
        self.log.append(("softmax",))
        return "softmax(z)"

    def pairwise_kernel(self):
        self.log.append(("kernel",))
        return "K"

    def start(self, blurred):
        self.log.append(("start", blurred))
        return 10.0

    def pool(self, q):
        self.log.append(("pool", q))
        return 20.0

    def message_passing(self, q_low, kernel):
        self.log.append(("messages", q_low, kernel))
        return f"M({q_low})"

    def compatibility(self, messages):
        self.log.append(("compatibility", messages))
        return f"C{messages}"

    def blurred_update(self, messages):
        self.log.append(("blurred", messages))
        return len(self.log) * 1.0

    def full_resolution_update(self, messages, last):
        self.log.append(("full", messages, last))
        return "Q" if last else len(self.log) * 1.0


def names(log):
    return [entry[0] for entry in log]


def test_exact_mode_runs_every_iteration_at_full_resolution():
    executor = RecordingExecutor()
    assert mean_field(executor, CRFConfig(iterations=3)) == "Q"
    assert names(executor.log) == ["kernel", "start"] + ["messages", "full"] * 3
    assert executor.log[1] == ("start", False)
    assert [entry[2] for entry in executor.log if entry[0] == "full"] == [False, False, True]
    # each iteration passes the messages of the previous one's pooled result
    assert executor.log[2] == ("messages", 10.0, "K")
    assert executor.log[4] == ("messages", 4.0, "K")


def test_fast_mode_keeps_all_but_the_last_iteration_on_the_blurred_grid():
    config = CRFConfig(iterations=4, blur=4, intermediate_resolution="blurred")
    executor = RecordingExecutor()
    assert mean_field(executor, config) == "Q"
    assert names(executor.log) == ["kernel", "start"] + ["messages", "blurred"] * 3 + [
        "messages", "full"]
    assert executor.log[1] == ("start", True) and executor.log[-1][2] is True
    # one iteration, or blur 1, is the exact mode
    for iterations, blur in ((1, 4), (3, 1)):
        assert not blurred_intermediate(config.replace(iterations=iterations, blur=blur),
                                        iterations)


def test_learned_compatibility_follows_every_message_passing():
    executor = RecordingExecutor(compatibility=True)
    mean_field(executor, CRFConfig(iterations=2))
    assert names(executor.log) == ["kernel", "start"] + ["messages", "compatibility", "full"] * 2
    assert executor.log[4][1] == "CM(10.0)"


def test_warm_start_mixes_the_pooled_previous_result_and_sets_the_iterations():
    executor = RecordingExecutor()
    mean_field(executor, CRFConfig(iterations=5), iterations=1, initial_q="previous",
               initial_q_weight=0.25)
    assert names(executor.log) == ["kernel", "start", "pool", "messages", "full"]
    assert executor.log[2] == ("pool", "previous")
    # w * pool(Q_prev) + (1 - w) * pool(softmax(z)) = 0.25 * 20 + 0.75 * 10
    assert executor.log[3][1] == pytest.approx(12.5)


def test_zero_iterations_is_the_softmax_without_a_kernel():
    executor = RecordingExecutor()
    assert mean_field(executor, CRFConfig(iterations=5), iterations=0,
                      initial_q="ignored") == "softmax(z)"
    assert executor.log == [("softmax",)]


@pytest.mark.parametrize("iterations, q_shape, weight, match", [
    (-1, None, 1.0, "iterations must be an int >= 0"),
    (True, None, 1.0, "iterations must be an int >= 0"),
    (2.0, None, 1.0, "iterations must be an int >= 0"),
    (2, (1, 4, 5, 5), 1.0, "initial_q must have the shape"),
    (2, (1, 4, 6, 7), 1.5, "initial_q_weight must be in 0..1"),
])
def test_bad_schedule_arguments_are_value_errors(iterations, q_shape, weight, match):
    with pytest.raises(ValueError, match=match):
        check_arguments(iterations, (1, 4, 6, 7), q_shape, weight)
    check_arguments(0, (1, 4, 6, 7), np.zeros((1, 4, 6, 7)).shape, 0.0)  # valid
