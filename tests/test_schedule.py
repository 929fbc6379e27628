"""The outer learning-rate schedules (trainer.lr_schedule)."""

import math

import pytest
import torch

from maml_cli.build import OuterSchedule


def schedule(kind, iterations, lr=0.1, min_lr=0.0, **step):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    return OuterSchedule(optimizer, kind, iterations, min_lr, **step), optimizer


@pytest.mark.parametrize("kind, middle", [("constant", 1.0), ("cosine", 0.5), ("linear", 0.5)])
def test_schedules_run_from_one_to_the_floor(kind, middle):
    factor = schedule(kind, iterations=100)[0].factor
    assert factor(0) == 1.0
    assert factor(50) == pytest.approx(middle)
    assert factor(100) == pytest.approx(1.0 if kind == "constant" else 0.0, abs=1e-12)
    assert factor(250) == factor(100)  # past the end it stays at the floor


def test_the_floor_is_min_lr_over_lr():
    factor = schedule("cosine", iterations=10, lr=0.1, min_lr=0.001)[0].factor
    assert factor(10) == pytest.approx(0.01)
    assert factor(3) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.3)))


def test_each_iteration_sets_the_rate_from_the_base_rate_alone():
    outer, optimizer = schedule("linear", iterations=4, lr=0.1)
    for iteration, rate in [(1, 0.1), (3, 0.05), (2, 0.075)]:
        outer.start(iteration)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(rate)


def test_steps_multiply_by_the_decay_every_n_iterations_past_the_run_too():
    factor = schedule("step", iterations=10, decay_every=4, decay=0.5)[0].factor
    assert [factor(done) for done in (0, 3, 4, 7, 8, 12, 40)] == [1, 1, 0.5, 0.5, 0.25, 0.125,
                                                                   0.5 ** 10]
    floored = schedule("step", iterations=10, lr=0.1, min_lr=0.01, decay_every=1)[0].factor
    assert floored(1) == pytest.approx(0.1 + 0.9 * 0.5)
