"""2D navigation (Finn et al. 2017, section 5.3): a point moves from the origin towards a goal it
does not observe. The environment is a few tensor operations, stepped for all rollouts of a
meta-batch at once on the run's device."""

from __future__ import annotations

import torch

from maml_cli.tasks.rl import RLTask


class Navigation2D(RLTask):
    """The goal is uniform in `goal_range`² and differs per task. The observation is the
    position, the action a velocity clipped to [-max_step, max_step] per coordinate, the reward
    minus the distance to the goal after the move; a rollout ends within `tolerance` of the goal
    or after `horizon` steps (what cbfinn/maml_rl, pytorch-maml-rl and learn2learn all do).

    `scale_actions`: the policy acts in [-1, 1] per coordinate, a unit action being a move of
    max_step, as in the paper's own code (cbfinn/maml_rl wraps the environment in rllab's
    `normalize`, which maps [-1, 1] onto the action bounds before clipping). Without it the
    action is the velocity itself (pytorch-maml-rl, learn2learn): a policy whose initial spread
    is 1 then moves at full speed in random directions, ten times its intended exploration."""

    observation_size = 2
    action_size = 2

    def __init__(self, shots: int = 20, queries: int = 20, horizon: int = 100,
                 discount: float = 0.99, goal_range: tuple[float, float] = (-0.5, 0.5),
                 max_step: float = 0.1, tolerance: float = 0.01, scale_actions: bool = True,
                 device="cpu", data=None):
        super().__init__(shots, queries, horizon, discount, device, data)
        self.goal_range, self.max_step, self.tolerance = tuple(goal_range), max_step, tolerance
        self.scale_actions = scale_actions

    def goals(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        low, high = self.goal_range
        u = torch.rand(num_tasks, 2, generator=generator, device=self.device)
        return low + (high - low) * u

    def reset(self, goal: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(goal)

    def step(self, state, action, goal):
        """(next state, reward, done) for every rollout at once."""
        if self.scale_actions:
            action = action * self.max_step
        state = state + action.clamp(-self.max_step, self.max_step)
        distance = (state - goal).norm(dim=-1)
        return state, -distance, distance < self.tolerance
