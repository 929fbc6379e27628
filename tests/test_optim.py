"""outer=trpo: the conjugate-gradient solve, the step scaled to the KL bound, the line search,
and, on a tiny navigation policy, that its closure is the meta-objective the engine
differentiates."""

import math

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from maml_cli.algorithms.inner import SGD
from maml_cli.algorithms.maml import MAML
from maml_cli.engine import Engine
from maml_cli.optim import TRPO, Adam, adam_update, conjugate_gradient
from tests.tasks.test_navigation import tiny_case

A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
C = torch.tensor([1.0, -2.0], dtype=torch.float64)


def test_conjugate_gradient_solves_a_symmetric_positive_definite_system():
    x = conjugate_gradient(lambda v: A @ v, C, iterations=10)
    torch.testing.assert_close(A @ x, C)


def trpo_step(quartic: float, max_kl=0.01):
    """One TRPO step on loss -c.w with KL 0.5 d'Ad + quartic (d'Ad)^2, d = w - w0."""
    w0 = torch.tensor([0.5, -0.5], dtype=torch.float64)
    w = torch.nn.Parameter(w0.clone())
    optimizer = TRPO([w], max_kl=max_kl, damping=0.0)

    def closure():
        d = w - w0
        quadratic = d @ A @ d
        return -(C @ w), 0.5 * quadratic + quartic * quadratic ** 2

    closure()[0].backward()
    optimizer.step(closure)
    return w.detach() - w0, closure, optimizer


def test_the_full_step_is_the_natural_gradient_scaled_to_the_kl_bound():
    step, closure, optimizer = trpo_step(quartic=0.0)
    natural = torch.linalg.solve(A, C)
    want = natural * math.sqrt(2 * 0.01 / (C @ natural))
    torch.testing.assert_close(step, want)
    assert optimizer.stats["trpo_line_search_steps"] == 1
    assert abs(closure()[1].item() - 0.01) < 1e-9


def test_the_line_search_backtracks_until_the_kl_is_within_its_bound():
    step, closure, optimizer = trpo_step(quartic=50.0)
    tried = int(optimizer.stats["trpo_line_search_steps"])
    assert tried > 1 and closure()[1].item() <= 0.01
    natural = torch.linalg.solve(A, C)
    full = natural * math.sqrt(2 * 0.01 / (C @ natural))
    torch.testing.assert_close(step, full * 0.8 ** (tried - 1))  # the first fraction that fits


def test_trpo_closure_on_a_policy_is_the_meta_objective_at_zero_kl():
    task, model, episode = tiny_case()
    algorithm = MAML(model, task.loss, task.metric, SGD(0.1, steps=1), data_fn=task.task_data,
                     objective_fn=task.query_loss, kl_fn=task.kl)
    engine = Engine(algorithm, "loop", task=task)
    params = dict(model.named_parameters())
    episode = engine.collect(params, {}, episode)
    loss, _ = engine.meta_backward(params, {}, episode)
    grads = [p.grad.clone() for p in params.values()]
    surrogate, kl = engine.surrogate(params, {}, episode)  # the same samples
    torch.testing.assert_close(surrogate, loss)
    assert abs(kl.item()) < 1e-12
    again = torch.autograd.grad(surrogate, list(params.values()))
    for g, h in zip(grads, again):
        torch.testing.assert_close(g, h, rtol=1e-9, atol=1e-12)


def test_outer_adam_steps_and_state_are_torchs_fused_adam_bit_for_bit():
    torch.manual_seed(0)
    shapes = [(40, 1), (40,), (40, 40), (1, 40)]
    start = [torch.randn(s) for s in shapes]

    def run(cls, steps=6, resume_at=None):
        params = [torch.nn.Parameter(s.clone()) for s in start]
        optimizer = cls(params, lr=1e-2, fused=True)
        generator = torch.Generator().manual_seed(1)
        for i in range(steps):
            if i == resume_at:  # a resumed run: a fresh optimizer loads the state
                state = optimizer.state_dict()
                optimizer = cls(params, lr=1e-2, fused=True)
                optimizer.load_state_dict(state)
            optimizer.param_groups[0]["lr"] = 1e-2 / (1 + i)  # as the outer schedule sets it
            for p in params:
                p.grad = torch.randn(p.shape, generator=generator)
            if i == 3:  # a parameter without a gradient is left alone, as torch does
                params[1].grad = None
            optimizer.step()
        return params, optimizer.state_dict(), optimizer

    theirs, their_state, _ = run(torch.optim.Adam)
    for resume_at in (None, 4):
        ours, our_state, optimizer = run(Adam, resume_at=resume_at)
        assert optimizer._fast  # the last steps went to the kernel directly
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
        for k, state in their_state["state"].items():
            assert all(torch.equal(state[key], our_state["state"][k][key]) for key in state)
    assert all(not torch.equal(p, s) for p, s in zip(theirs, start))


