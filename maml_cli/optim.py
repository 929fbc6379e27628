"""Outer optimizers: TRPO, the MAML paper's meta-optimizer for RL, which torch.optim does not have,
and torch's fused Adam with less per-step overhead."""

from __future__ import annotations

import math

import torch
from torch.optim.optimizer import (
    _get_scalar_dtype,
    _global_optimizer_post_hooks,
    _global_optimizer_pre_hooks,
)


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


def _unhooked(step):
    """`step` without the profiler record and step hooks that torch wraps around an optimizer's
    step (once per class: a torch.optim.Adam made before might have wrapped torch's already)."""
    return step.__wrapped__ if getattr(step, "hooked", False) else step


class Adam(torch.optim.Adam):
    """torch.optim.Adam with fused=True that, once its state exists, hands each step straight to
    torch's fused kernel when it is used as the outer loop uses it (one group of dense tensors
    on one device, every one with a gradient; no amsgrad, weight decay or maximize) and nothing
    observes the step (no step hooks, no profiler). On small models Adam.step's own per-call
    bookkeeping (grouping the tensors by device, state lookups, graph-capture checks) and the
    profiler record torch wraps around every step cost more than the update (make bench's T1,
    docs/performance.md). The same kernel on the same state: its steps and state_dict are
    torch's, bit for bit (tests/test_optim.py). Anything else takes torch's own step, inside its
    record and hooks."""

    # (params, exp_avgs, exp_avg_sqs, steps) once the state exists; False: torch's step
    _fast = None

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        self._fast = None

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self._fast = None

    def _plain(self) -> bool:
        """Whether every step is the plain fused Adam update of one group's tensors."""
        if len(self.param_groups) != 1:
            return False
        group = self.param_groups[0]
        return bool(group["fused"]) and not (group["amsgrad"] or group["weight_decay"]
                                             or group["maximize"] or group["differentiable"]) \
            and isinstance(group["lr"], float)

    def _fast_lists(self):
        if not self._plain():
            return None
        params = self.param_groups[0]["params"]
        if not all(p in self.state for p in params) \
                or len({(p.device, p.dtype) for p in params}) != 1:
            return None
        states = [self.state[p] for p in params]
        return (params, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                [s["step"] for s in states])

    def functional(self):
        """(params, exp_avgs, exp_avg_sqs, steps, (beta1, beta2, eps)) for adam_update,
        creating torch's state (as its fused step would on its first call) where there is none
        yet; None where this optimizer's step is more than the plain fused update (as for the
        direct path)."""
        if not self._plain():
            return None
        group = self.param_groups[0]
        for p in group["params"]:
            if p not in self.state:
                self.state[p] = {
                    "step": torch.zeros((), dtype=_get_scalar_dtype(is_fused=True),
                                        device=p.device),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        self._fast = self._fast_lists() or False
        if not self._fast:  # tensors of several devices or dtypes
            return None
        return (*self._fast, (*group["betas"], group["eps"]))

    def _observed(self) -> bool:
        return bool(self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                    or _global_optimizer_pre_hooks or _global_optimizer_post_hooks
                    or torch.autograd._profiler_enabled())

    def step(self, closure=None):
        if self._fast is None and self.state:
            self._fast = self._fast_lists() or False
        grads = [p.grad for p in self._fast[0]] if self._fast else None
        if closure is not None or grads is None or any(g is None or g.is_sparse for g in grads) \
                or self._observed():
            return self._torch_step(closure)
        params, exp_avgs, exp_avg_sqs, steps = self._fast
        group = self.param_groups[0]
        beta1, beta2 = group["betas"]
        with torch.no_grad():
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False,
                               lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=0.0,
                               eps=group["eps"], maximize=False)
        return None

    # torch would wrap this step in its record and hooks: it does that only where it defers.
    step.hooked = True
    _torch_step = torch.optim.Optimizer.profile_hook_step(_unhooked(torch.optim.Adam.step))


def adam_update(params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, eps) -> None:
    """Adam's update of every parameter and its state, in place: torch's fused kernel in plain
    tensor operations, which torch.compile fuses into a compiled meta-iteration (the fused
    kernel itself cannot be compiled: it has no fake implementation). `lr`: a tensor, so that a
    schedule's rate does not recompile. The bias corrections are taken in float64 from the step
    counts, as the fused kernel takes them (float32 powers of beta2 would be off by 1e-5)."""
    for p, g, m, v, t in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        t.add_(1)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        step = t.double()
        denom = (v.sqrt() / (1 - beta2 ** step).sqrt().to(p.dtype)).add_(eps)
        p.sub_((lr / (1 - beta1 ** step)).to(p.dtype) * m / denom)
