"""MAML (Finn et al. 2017) and its first-order approximation FOMAML."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad

Params = dict[str, Tensor]


class MAML:
    """Inner loop: `steps` SGD steps on the support loss from the meta-parameters.

    Second order: the inner gradients stay in the graph, so the meta-gradient is the exact
    gradient of the query loss through the unrolled inner loop. First order (FOMAML): the inner
    gradients are treated as constants, so the meta-gradient is the query-loss gradient at the
    adapted parameters.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        metric_fn: Callable[[Tensor, Tensor], Tensor],
        lr: float,
        first_order: bool = False,
    ):
        self.model, self.loss_fn, self.metric_fn = model, loss_fn, metric_fn
        self.lr, self.first_order = lr, first_order

    def forward(self, params: Params, buffers: Params, x: Tensor) -> Tensor:
        return functional_call(self.model, (params, buffers), (x,))

    def adapt(self, params: Params, buffers: Params, x: Tensor, y: Tensor, steps: int) -> Params:
        support_grad = grad(lambda p: self.loss_fn(self.forward(p, buffers, x), y))
        for _ in range(steps):
            grads = support_grad(params)
            if self.first_order:
                grads = {k: g.detach() for k, g in grads.items()}
            params = {k: p - self.lr * grads[k] for k, p in params.items()}
        return params

    def task_loss(self, params, buffers, support_x, support_y, query_x, query_y, steps: int):
        """One task: (query loss after adaptation, metrics before and after)."""
        with torch.no_grad():
            before = self.forward(params, buffers, query_x)
        fast = self.adapt(params, buffers, support_x, support_y, steps)
        after = self.forward(fast, buffers, query_x)
        loss = self.loss_fn(after, query_y)
        return loss, {
            "loss_pre": self.loss_fn(before, query_y),
            "loss_post": loss.detach(),
            "metric_pre": self.metric_fn(before, query_y),
            "metric_post": self.metric_fn(after.detach(), query_y),
        }

    def adaptation_curve(self, params, buffers, support_x, support_y, query_x, query_y, steps: int):
        """One task: the query metric after 0, 1, ..., steps inner steps, shape [steps + 1]."""
        values = [self.metric_fn(self.forward(params, buffers, query_x), query_y)]
        for _ in range(steps):
            params = self.adapt(params, buffers, support_x, support_y, 1)
            values.append(self.metric_fn(self.forward(params, buffers, query_x), query_y))
        return torch.stack(values)
