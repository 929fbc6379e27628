"""MuJoCo locomotion (Finn et al. 2017, section 5.3): the half cheetah runs at a goal velocity or
in a goal direction, on gymnasium's HalfCheetah-v5 stepped as a gymnasium vector environment on
the CPU (the `[rl]` extra: gymnasium and mujoco).

gymnasium's v5 model and observation differ from rllab's, which the paper used (its observation
adds the torso's centre of mass; masses, contacts and the integrator changed since), so returns
here are comparable to the paper's in shape, not to the digit. The reward follows the paper's
code (cbfinn/maml_rl): the task's forward term from the cheetah's velocity, minus
`ctrl_cost` |a|² on the action clipped to the actuators' range [-1, 1]."""

from __future__ import annotations

import logging
from abc import abstractmethod

import torch
from torch import Tensor

from maml_cli.errors import UserError
from maml_cli.tasks.rl import RLTask

ENV_ID = "HalfCheetah-v5"
# MuJoCo 4 warns about this attribute of gymnasium's cheetah model once per environment made,
# straight to stderr; it is gymnasium's to change and says nothing about the run.
FILTERED_WARNING = "compiler attribute 'settotalmass' is deprecated"


def _gymnasium():
    try:
        import gymnasium
        import mujoco
    except ImportError as e:
        raise UserError(f"the locomotion tasks need the [rl] extra ({e.name} is not "
                        "installed): pip install 'maml-cli[rl]'") from None
    log = logging.getLogger("maml_cli")
    mujoco.set_mju_user_warning(
        lambda message: None if FILTERED_WARNING in message else log.warning("MuJoCo: %s",
                                                                             message))
    return gymnasium


class HalfCheetah(RLTask):
    """A goal per task (goals(), forward_reward()); `shots` rollouts of `horizon` steps per
    inner step (the paper: 20 of 200)."""

    observation_size = 17
    action_size = 6
    # Each rollout stepped at once holds its own MuJoCo simulator: the preset's 800 at once, or
    # maml-eval's batches of 100 tasks (2,000), took gigabytes more than 200 at a time, which
    # steps as fast (the simulation, not the policy's calls, sets the pace).
    max_rollouts = 200

    def __init__(self, shots: int = 20, queries: int = 20, horizon: int = 200,
                 discount: float = 0.99, ctrl_cost: float = 0.05, device="cpu", data=None):
        super().__init__(shots, queries, horizon, discount, device, data)
        self.ctrl_cost = ctrl_cost
        self.gym = _gymnasium()
        self.envs: dict = {}  # rollouts per batch -> its vector environment, made once
        self.active = None  # the vector environment of the rollouts being stepped

    @abstractmethod
    def forward_reward(self, velocity: Tensor, goal: Tensor) -> Tensor:
        """The task's term of the reward, from the cheetah's forward velocity and the goal, per
        rollout."""

    def reset(self, goal: Tensor, seeds: Tensor) -> Tensor:
        rollouts = goal.shape[0]
        if rollouts not in self.envs:
            # Its own time limit would reset an environment under us past 1,000 steps.
            self.envs[rollouts] = self.gym.make_vec(
                ENV_ID, num_envs=rollouts, vectorization_mode="sync",
                max_episode_steps=self.horizon + 1)
        self.active = self.envs[rollouts]
        observation, _ = self.active.reset(seed=seeds.tolist())
        return torch.as_tensor(observation, dtype=torch.float32, device=goal.device)

    def step(self, state: Tensor, action: Tensor, goal: Tensor):
        action = action.clamp(-1, 1)
        observation, _, terminated, _, info = self.active.step(action.cpu().numpy())
        velocity = torch.as_tensor(info["x_velocity"], dtype=action.dtype, device=action.device)
        reward = (self.forward_reward(velocity, goal[:, 0])
                  - self.ctrl_cost * action.pow(2).sum(-1))
        return (torch.as_tensor(observation, dtype=torch.float32, device=action.device), reward,
                torch.as_tensor(terminated, device=action.device))


class HalfCheetahVelocity(HalfCheetah):
    """Run at a goal velocity, uniform in `goal_range` (the paper: [0, 2]); the forward term is
    minus the distance from it."""

    def __init__(self, goal_range: tuple[float, float] = (0.0, 2.0), **kwargs):
        super().__init__(**kwargs)
        self.goal_range = tuple(goal_range)

    def goals(self, num_tasks: int, generator: torch.Generator) -> Tensor:
        low, high = self.goal_range
        return low + (high - low) * torch.rand(num_tasks, 1, generator=generator,
                                               device=self.device)

    def forward_reward(self, velocity: Tensor, goal: Tensor) -> Tensor:
        return -(velocity - goal).abs()


class HalfCheetahDirection(HalfCheetah):
    """Run forward (+1) or backward (-1), each with probability 1/2; the forward term is the
    velocity in that direction."""

    def goals(self, num_tasks: int, generator: torch.Generator) -> Tensor:
        coin = torch.randint(2, (num_tasks, 1), generator=generator, device=self.device)
        return 2.0 * coin - 1.0

    def forward_reward(self, velocity: Tensor, goal: Tensor) -> Tensor:
        return goal * velocity
