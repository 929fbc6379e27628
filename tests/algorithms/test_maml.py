"""MAML's and FOMAML's meta-gradients against a deliberately naive reference, in float64."""

import pytest
import torch
import torch.nn.functional as F

from maml_cli.algorithms.maml import MAML
from maml_cli.engine import STRATEGIES, Engine
from maml_cli.models.mlp import MLP
from maml_cli.tasks.sinusoid import Sinusoid

LR = 0.05


def naive_forward(weights, x):
    """The MLP written out by hand, so the reference shares no code with the engine."""
    *hidden, (w, b) = list(zip(weights[::2], weights[1::2]))
    for wh, bh in hidden:
        x = torch.relu(x @ wh.T + bh)
    return x @ w.T + b


def naive_meta_gradient(weights, episode, steps, first_order):
    """Per task: unrolled SGD with torch.autograd.grad(create_graph=True), then the query loss;
    the meta-gradient of the mean over tasks."""
    total = 0
    for t in range(episode.num_tasks):
        fast = list(weights)
        for _ in range(steps):
            loss = F.mse_loss(naive_forward(fast, episode.support_x[t]), episode.support_y[t])
            grads = torch.autograd.grad(loss, fast, create_graph=True)
            if first_order:  # the documented approximation: inner gradients are constants
                grads = [g.detach() for g in grads]
            fast = [p - LR * g for p, g in zip(fast, grads)]
        total = total + F.mse_loss(naive_forward(fast, episode.query_x[t]), episode.query_y[t])
    return torch.autograd.grad(total / episode.num_tasks, weights)


def first_order_formula(weights, episode, steps):
    """FOMAML: the mean over tasks of the query gradient at the adapted weights."""
    result = [torch.zeros_like(w) for w in weights]
    for t in range(episode.num_tasks):
        fast = [w.detach().clone().requires_grad_() for w in weights]
        for _ in range(steps):
            loss = F.mse_loss(naive_forward(fast, episode.support_x[t]), episode.support_y[t])
            grads = torch.autograd.grad(loss, fast)
            fast = [(p - LR * g).detach().requires_grad_() for p, g in zip(fast, grads)]
        query = F.mse_loss(naive_forward(fast, episode.query_x[t]), episode.query_y[t])
        for acc, g in zip(result, torch.autograd.grad(query, fast)):
            acc += g / episode.num_tasks
    return result


def setup(seed=0, tasks=4):
    torch.manual_seed(seed)
    model = MLP((1,), 1, hidden=(16, 16)).double()
    task = Sinusoid(shots=5, queries=7)
    episode = task.sample("train", tasks, torch.Generator().manual_seed(seed))
    episode = type(episode)(*(t.double() for t in episode.tensors()))
    return model, task, episode


def engine_meta_gradient(strategy, first_order, steps, seed=0):
    model, task, episode = setup(seed)
    algorithm = MAML(model, task.loss, task.metric, lr=LR, first_order=first_order)
    params = dict(model.named_parameters())
    loss, _ = Engine(strategy).meta_loss(algorithm, params, {}, episode, steps)
    return torch.autograd.grad(loss, list(params.values())), list(params.values()), episode


def assert_close(got, want, rtol=1e-9):
    for g, w in zip(got, want, strict=True):
        assert torch.linalg.norm(g - w) <= rtol * torch.linalg.norm(w), (g, w)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("steps", [1, 3])
def test_second_order_meta_gradient_matches_unrolled_reference(strategy, steps):
    got, weights, episode = engine_meta_gradient(strategy, first_order=False, steps=steps)
    assert_close(got, naive_meta_gradient(weights, episode, steps, first_order=False))


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("steps", [1, 3])
def test_first_order_meta_gradient_is_the_query_gradient_at_adapted_weights(strategy, steps):
    got, weights, episode = engine_meta_gradient(strategy, first_order=True, steps=steps)
    assert_close(got, first_order_formula(weights, episode, steps))
    assert_close(got, naive_meta_gradient(weights, episode, steps, first_order=True))


def test_second_and_first_order_differ():
    second, _, _ = engine_meta_gradient("vmap", first_order=False, steps=2)
    first, _, _ = engine_meta_gradient("vmap", first_order=True, steps=2)
    diff = sum(torch.linalg.norm(a - b) for a, b in zip(second, first))
    assert diff > 1e-6 * sum(torch.linalg.norm(a) for a in second)


def test_zero_inner_steps_is_plain_multitask_loss():
    got, weights, episode = engine_meta_gradient("loop", first_order=False, steps=0)
    assert_close(got, naive_meta_gradient(weights, episode, 0, first_order=False))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_adaptation_curve_tracks_metric_after_each_step(strategy):
    model, task, episode = setup(tasks=3)
    algorithm = MAML(model, task.loss, task.metric, lr=LR)
    params = {k: p.detach() for k, p in model.named_parameters()}
    with torch.no_grad():
        curves = Engine(strategy).map_tasks(algorithm.adaptation_curve, params, {}, episode,
                                            steps=3)
    assert curves.shape == (3, 4)
    weights = list(params.values())
    for t in range(3):
        fast = [w.clone().requires_grad_() for w in weights]
        for step in range(4):
            with torch.no_grad():
                want = F.mse_loss(naive_forward(fast, episode.query_x[t]), episode.query_y[t])
            torch.testing.assert_close(curves[t, step], want, rtol=1e-9, atol=0)
            loss = F.mse_loss(naive_forward(fast, episode.support_x[t]), episode.support_y[t])
            grads = torch.autograd.grad(loss, fast)
            fast = [(p - LR * g).detach().requires_grad_() for p, g in zip(fast, grads)]


def test_task_loss_reports_metrics_before_and_after_adaptation():
    model, task, episode = setup(tasks=2)
    algorithm = MAML(model, task.loss, task.metric, lr=LR)
    params = dict(model.named_parameters())
    _, metrics = Engine("loop").meta_loss(algorithm, params, {}, episode, 1)
    weights = [p.detach() for p in params.values()]
    want = sum(F.mse_loss(naive_forward(weights, episode.query_x[t]), episode.query_y[t])
               for t in range(2)) / 2
    torch.testing.assert_close(metrics["loss_pre"], want)
    assert set(metrics) == {"loss_pre", "loss_post", "metric_pre", "metric_post"}
