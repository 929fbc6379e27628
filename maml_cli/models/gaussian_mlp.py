"""Gaussian policies for reinforcement-learning tasks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from maml_cli.models.mlp import MLP


class GaussianMLP(nn.Module):
    """The MAML paper's policy: an MLP (two hidden layers of 100 ReLU units there) gives the mean
    action; the log standard deviation is a learned vector of its own, the same in every state.
    The output is the mean and the log std side by side, [..., 2 * num_outputs]. Both are
    meta-learned and adapted in the inner loop."""

    is_policy = True

    def __init__(self, input_shape: Sequence[int], num_outputs: int,
                 hidden: Sequence[int] = (100, 100), init_std: float = 1.0):
        super().__init__()
        self.mean = MLP(input_shape, num_outputs, hidden)
        self.log_std = nn.Parameter(torch.full((num_outputs,), float(init_std)).log())

    def forward(self, observation):
        mean = self.mean(observation)
        return torch.cat([mean, self.log_std.expand_as(mean)], -1)
