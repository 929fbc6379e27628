"""Outer optimizers torch.optim does not have: TRPO, the MAML paper's meta-optimizer for RL."""

from __future__ import annotations

import math

import torch


def _flat(tensors, like) -> torch.Tensor:
    return torch.cat([(t if t is not None else torch.zeros_like(p)).reshape(-1)
                      for t, p in zip(tensors, like)])


def conjugate_gradient(product, b: torch.Tensor, iterations: int,
                       tolerance: float = 1e-10) -> torch.Tensor:
    """x with product(x) ≈ b, for a symmetric positive definite product."""
    x, r = torch.zeros_like(b), b.clone()
    p, rr = r.clone(), r @ r
    for _ in range(iterations):
        if rr < tolerance:
            break
        ap = product(p)
        alpha = rr / (p @ ap)
        x, r = x + alpha * p, r - alpha * ap
        rr, rr_old = r @ r, rr
        p = r + (rr / rr_old) * p
    return x


class TRPO(torch.optim.Optimizer):
    """A trust-region step (Schulman et al. 2015) on the meta-objective, as the MAML paper takes
    for RL: the direction solves F x = -g by conjugate gradient, with F the Hessian of the KL
    between the policies that drew the samples and the ones the meta-parameters adapt to
    (Fisher-vector products by double backward, second order through the inner step); it is
    scaled so that the quadratic KL model equals `max_kl`, and a backtracking line search takes
    the first fraction (lr, lr·backtrack, ...) that lowers the surrogate and keeps the KL within
    `max_kl`, else no step. The gradient g is the parameters' .grad; step(closure) needs
    closure() -> (surrogate, KL) at the current parameters, differentiable, on the same samples.
    Defaults are rllab's (cbfinn/maml_rl)."""

    needs_closure = True

    def __init__(self, params, lr: float = 1.0, max_kl: float = 0.01, damping: float = 1e-5,
                 cg_iters: int = 10, backtrack: float = 0.8, line_search_steps: int = 15):
        super().__init__(params, dict(lr=lr, max_kl=max_kl, damping=damping, cg_iters=cg_iters,
                                      backtrack=backtrack, line_search_steps=line_search_steps))
        self.stats: dict[str, torch.Tensor] = {}

    def _set(self, params, flat: torch.Tensor) -> None:
        offset = 0
        for p in params:
            p.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()

    def step(self, closure):
        group = self.param_groups[0]
        params = [p for g in self.param_groups for p in g["params"]]
        gradient = _flat([p.grad for p in params], params)
        loss, kl = closure()
        kl_gradient = _flat(torch.autograd.grad(kl, params, create_graph=True,
                                                allow_unused=True), params)

        def fisher(v):
            hv = torch.autograd.grad(kl_gradient @ v, params, retain_graph=True,
                                     allow_unused=True)
            return _flat(hv, params) + group["damping"] * v

        direction = conjugate_gradient(fisher, -gradient, group["cg_iters"])
        curvature = direction @ fisher(direction)
        full = direction * math.sqrt(2 * group["max_kl"] / max(curvature.item(), 1e-12))
        start, before = _flat([p.detach() for p in params], params), loss.detach()
        taken, new_kl = 0, kl.detach()
        with torch.no_grad():
            for k in range(group["line_search_steps"]):
                self._set(params, start + group["lr"] * group["backtrack"] ** k * full)
                new_loss, new_kl = closure()
                if new_loss < before and new_kl <= group["max_kl"]:
                    taken = k + 1
                    break
            else:
                self._set(params, start)
        self.stats = {"trpo_kl": new_kl.detach() if taken else kl.detach() * 0,
                      "trpo_line_search_steps": before.new_tensor(float(taken)),
                      "trpo_surrogate_gain": (before - new_loss).detach() if taken
                      else before * 0}
        return loss
