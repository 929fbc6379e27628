"""The one evaluation protocol, used for validation during training and by maml-eval."""

from __future__ import annotations

import math

import torch

from maml_cli import distributed
from maml_cli.build import Run
from maml_cli.distributed import Group


@torch.no_grad()
def adaptation_curves(run: Run, split: str, num_tasks: int, steps: int, seed: int,
                      batch_size: int, group: Group = distributed.ONE_PROCESS) -> torch.Tensor:
    """Query metric of `num_tasks` fresh tasks after 0..steps inner steps: [num_tasks, steps+1].

    The tasks depend only on (split, num_tasks, seed, batch_size), so the same call on the same
    checkpoint gives the same numbers. Under torchrun (`group`), every rank draws every batch
    but adapts only every world-th one, and all ranks get the whole result.
    """
    generator = torch.Generator(run.device).manual_seed(seed)
    params = {k: p.detach() for k, p in run.model.named_parameters()}
    buffers = dict(run.model.named_buffers())
    curves = []
    for index, start in enumerate(range(0, num_tasks, batch_size)):
        episode = run.task.sample(split, min(batch_size, num_tasks - start), generator)
        if index % group.world == group.rank:
            curves.append((index, run.engine.map_tasks(run.algorithm.adaptation_curve, params,
                                                       buffers, episode, steps=steps).cpu()))
    if group.world > 1:
        curves = distributed.gather(curves)
    return torch.cat([curve for _, curve in sorted(curves, key=lambda c: c[0])]).float()


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """Mean and half-width of the normal-approximation 95% confidence interval."""
    values = values.double()
    return values.mean().item(), 1.96 * values.std().item() / math.sqrt(values.numel())
