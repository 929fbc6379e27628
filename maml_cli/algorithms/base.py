"""What every algorithm shares: the model called functionally, the task's loss and metrics, the
inner optimizer, and `learned`, the algorithm's own meta-parameters (learned inner rates,
per-step norm weights), which are trained and checkpointed beside the model's."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.func import functional_call

from maml_cli.algorithms.inner import SGD
from maml_cli.errors import UserError
from maml_cli.tasks.base import FixedData, TaskData

Params = dict[str, Tensor]
# task_loss's metrics may hold, under this key, state that the algorithm carries from one
# meta-batch to the next (a dict of tensors, Reptile's kept inner Adam state): averaged over
# the tasks and ranks as the metrics are, then handed to Algorithm.carry_over, not logged.
CARRY = "carry"


def split_head(model: nn.Module, algorithm: str) -> tuple[nn.Sequential, nn.Module, str]:
    """(body, head, the head's parameter-name prefix): the head is the last layer of an
    nn.Sequential. The body keeps the model's parameter names."""
    if not isinstance(model, nn.Sequential) or not list(model[-1].parameters()):
        raise UserError(f"{algorithm} needs a model whose last layer is its head (an "
                        f"nn.Sequential ending in a layer with weights, as mlp and conv4 are)")
    names = list(model._modules)
    body = nn.Sequential(OrderedDict((n, model._modules[n]) for n in names[:-1]))
    return body, model._modules[names[-1]], f"{names[-1]}."


def body_params(params: Params, head_prefix: str) -> Params:
    """The parameters of split_head's body: all but the head's."""
    return {k: v for k, v in params.items() if not k.startswith(head_prefix)}


def feature_maps(model: nn.Module, algorithm: str) -> nn.Sequential:
    """The layers of an image model before it flattens or pools its feature maps away (conv4's
    and resnet12's convolutional blocks), keeping the model's parameter names."""
    ends = (nn.Flatten, nn.AdaptiveAvgPool2d)
    names = list(model._modules) if isinstance(model, nn.Sequential) else []
    end = next((i for i, n in enumerate(names) if isinstance(model._modules[n], ends)), None)
    if not getattr(model, "takes_images", False) or not end:
        raise UserError(f"{algorithm} compares feature maps: it needs an image model "
                        f"(model=conv4 or resnet12)")
    return nn.Sequential(OrderedDict((n, model._modules[n]) for n in names[:end]))


class Learned(nn.Module):
    """An algorithm's own meta-parameters. Called as torch.func.functional_call(learned,
    values, (fn, *args)), it runs fn(*args) with `values` in place of its parameters: how a
    compiled meta-iteration differentiates them (Engine.meta_step). So the algorithm reads them
    through this module at every use, never through references of its own."""

    def forward(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)


class Algorithm:
    # Whether training adapts to each task: the engine collects RL rollouts after the inner
    # steps only when it does (the pretrained baseline trains on its one policy's rollouts).
    adapts_in_training = True

    def __init__(self, model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor],
                 metric_fn: Callable[[Tensor, Tensor], Tensor], inner: SGD,
                 num_classes: int | None = None, data_fn: Callable[..., TaskData] | None = None,
                 objective_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
                 kl_fn: Callable[[Tensor, Tensor], Tensor] | None = None):
        # metric_fn: the task's metrics of (predictions, targets), its main one first (a scalar
        # or a vector: TaskFamily.metrics); training logs the main one, evaluation all.
        self.model, self.loss_fn, self.metric_fn = model, loss_fn, metric_fn
        # The meta-objective's loss on the query (TaskFamily.query_loss: the inner loss, or RL's
        # importance-weighted surrogate) and, for RL tasks, the KL between the policy that drew
        # the query samples and the adapted one (what outer=trpo bounds).
        self.objective_fn, self.kl_fn = objective_fn or loss_fn, kl_fn
        # The task's data from its episode tensors (TaskFamily.task_data): fixed support and query
        # sets, or the rollouts of the policy after each inner step.
        self.data_fn = data_fn or FixedData
        self.inner, self.num_classes = inner, num_classes
        self.learned = Learned()

    def start_iteration(self, iteration: int) -> None:
        """Before each meta-iteration (1, 2, ...): where schedules inside the algorithm are set,
        outside task_loss, so that a compiled task_loss does not see them change."""

    def carry_over(self, carry: dict[str, Tensor]) -> None:
        """After each meta-update: the meta-batch's mean CARRY, if task_loss returns one."""

    def forward(self, params: Params, buffers: Params, x: Tensor) -> Tensor:
        return functional_call(self.model, (params, buffers), (x,))

    def inner_lr(self) -> float | Tensor:
        """The inner learning rate, for logging (the mean, where rates are learned)."""
        return self.inner.lr

    def task_loss(self, params, buffers, support_x, support_y, query_x, query_y, steps: int):
        """One task: (the loss whose gradient is the task's meta-gradient, metrics)."""
        raise NotImplementedError

    def outcomes(self, params, buffers, support_x, support_y, query_x, query_y, steps: int,
                 transductive: bool = True) -> Iterator[tuple[Tensor, Tensor]]:
        """(query predictions, query targets) after 0, 1, ..., steps inner steps. Transductive:
        the query images are predicted together, so a model with batch statistics normalises
        each with the others; else each with the support set alone (eval.transductive)."""
        raise NotImplementedError

    def adaptation_curve(self, params, buffers, support_x, support_y, query_x, query_y, steps: int,
                         transductive: bool = True):
        """One task: the query metrics after 0, 1, ..., steps inner steps, [steps + 1, metrics]."""
        outcomes = self.outcomes(params, buffers, support_x, support_y, query_x, query_y, steps,
                                 transductive)
        return torch.stack([torch.atleast_1d(self.metric_fn(p, y)) for p, y in outcomes])

    def metrics(self, outcome: tuple[Tensor, Tensor], when: str = "post") -> dict[str, Tensor]:
        """Loss and main metric of (query predictions, targets), after adaptation ("post") or
        before it ("pre")."""
        prediction, target = outcome[0].detach(), outcome[1]
        return {f"loss_{when}": self.loss_fn(prediction, target),
                f"metric_{when}": torch.atleast_1d(self.metric_fn(prediction, target))[0]}

    def before(self, params, buffers, support_x, support_y, query_x, query_y):
        """One task's query metrics before adaptation. Training measures them on one meta-batch
        per log window, not in task_loss: there this extra forward of the query set, for a number
        that is only logged, was most of what made the eager loop slower than a naive loop
        (docs/performance.md, "The pre-adaptation forward")."""
        outcome = next(iter(self.outcomes(params, buffers, support_x, support_y, query_x,
                                          query_y, steps=0)))
        return self.metrics(outcome, "pre")


