"""The outer learning-rate schedules (trainer.lr_schedule)."""

import math

import pytest

from maml_cli.trainer import lr_factor


@pytest.mark.parametrize("schedule, middle", [("constant", 1.0), ("cosine", 0.5), ("linear", 0.5)])
def test_schedules_run_from_one_to_the_floor(schedule, middle):
    factor = lr_factor(schedule, iterations=100, floor=0.0)
    assert factor(0) == 1.0
    assert factor(50) == pytest.approx(middle)
    assert factor(100) == pytest.approx(1.0 if schedule == "constant" else 0.0, abs=1e-12)
    assert factor(250) == factor(100)  # past the end it stays at the floor


def test_the_floor_is_min_lr_over_lr():
    factor = lr_factor("cosine", iterations=10, floor=0.01)
    assert factor(10) == pytest.approx(0.01)
    assert factor(3) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.3)))
