"""Inner-loop optimizers (config group `inner/`): pure functions of (params, grads, state), so
they run under torch.func.vmap and autograd differentiates through them (second order)."""

from __future__ import annotations

import torch
from torch import Tensor

Params = dict[str, Tensor]
Rates = dict[str, float | Tensor]  # a learning rate per parameter: a number or a tensor


class SGD:
    """Plain gradient descent, the MAML paper's inner loop.

    (Not a dataclass: hydra's instantiate would turn one passed on to the algorithm into a config.)
    """

    def __init__(self, lr: float, steps: int = 1, eval_steps: int = 10,
                 later_lr: float | None = None):
        self.lr = lr
        self.steps = steps  # inner steps in meta-training
        self.eval_steps = eval_steps  # inner steps at validation and maml-eval
        # The rate of steps 2, 3, ... (None: lr); the MAML paper's RL evaluation takes a first
        # step of 0.1, then steps of 0.05.
        self.later_lr = later_lr

    def step_size(self, step: int) -> float:
        """The fixed rate of inner step `step` (0, 1, ...)."""
        return self.lr if step == 0 or self.later_lr is None else self.later_lr

    def init(self, params: Params):
        return ()

    def step(self, params: Params, grads: Params, state, lr: Rates):
        return {k: p - lr[k] * grads[k] for k, p in params.items()}, state


class Adam(SGD):
    """Adam with bias correction; the Reptile paper's inner optimizer (with betas [0, 0.999])."""

    def __init__(self, lr: float, steps: int = 1, eval_steps: int = 10,
                 later_lr: float | None = None, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        super().__init__(lr, steps, eval_steps, later_lr)
        self.betas, self.eps = tuple(betas), eps

    def init(self, params: Params):
        zeros = {k: torch.zeros_like(p) for k, p in params.items()}
        return 0, zeros, dict(zeros)

    def step(self, params: Params, grads: Params, state, lr: Rates):
        (b1, b2), (t, m, v) = self.betas, state
        t = t + 1  # not in place: a kept state's step count is a buffer (Reptile)
        m = {k: b1 * m[k] + (1 - b1) * g for k, g in grads.items()}
        v = {k: b2 * v[k] + (1 - b2) * g * g for k, g in grads.items()}
        new = {k: p - lr[k] * (m[k] / (1 - b1 ** t)) / ((v[k] / (1 - b2 ** t)).sqrt() + self.eps)
               for k, p in params.items()}
        return new, (t, m, v)
