"""Reptile (Nichol et al. 2018): adapt a copy of the meta-parameters to each task with the inner
optimizer, then move the meta-parameters towards the adapted ones."""

from __future__ import annotations

import torch

from maml_cli.algorithms.maml import MAML


class Reptile(MAML):
    """The meta-step θ ← θ + ε·mean_i(φ_i − θ) is an outer-optimizer step on the gradient
    θ − mean_i(φ_i), which is what task_loss's surrogate ½‖θ − φ_i‖² yields: with `outer=sgd`
    and `outer.lr=ε` it is the paper's batched update (serial: meta_batch_size=1), and
    `trainer.lr_schedule=linear` anneals ε to 0 as the paper does. The inner loop takes
    `inner.steps` steps on minibatches of `inner_batch_size` support examples (null: all).
    At test time it adapts exactly as MAML does."""

    def __init__(self, model, loss_fn, metric_fn, inner, num_classes=None, data_fn=None,
                 objective_fn=None, kl_fn=None, inner_batch_size=None):
        super().__init__(model, loss_fn, metric_fn, inner, num_classes, data_fn, objective_fn,
                         kl_fn, first_order=True, inner_batch_size=inner_batch_size)

    def task_loss(self, params, buffers, support_x, support_y, query_x, query_y, steps: int):
        start = {k: p.detach() for k, p in params.items()}
        path = list(self.trajectory(start, buffers, support_x, support_y, query_x, query_y,
                                    steps, first_order=True))
        with torch.no_grad():
            before, after = path[0][1](), path[-1][1]()
        adapted = path[-1][0]
        loss = sum(0.5 * (p - adapted[k].detach()).pow(2).sum() for k, p in params.items())
        return loss, self.metrics(before, after)
