"""The half-cheetah tasks on gymnasium's MuJoCo model: rewards against the simulator's own state,
seeded starts, and the one-line error without the [rl] extra."""

import sys

import pytest
import torch

from maml_cli.errors import UserError
from maml_cli.tasks.locomotion import HalfCheetahDirection, HalfCheetahVelocity


def step_by_hand(task, goal, action):
    """One step of every rollout, with the velocity read from MuJoCo's own positions."""
    state = task.reset(goal, action.shape[0], torch.Generator().manual_seed(0))
    envs = [env.unwrapped for env in task.active.envs]
    before = torch.tensor([env.data.qpos[0] for env in envs])
    _, reward, done = task.step(state, action, goal)
    after = torch.tensor([env.data.qpos[0] for env in envs])
    velocity = ((after - before) / envs[0].dt).float()
    return velocity, reward, done


def test_goal_velocity_reward_is_minus_the_distance_from_it_minus_the_clipped_control_cost():
    task = HalfCheetahVelocity(horizon=5)
    goal = torch.tensor([1.5])
    action = torch.tensor([[0.5] * 6, [3.0, -3.0, 0.0, 0.0, 0.0, 0.0]])  # the second clipped
    velocity, reward, done = step_by_hand(task, goal, action)
    control = torch.tensor([6 * 0.25, 2.0])
    torch.testing.assert_close(reward, -(velocity - 1.5).abs() - 0.05 * control)
    assert velocity.abs().max() > 0 and not done.any()


def test_goal_direction_reward_is_the_velocity_that_way_minus_the_control_cost():
    task = HalfCheetahDirection(horizon=5)
    action = torch.full((3, 6), 0.2)
    for direction in (1.0, -1.0):
        velocity, reward, _ = step_by_hand(task, torch.tensor([direction]), action)
        torch.testing.assert_close(reward, direction * velocity - 0.05 * 6 * 0.04)


def test_goals_follow_the_papers_distributions():
    generator = torch.Generator().manual_seed(0)
    velocities = HalfCheetahVelocity().goals(500, generator)
    assert velocities.shape == (500, 1) and 0 <= velocities.min() and velocities.max() <= 2
    directions = HalfCheetahDirection().goals(500, generator)
    assert set(directions.flatten().tolist()) == {-1.0, 1.0}
    assert 0.4 < (directions > 0).float().mean() < 0.6


def test_starts_are_drawn_from_the_generator():
    task = HalfCheetahVelocity()
    goal = torch.tensor([1.0])
    first = task.reset(goal, 3, torch.Generator().manual_seed(5))
    again = task.reset(goal, 3, torch.Generator().manual_seed(5))
    other = task.reset(goal, 3, torch.Generator().manual_seed(6))
    assert first.shape == (3, 17)
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, other) and not torch.equal(first[0], first[1])


def test_without_the_rl_extra_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "gymnasium", None)  # what an absent package looks like
    with pytest.raises(UserError, match=r"need the \[rl\] extra .*pip install 'maml-cli\[rl\]'"):
        HalfCheetahDirection()
