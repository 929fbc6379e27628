"""Sinusoid regression (Finn et al. 2017, section 5.1)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from maml_cli.episode import Episode
from maml_cli.errors import UserError
from maml_cli.tasks.base import TaskFamily


class Sinusoid(TaskFamily):
    """y = A sin(x - phase); A ~ U[amplitude], phase ~ U[phase], x ~ U[x_range].

    Every split draws from the same distribution of functions: validation and test tasks are
    kept apart from training tasks by their own generator seeds, as in the paper.
    """

    input_shape = (1,)
    num_outputs = 1
    metric_name = "mse"
    higher_is_better = False

    def __init__(
        self,
        shots: int = 10,
        queries: int = 10,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
        device: torch.device | str = "cpu",
        data=None,
    ):
        super().__init__(device, data)
        for key, (lo, hi) in {"amplitude": amplitude, "phase": phase, "x_range": x_range}.items():
            if not lo <= hi:
                raise UserError(f"task.{key} must be [low, high] with low <= high (got {[lo, hi]})")
        self.shots, self.queries = shots, queries
        self.amplitude, self.phase, self.x_range = tuple(amplitude), tuple(phase), tuple(x_range)

    def _uniform(self, bounds, shape, generator):
        return torch.empty(shape, device=self.device).uniform_(*bounds, generator=generator)

    def functions(self, num_tasks: int, generator: torch.Generator):
        """Amplitudes and phases, each [T, 1, 1]."""
        shape = (num_tasks, 1, 1)
        return self._uniform(self.amplitude, shape, generator), self._uniform(
            self.phase, shape, generator
        )

    @staticmethod
    def sine(amplitude, phase, x):
        return amplitude * torch.sin(x - phase)

    def sample(self, split: str, num_tasks: int, generator: torch.Generator) -> Episode:
        return self.episode(*self.functions(num_tasks, generator), generator)

    def episode(self, amplitude, phase, generator, query_x=None) -> Episode:
        """Support points drawn for the given functions; query points drawn too unless given."""
        num_tasks = amplitude.shape[0]
        support_x = self._uniform(self.x_range, (num_tasks, self.shots, 1), generator)
        if query_x is None:
            query_x = self._uniform(self.x_range, (num_tasks, self.queries, 1), generator)
        return Episode(
            support_x,
            self.sine(amplitude, phase, support_x),
            query_x,
            self.sine(amplitude, phase, query_x),
        )

    def loss(self, prediction, target):
        return F.mse_loss(prediction, target)

    metric = loss
