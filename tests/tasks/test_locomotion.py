"""The half-cheetah tasks on gymnasium's MuJoCo model: rewards against the simulator's own state,
seeded starts, and the one-line error without the [rl] extra."""

import math
import sys

import pytest
import torch

from maml_cli.errors import UserError
from maml_cli.tasks.locomotion import HalfCheetahDirection, HalfCheetahVelocity


def step_by_hand(task, goal, action):
    """One step of every rollout (each with the same goal), with the velocity read from MuJoCo's
    own positions."""
    goal = goal.expand(action.shape[0], 1)
    state = task.reset(goal, torch.arange(action.shape[0]))
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


def test_starts_are_drawn_from_their_seeds():
    task = HalfCheetahVelocity()
    goal = torch.ones(3, 1)
    first = task.reset(goal, torch.tensor([5, 6, 7]))
    again = task.reset(goal, torch.tensor([5, 6, 7]))
    other = task.reset(goal, torch.tensor([8, 6, 7]))
    assert first.shape == (3, 17)
    torch.testing.assert_close(first, again)
    assert not torch.equal(first[0], other[0]) and torch.equal(first[1:], other[1:])
    assert not torch.equal(first[0], first[1])


def test_a_batch_of_tasks_rolls_out_as_each_task_alone():
    task = HalfCheetahDirection(shots=2, horizon=4)
    goal = torch.tensor([[1.0], [-1.0]])

    def policy(obs):  # [tasks, n, 17] -> [tasks, n, 12]: a mean from the state, spread 0.5
        mean = torch.tanh(obs[..., :6])
        return torch.cat([mean, torch.full_like(mean, math.log(0.5))], -1)

    together = task.rollouts(policy, goal, 2, [torch.Generator().manual_seed(s) for s in (1, 2)])
    # The advantages are left out: their baseline, a ridge fit of 38 features to these 8 steps,
    # is so ill-conditioned that batched and single float32 solves differ by rounding on some
    # CPUs. The batched fit is checked on well-posed data in test_navigation.py.
    kept = torch.arange(together[1].shape[-1]) != task.columns["advantage"]
    for t, seed in enumerate((1, 2)):
        alone = task.rollouts(policy, goal[t:t + 1], 2, [torch.Generator().manual_seed(seed)])
        torch.testing.assert_close(alone[0][0], together[0][t])
        torch.testing.assert_close(alone[1][0][..., kept], together[1][t][..., kept])
    rewards = together[1][..., task.columns["reward"]]
    assert rewards.shape == (2, 8) and not torch.equal(rewards[0], -rewards[1])


def test_without_the_rl_extra_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "gymnasium", None)  # what an absent package looks like
    with pytest.raises(UserError, match=r"need the \[rl\] extra .*pip install 'maml-cli\[rl\]'"):
        HalfCheetahDirection()
