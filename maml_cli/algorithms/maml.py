"""MAML (Finn et al. 2017) with its first-order approximation and its family's inner-loop
variants, each an option of the one inner loop: Meta-SGD's learned per-parameter rates (Li et al.
2017), ANIL's head-only adaptation (Raghu et al. 2020) and the MAML++ switches (Antoniou et al.
2019): multi-step loss, per-layer per-step rates, per-step norm weights, and
derivative-order annealing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from maml_cli.algorithms.base import Algorithm, Params, body_params, split_head
from maml_cli.errors import UserError

ADAPT = ("all", "no_norm", "head")
LR_MODES = ("fixed", "per_layer_step", "per_parameter")
HEAD_INITS = ("learned", "zero")
# (query predictions, their targets)
Outcome = tuple[Tensor, Tensor]
# MAML++: the multi-step loss never gives an intermediate step less than this share of 1/steps.
MSL_MIN_SHARE = 0.03


class Adapted(NamedTuple):
    """The inner loop after some number of steps."""
    params: Params
    query: Callable[[], Outcome]  # the query predictions with `params`, and their targets
    state: Any  # the inner optimizer's


def _key(name: str) -> str:
    return name.replace(".", "/")  # module attribute names cannot hold dots


def _is_norm(module: nn.Module) -> bool:
    return (isinstance(module, nn.modules.batchnorm._NormBase)
            or type(module).__name__ == "BatchStatNorm")


class MAML(Algorithm):
    """Inner loop: `inner.steps` steps of the inner optimizer on the support loss, from the
    meta-parameters; the meta-objective is the query loss after them.

    Second order: the inner gradients stay in the graph, so the meta-gradient is the exact
    gradient of the query loss through the unrolled inner loop. First order (FOMAML): the inner
    gradients are constants, so the meta-gradient is the query-loss gradient at the adapted
    parameters. `first_order_until=N` trains first order for iterations 1..N, then second order.
    """

    def __init__(self, model, loss_fn, metric_fn, inner, num_classes=None, data_fn=None,
                 objective_fn=None, kl_fn=None, first_order=False, first_order_until=0,
                 adapt="all", lr_mode="fixed", per_step_norm=False, multi_step_loss=False,
                 msl_iterations=0, inner_batch_size=None, head_init="learned"):
        super().__init__(model, loss_fn, metric_fn, inner, num_classes, data_fn, objective_fn,
                         kl_fn)
        if inner.later_lr is not None and lr_mode != "fixed":
            raise UserError("inner.later_lr sets the fixed rate of later inner steps; with "
                            f"algorithm.lr_mode={lr_mode} the rates are learned (use one or "
                            "the other)")
        if adapt == "head" and per_step_norm:
            raise UserError("algorithm.per_step_norm needs algorithm.adapt=all: with adapt=head "
                            "the body runs once per task, not once per step")
        self.first_order, self.first_order_until = first_order, first_order_until
        self.multi_step_loss, self.msl_iterations = multi_step_loss, msl_iterations
        self.inner_batch_size, self.lr_mode = inner_batch_size, lr_mode
        self.num_steps = max(inner.steps, 1)  # rows of every per-step table
        # What changes with the iteration is settled in start_iteration, outside task_loss, as
        # Python values that flip at most once per run and a tensor updated in place: a
        # compiled task_loss (trainer.compile) would otherwise recompile every iteration.
        self.detach_inner_grads, self.msl_on = first_order, False
        self.msl_progress = next(model.parameters()).new_zeros(()).detach()
        self.body = self.head = None
        if adapt == "head":
            self.body, self.head, self.head_prefix = split_head(model, "algorithm.adapt=head")
        # head_init=zero: every task's head starts from zero, not from a meta-learned init
        # (the "zeroing trick", Kao et al. 2022): a random shared head adds the same noise to
        # every task's logits, which first-order training never learns to remove.
        self.zeroed = []
        if head_init == "zero":
            prefix = split_head(model, "algorithm.head_init=zero")[2]
            self.zeroed = [n for n, _ in model.named_parameters() if n.startswith(prefix)]
        # Per-step norm weights stand in for the model's own (then unused) and are not adapted
        # in the inner loop, as in MAML++. Its per-step running statistics have no counterpart:
        # MAML++ normalises with batch statistics in training and test alike, as conv4's norm
        # does, so no running statistics are ever used (or kept).
        norm_params = {}
        for name, module in model.named_modules() if per_step_norm else ():
            if _is_norm(module):
                for short, value in module.named_parameters(recurse=False):
                    norm_params[f"{name}.{short}"] = value.detach().expand(
                        self.num_steps, *value.shape).clone()
        # What the inner loop updates: all but per-step norm weights, all but the norm layers'
        # (as in the reference code, whose norm offsets are meta-learned only), or the head.
        frozen = set(norm_params)
        if adapt == "no_norm":
            frozen |= {f"{m}.{p}" if m else p for m, module in model.named_modules()
                       if _is_norm(module) for p, _ in module.named_parameters(recurse=False)}
        self.adapted = [n for n, _ in model.named_parameters() if n not in frozen
                        and (self.head is None or n.startswith(self.head_prefix))]
        lrs = {}
        for name in self.adapted:
            p = model.get_parameter(name).detach()
            if lr_mode == "per_layer_step":
                lrs[name] = torch.full((self.num_steps,), float(inner.lr)).to(p)
            elif lr_mode == "per_parameter":
                lrs[name] = torch.full_like(p, inner.lr)
        self.learned_names = {}  # ("lr" or "norm", parameter name) -> its name in `learned`
        for prefix, table in (("lr", lrs), ("norm", norm_params)):
            for name, value in table.items():
                self.learned_names[prefix, name] = f"{prefix}:{_key(name)}"
                self.learned.register_parameter(self.learned_names[prefix, name],
                                                nn.Parameter(value))

    def _table(self, prefix: str) -> dict:
        return {name: getattr(self.learned, key)
                for (p, name), key in self.learned_names.items() if p == prefix}

    @property
    def lrs(self) -> dict:
        """The learned inner rates by parameter name (Meta-SGD, MAML++), read through `learned`
        at every use (Learned)."""
        return self._table("lr")

    @property
    def norm_params(self) -> dict:
        """MAML++'s per-step norm weights by parameter name, read as lrs is."""
        return self._table("norm")

    def _lr(self, step: int) -> dict:
        if self.lr_mode == "per_layer_step":
            return {k: v[min(step, self.num_steps - 1)] for k, v in self.lrs.items()}
        if self.lr_mode == "per_parameter":
            return self.lrs
        return dict.fromkeys(self.adapted, self.inner.step_size(step))

    def inner_lr(self):
        if not self.lrs:
            return self.inner.lr
        return torch.cat([v.detach().flatten() for v in self.lrs.values()]).mean()

    def start_iteration(self, iteration: int) -> None:
        self.detach_inner_grads = self.first_order or 0 < iteration <= self.first_order_until
        self.msl_on = self.multi_step_loss and iteration <= self.msl_iterations
        if self.msl_on:  # a kernel launch on the GPU: only when the weights are used
            self.msl_progress.fill_((iteration - 1) / max(self.msl_iterations, 1))

    def step_weights(self, steps: int) -> Tensor | None:
        """MAML++'s multi-step loss: the weights of the query losses after steps 1..steps, from
        uniform at iteration 1 towards the last step alone, reached after msl_iterations; None
        once only the last step counts (or when the option is off)."""
        if not self.msl_on or steps < 2:
            return None
        other = ((1 - self.msl_progress) / steps).clamp(min=MSL_MIN_SHARE / steps)
        return torch.cat([other.expand(steps - 1), (1 - (steps - 1) * other).reshape(1)])

    def _batch(self, x: Tensor, y: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """The support minibatch of one inner step: consecutive slices, wrapping around (the
        image tasks order the support one image of every class at a time)."""
        n, size = x.shape[0], self.inner_batch_size
        if size is None or size >= n:
            return x, y
        index = (torch.arange(size, device=x.device) + step * size) % n
        return x[index], y[index]

    def inner_start(self, fast: Params):
        """The inner optimizer's state at the start of a task's inner loop."""
        return self.inner.init(fast)

    def trajectory(self, params, buffers, support_x, support_y, query_x, query_y, steps: int,
                   first_order: bool, transductive: bool = True) -> Iterator[Adapted]:
        """The inner loop after 0, 1, ..., steps inner steps (`transductive`: see outcomes)."""

        def alone(forward: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
            """forward on each query image in one batch with the support images, as
            openai/supervised-reptile's non-transductive evaluation predicts."""
            if transductive:
                return forward(x)
            return vmap(lambda one: forward(torch.cat([support, one[None]]))[-1])(x)

        support = support_x
        if self.head is not None:  # ANIL: the body's features once, the head adapts on them
            body = body_params(params, self.head_prefix)

            def features(x: Tensor) -> Tensor:
                return functional_call(self.body, (body, buffers), (x,))

            support_x, query_x = features(support_x), alone(features, query_x)
        fast = {k: params[k] for k in self.adapted}
        fast |= {k: torch.zeros_like(params[k]) for k in self.zeroed}
        fixed = {k: v for k, v in params.items() if k not in fast}

        def predict(p: Params, x: Tensor, step: int) -> Tensor:
            if self.head is not None:
                p = {k.removeprefix(self.head_prefix): v for k, v in p.items()}
                return functional_call(self.head, p, (x,))
            row = min(step, self.num_steps - 1)
            norm = {k: v[row] for k, v in self.norm_params.items()}
            return functional_call(self.model, ({**fixed, **p, **norm}, buffers), (x,))

        data = self.data_fn(support_x, support_y, query_x, query_y)

        def query(p: Params, step: int, row: int) -> Outcome:
            x, y = data.query(step)
            if self.head is not None:  # the features are per image already
                return predict(p, x, row), y
            return alone(lambda batch: predict(p, batch, row), x), y

        state = self.inner_start(fast)
        yield Adapted(fast, lambda p=fast: query(p, 0, 0), state)
        for step in range(steps):
            x, y = self._batch(*data.support(step), step)
            grads = grad(lambda p, x=x, y=y, s=step: self.loss_fn(predict(p, x, s), y))(fast)
            if first_order:
                grads = {k: g.detach() for k, g in grads.items()}
            fast, state = self.inner.step(fast, grads, state, self._lr(step))
            # MAML++'s indexing: the query after step s+1 uses the norm row of step s.
            yield Adapted(fast, lambda p=fast, s=step: query(p, s + 1, s), state)

    def _training_path(self, params, buffers, *task, steps: int):
        """The trajectory as this iteration trains it (first or second order)."""
        return list(self.trajectory(params, buffers, *task, steps, self.detach_inner_grads))

    def task_loss(self, params, buffers, support_x, support_y, query_x, query_y, steps: int):
        path = self._training_path(params, buffers, support_x, support_y, query_x, query_y,
                                   steps=steps)
        after = path[-1].query()
        weights = self.step_weights(steps)
        if weights is None:
            loss = self.objective_fn(*after)
        else:
            outcomes = [point.query() for point in path[1:-1]] + [after]
            loss = sum(w * self.objective_fn(*o) for w, o in zip(weights, outcomes))
        return loss, self.metrics(after)

    def surrogate(self, params, buffers, support_x, support_y, query_x, query_y, steps: int):
        """One task's meta-objective and the KL of its adapted policy from the one that drew
        its query samples, both differentiable in the meta-parameters (outer=trpo)."""
        after = self._training_path(params, buffers, support_x, support_y, query_x, query_y,
                                    steps=steps)[-1].query()
        return self.objective_fn(*after), self.kl_fn(*after)

    def outcomes(self, params, buffers, support_x, support_y, query_x, query_y, steps: int,
                 transductive: bool = True):
        for point in self.trajectory(params, buffers, support_x, support_y, query_x, query_y,
                                     steps, first_order=True, transductive=transductive):
            yield point.query()
