"""The MAML paper's "pretrained" baseline: ordinary training on all tasks' data, no inner loop
in training; at test time it fine-tunes exactly as MAML adapts."""

from __future__ import annotations

import torch

from maml_cli.algorithms.maml import MAML


class Pretrain(MAML):
    """One network regressed (or classified) jointly on every task's support and query data
    (on RL tasks: policy gradient on the rollouts of the one policy).
    On image tasks the labels are each task's own shuffled class order, so joint training can
    only learn features, not a classifier; the paper ran this baseline on sinusoids only."""

    adapts_in_training = False  # its RL rollouts all come from the one, unadapted policy

    def __init__(self, model, loss_fn, metric_fn, inner, num_classes=None, data_fn=None,
                 objective_fn=None, kl_fn=None):
        super().__init__(model, loss_fn, metric_fn, inner, num_classes, data_fn, objective_fn,
                         kl_fn)

    def task_loss(self, params, buffers, support_x, support_y, query_x, query_y, steps: int):
        data = self.data_fn(support_x, support_y, query_x, query_y)
        (support_x, support_y), (query_x, query_y) = data.support(0), data.query(0)
        out = self.forward(params, buffers, torch.cat([support_x, query_x]))
        loss = self.loss_fn(out, torch.cat([support_y, query_y]))
        query = (out[support_x.shape[0]:], query_y)
        return loss, self.metrics(query)

    def surrogate(self, params, buffers, support_x, support_y, query_x, query_y, steps: int):
        """The meta-objective and KL of the one policy, unadapted (outer=trpo)."""
        x, y = self.data_fn(support_x, support_y, query_x, query_y).query(0)
        prediction = self.forward(params, buffers, x)
        return self.objective_fn(prediction, y), self.kl_fn(prediction, y)
