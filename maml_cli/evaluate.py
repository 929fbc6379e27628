"""The one evaluation protocol, used for validation during training and by maml-eval."""

from __future__ import annotations

import math

import torch

from maml_cli.build import Run


@torch.no_grad()
def adaptation_curves(run: Run, split: str, num_tasks: int, steps: int, seed: int,
                      batch_size: int) -> torch.Tensor:
    """Query metric of `num_tasks` fresh tasks after 0..steps inner steps: [num_tasks, steps+1].

    The tasks depend only on (split, num_tasks, seed, batch_size), so the same call on the same
    checkpoint gives the same numbers.
    """
    generator = torch.Generator(run.device).manual_seed(seed)
    params = {k: p.detach() for k, p in run.model.named_parameters()}
    buffers = dict(run.model.named_buffers())
    curves = []
    for start in range(0, num_tasks, batch_size):
        episode = run.task.sample(split, min(batch_size, num_tasks - start), generator)
        curves.append(run.engine.map_tasks(run.algorithm.adaptation_curve, params, buffers,
                                           episode, steps=steps))
    return torch.cat(curves).float().cpu()


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """Mean and half-width of the normal-approximation 95% confidence interval."""
    values = values.double()
    return values.mean().item(), 1.96 * values.std().item() / math.sqrt(values.numel())