class NoInnerLoop(Algorithm):
    """A metric-based classifier: the query's scores come from the support in one pass of
    `scores` (Prototypical and Relation Networks), trained on the query loss, and the same at
    every step count, since nothing adapts."""

    option = ""  # its algorithm= name, for errors

    def __init__(self, model, loss_fn, metric_fn, inner, num_classes=None, data_fn=None,
                 objective_fn=None, kl_fn=None):
        if num_classes is None:
            raise UserError(f"algorithm={self.option} needs a classification task (one with "
                            f"task.ways)")
        super().__init__(model, loss_fn, metric_fn, inner, num_classes, data_fn, objective_fn,
                         kl_fn)

    def scores(self, params, buffers, support_x, support_y, query_x) -> Tensor:
        """[queries, classes]: the higher, the likelier."""
        raise NotImplementedError

    def task_loss(self, params, buffers, support_x, support_y, query_x, query_y, steps: int):
        query = (self.scores(params, buffers, support_x, support_y, query_x), query_y)
        return self.loss_fn(*query), self.metrics(query)

    def outcomes(self, params, buffers, support_x, support_y, query_x, query_y, steps: int,
                 transductive: bool = True):
        query = (self.scores(params, buffers, support_x, support_y, query_x), query_y)
        return [query] * (steps + 1)
