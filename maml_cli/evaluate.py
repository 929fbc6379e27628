"""The one evaluation protocol, used for validation during training and by maml-eval."""

from __future__ import annotations

import math

import torch

from maml_cli import distributed
from maml_cli.build import Run
from maml_cli.distributed import Group
from maml_cli.figures import task_figure
from maml_cli.tracking import Tracker, log

# Validation tasks come from their own stream, fixed per run seed, so every validation of a run
# sees the same tasks and never the training stream's.
VAL_SEED_OFFSET = 7_919


@torch.no_grad()
def adaptation_curves(run: Run, split: str, num_tasks: int, seed: int, batch_size: int,
                      group: Group = distributed.ONE_PROCESS) -> torch.Tensor:
    """Query metrics of `num_tasks` fresh tasks after 0..eval_steps inner steps:
    [num_tasks, eval_steps + 1, metrics] (TaskFamily.metric_names).

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
            curves.append((index, run.engine.curves(params, buffers, episode,
                                                    transductive=run.eval.transductive).cpu()))
    if group.world > 1:
        curves = distributed.gather(curves)
    return torch.cat([curve for _, curve in sorted(curves, key=lambda c: c[0])]).float()


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """Mean and half-width of the normal-approximation 95% confidence interval."""
    values = values.double()
    return values.mean().item(), 1.96 * values.std().item() / math.sqrt(values.numel())


def validate(run: Run, tracker: Tracker, iteration: int, best: float | None,
             figure: bool = True) -> float:
    """The validation metric after eval_steps on trainer.val_tasks validation tasks, logged with
    the metric before adaptation (and with `figure`, the task's figure, where it has one)."""
    seed, steps, name = run.seed + VAL_SEED_OFFSET, run.engine.eval_steps, run.task.metric_name
    curves = adaptation_curves(run, "val", run.trainer.val_tasks, seed, run.eval.batch_size)[..., 0]
    before, _ = mean_ci95(curves[:, 0])
    after, ci = mean_ci95(curves[:, -1])
    tracker.scalars(iteration, {f"val/{name}_pre": before, f"val/{name}": after})
    drawn = task_figure(run, seed, (1, steps)) if figure else None
    if drawn is not None:
        tracker.figure(f"val/{drawn[0]}", drawn[1], iteration)
    log.info("iteration %d: val %s %.4f before adaptation, %.4f ± %.4f after %d steps%s",
             iteration, name, before, after, ci, steps,
             " (best)" if run.task.better(after, best) else "")
    return after
