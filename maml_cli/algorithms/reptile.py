"""Reptile (Nichol et al. 2018): adapt a copy of the meta-parameters to each task with the inner
optimizer, then move the meta-parameters towards the adapted ones."""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from maml_cli.algorithms.base import CARRY
from maml_cli.algorithms.maml import MAML
from maml_cli.errors import UserError


class Reptile(MAML):
    """The meta-step θ ← θ + ε·mean_i(φ_i − θ) is an outer-optimizer step on the gradient
    θ − mean_i(φ_i), which is what task_loss's surrogate ½‖θ − φ_i‖² yields: with `outer=sgd`
    and `outer.lr=ε` it is the paper's batched update (serial: meta_batch_size=1), and
    `trainer.lr_schedule=linear` anneals ε to 0 as the paper does. The inner loop takes
    `inner.steps` steps on minibatches of `inner_batch_size` support examples (null: all).
    At test time it adapts exactly as MAML does.

    `keep_inner_state`: the inner optimizer's state (Adam's moments and step count) is kept
    from one task to the next instead of starting afresh, as the reference code's one Adam
    is (openai/supervised-reptile restores only the model's weights after a task, and adapts
    test tasks from that state too). Every task of a meta-batch starts from the kept state,
    which then becomes their mean final state; with meta_batch_size=1 that is the reference's
    serial run. Evaluation adapts from it and leaves it as it was. It is held in `learned`'s
    buffers, so checkpoints, resume and maml-eval carry it."""

    def __init__(self, model, loss_fn, metric_fn, inner, num_classes=None, data_fn=None,
                 objective_fn=None, kl_fn=None, inner_batch_size=None, keep_inner_state=False):
        super().__init__(model, loss_fn, metric_fn, inner, num_classes, data_fn, objective_fn,
                         kl_fn, first_order=True, inner_batch_size=inner_batch_size)
        self.kept_names, self.state_spec = [], None
        if keep_inner_state:
            fast = {k: model.get_parameter(k).detach() for k in self.adapted}
            leaves, self.state_spec = tree_flatten(inner.init(fast))
            if not leaves:
                raise UserError("algorithm.keep_inner_state keeps the inner optimizer's state, "
                                "and this one has none: use inner=adam")
            for i, leaf in enumerate(leaves):
                # A tensor step count, unlike a fresh state's number, so that a compiled
                # task_loss does not recompile as it grows; a copy each, since a fresh
                # state's moments share their zeros.
                value = torch.as_tensor(leaf, dtype=fast[self.adapted[0]].dtype,
                                        device=fast[self.adapted[0]].device)
                self.kept_names.append(f"inner_state:{i}")
                self.learned.register_buffer(self.kept_names[-1], value.clone())

    def _kept(self) -> list[torch.Tensor]:
        # Looked up each time: load_state_dict copies into these buffers, .to() replaces them.
        return [self.learned.get_buffer(name) for name in self.kept_names]

    def inner_start(self, fast):
        if not self.kept_names:
            return super().inner_start(fast)
        return tree_unflatten(self._kept(), self.state_spec)

    def carry_over(self, carry):
        with torch.no_grad():
            for name, kept in zip(self.kept_names, self._kept()):
                kept.copy_(carry[name])

    def task_loss(self, params, buffers, support_x, support_y, query_x, query_y, steps: int):
        start = {k: p.detach() for k, p in params.items()}
        path = list(self.trajectory(start, buffers, support_x, support_y, query_x, query_y,
                                    steps, first_order=True))
        with torch.no_grad():
            after = path[-1].query()
        adapted = path[-1].params
        loss = sum(0.5 * (p - adapted[k].detach()).pow(2).sum() for k, p in params.items())
        metrics = self.metrics(after)
        if self.kept_names:
            final = tree_flatten(path[-1].state)[0]
            metrics[CARRY] = {n: v.detach() for n, v in zip(self.kept_names, final)}
        return loss, metrics