def test_outer_adam_takes_torchs_step_for_what_its_kernel_call_does_not_cover():
    w = torch.nn.Parameter(torch.ones(3))
    for kwargs in ({"fused": False}, {"fused": True, "weight_decay": 0.1},
                   {"fused": True, "amsgrad": True}):
        ours = Adam([w], lr=0.1, **kwargs)
        theirs = torch.optim.Adam([torch.nn.Parameter(torch.ones(3))], lr=0.1, **kwargs)
        for _ in range(3):
            for optimizer in (ours, theirs):
                optimizer.param_groups[0]["params"][0].grad = torch.full((3,), 0.5)
                optimizer.step()
        assert ours._fast is False
        assert torch.equal(w, theirs.param_groups[0]["params"][0])
        w.data.fill_(1.0)


def test_outer_adam_keeps_step_hooks_and_the_profilers_record():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    optimizer = Adam(params, lr=1e-2, fused=True)
    calls = []

    def step(times=1):
        for _ in range(times):
            for p in params:
                p.grad = torch.randn_like(p)
            optimizer.step()

    step(2)  # the state exists: unobserved steps go to the kernel directly
    assert optimizer._fast
    pre = optimizer.register_step_pre_hook(lambda *a: calls.append("pre"))
    post = register_optimizer_step_post_hook(
        lambda *a: calls.append("global post"))
    step()
    assert calls == ["pre", "global post"]
    pre.remove()
    post.remove()
    step()
    assert calls == ["pre", "global post"]  # removed hooks are no longer called
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step(2)
    assert sum(e.name == "Optimizer.step#Adam.step" for e in prof.events()) == 2


def test_the_functional_update_is_torchs_fused_adam_in_float64_from_the_state_torch_makes():
    """adam_update, the outer step inside the compiled meta-iteration: from the state that
    functional() creates before any step, the parameters and state of torch's fused Adam after
    steps at a changing rate, to rounding in float64; and a state torch's Adam loads."""
    torch.manual_seed(0)
    start = [torch.randn(s, dtype=torch.float64) for s in [(40, 1), (40,), (40, 40)]]
    grads = [[torch.randn_like(s) for s in start] for _ in range(5)]
    theirs = [torch.nn.Parameter(s.clone()) for s in start]
    reference = torch.optim.Adam(theirs, lr=1e-2, fused=True)
    ours = [torch.nn.Parameter(s.clone()) for s in start]
    optimizer = Adam(ours, lr=1e-2, fused=True)
    params, exp_avgs, exp_avg_sqs, steps, hyper = optimizer.functional()
    assert params == ours
    for i, step_grads in enumerate(grads):
        reference.param_groups[0]["lr"] = 1e-2 / (1 + i)
        for p, g in zip(theirs, step_grads):
            p.grad = g
        reference.step()
        with torch.no_grad():
            adam_update([p.detach() for p in ours], step_grads, exp_avgs, exp_avg_sqs, steps,
                        torch.tensor(1e-2 / (1 + i), dtype=torch.float64), *hyper)
    their_state, our_state = reference.state_dict()["state"], optimizer.state_dict()["state"]
    for k, state in their_state.items():
        for key, value in state.items():
            assert our_state[k][key].dtype == value.dtype
            torch.testing.assert_close(our_state[k][key], value, rtol=1e-13, atol=0)
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=1e-13, atol=0)
    assert all(not torch.equal(p, s) for p, s in zip(theirs, start))
    loaded = torch.optim.Adam([torch.nn.Parameter(s.clone()) for s in start], lr=1e-2)
    loaded.load_state_dict(optimizer.state_dict())


def test_the_functional_update_is_only_for_the_plain_fused_step():
    param = torch.nn.Parameter(torch.zeros(3))
    assert Adam([param], lr=1e-2, fused=True, weight_decay=0.1).functional() is None
    assert Adam([param], lr=1e-2, fused=False).functional() is None
