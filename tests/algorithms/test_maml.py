"""MAML's and FOMAML's meta-gradients against a deliberately naive reference, in float64."""

import pytest
import torch
import torch.nn.functional as F

from maml_cli.algorithms.inner import SGD
from maml_cli.algorithms.maml import MAML
from maml_cli.engine import STRATEGIES, Engine
from maml_cli.episode import Episode
from maml_cli.models.conv4 import Conv4
from maml_cli.models.embedding_mlp import EmbeddingMLP
from maml_cli.models.mlp import MLP
from maml_cli.models.resnet12 import ResNet12
from maml_cli.tasks.images import ImageTasks
from maml_cli.tasks.sinusoid import Sinusoid

LR = 0.05


def naive_mlp(weights, x):
    """The MLP written out by hand, so the reference shares no code with the engine."""
    *hidden, (w, b) = list(zip(weights[::2], weights[1::2]))
    for wh, bh in hidden:
        x = torch.relu(x @ wh.T + bh)
    return x @ w.T + b


def naive_conv4(weights, x):
    """conv4 (stride 2, batch-statistics norm, spatial mean) written out by hand."""
    for i in range(4):
        conv_w, conv_b, gamma, beta = weights[4 * i: 4 * i + 4]
        x = F.conv2d(x, conv_w, conv_b, stride=2, padding=1)
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
        x = torch.relu((x - mean) / torch.sqrt(var + 1e-5) * gamma[:, None, None]
                       + beta[:, None, None])
    return x.mean(dim=(2, 3)) @ weights[-2].T + weights[-1]


def naive_resnet12(weights, x):
    """ResNet-12 (three conv-norm layers and a 1x1 shortcut per block, LeakyReLU 0.1, 2x2
    max-pooling, batch-statistics norm, spatial mean) written out by hand."""
    def norm(x, gamma, beta):
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-5) * gamma[:, None, None] + beta[:, None, None]

    for i in range(4):
        w = weights[12 * i: 12 * i + 12]
        out = F.leaky_relu(norm(F.conv2d(x, w[0], padding=1), w[1], w[2]), 0.1)
        out = F.leaky_relu(norm(F.conv2d(out, w[3], padding=1), w[4], w[5]), 0.1)
        out = norm(F.conv2d(out, w[6], padding=1), w[7], w[8])
        x = F.max_pool2d(F.leaky_relu(out + norm(F.conv2d(x, w[9]), w[10], w[11]), 0.1), 2)
    return x.mean(dim=(2, 3)) @ weights[-2].T + weights[-1]


def naive_embedding_mlp(weights, x):
    """Two numeric inputs, then two categorical codes looked up by hand in their tables."""
    first, second, *mlp = weights
    codes = x[:, 2:].long()
    return naive_mlp(mlp, torch.cat([x[:, :2], first[codes[:, 0]], second[codes[:, 1]]], -1))


def embedding_case(seed, tasks):
    """A table's rows: two numeric inputs and two categorical ones (5 and 3 codes)."""
    torch.manual_seed(seed)
    model = EmbeddingMLP((4,), 1, categories=[5, 3], hidden=(6,), embedding_dim=2).double()
    x = torch.cat([torch.randn(tasks, 12, 2, dtype=torch.float64),
                   torch.randint(5, (tasks, 12, 1)).double(),
                   torch.randint(3, (tasks, 12, 1)).double()], -1)
    y = torch.randn(tasks, 12, 1, dtype=torch.float64)
    episode = Episode(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:])
    return model, F.mse_loss, F.mse_loss, episode, naive_embedding_mlp


def sinusoid_case(seed, tasks):
    torch.manual_seed(seed)
    model = MLP((1,), 1, hidden=(16, 16)).double()
    task = Sinusoid(shots=5, queries=7)
    episode = task.sample("train", tasks, torch.Generator().manual_seed(seed))
    episode = type(episode)(*(t.double() for t in episode.tensors()))
    return model, task.loss, task.metric, episode, naive_mlp


def image_case(seed, tasks, model_fn, size, naive, ways=3, shots=2, queries=2):
    torch.manual_seed(seed)
    model = model_fn(ways).double()
    x = torch.rand(tasks, ways * (shots + queries), 1, size, size, dtype=torch.float64)
    y = torch.arange(ways).repeat(tasks, shots + queries)
    split = ways * shots
    episode = Episode(x[:, :split], y[:, :split], x[:, split:], y[:, split:])
    metric = ImageTasks.metric
    return model, F.cross_entropy, lambda p, t: metric(None, p, t), episode, naive


def conv4_case(seed, tasks):
    return image_case(seed, tasks, lambda ways: Conv4((1, 12, 12), ways, filters=4), 12,
                      naive_conv4)


def resnet12_case(seed, tasks):
    return image_case(seed, tasks, lambda ways: ResNet12((1, 16, 16), ways,
                                                         channels=(3, 4, 4, 5)), 16,
                      naive_resnet12)


CASES = {"mlp": sinusoid_case, "conv4": conv4_case}


def naive_meta_gradient(weights, case, steps, first_order):
    """Per task: unrolled SGD with torch.autograd.grad(create_graph=True), then the query loss;
    the meta-gradient of the mean over tasks."""
    _, loss_fn, _, episode, forward = case
    total = 0
    for t in range(episode.num_tasks):
        fast = list(weights)
        for _ in range(steps):
            loss = loss_fn(forward(fast, episode.support_x[t]), episode.support_y[t])
            grads = torch.autograd.grad(loss, fast, create_graph=True)
            if first_order:  # the documented approximation: inner gradients are constants
                grads = [g.detach() for g in grads]
            fast = [p - LR * g for p, g in zip(fast, grads)]
        total = total + loss_fn(forward(fast, episode.query_x[t]), episode.query_y[t])
    return torch.autograd.grad(total / episode.num_tasks, weights)


def first_order_formula(weights, case, steps):
    """FOMAML: the mean over tasks of the query gradient at the adapted weights."""
    _, loss_fn, _, episode, forward = case
    result = [torch.zeros_like(w) for w in weights]
    for t in range(episode.num_tasks):
        fast = [w.detach().clone().requires_grad_() for w in weights]
        for _ in range(steps):
            loss = loss_fn(forward(fast, episode.support_x[t]), episode.support_y[t])
            grads = torch.autograd.grad(loss, fast)
            fast = [(p - LR * g).detach().requires_grad_() for p, g in zip(fast, grads)]
        query = loss_fn(forward(fast, episode.query_x[t]), episode.query_y[t])
        for acc, g in zip(result, torch.autograd.grad(query, fast)):
            acc += g / episode.num_tasks
    return result


def engine_meta_gradient(model_name, strategy, first_order, steps, seed=0, tasks=4):
    more = {"resnet12": resnet12_case, "embedding_mlp": embedding_case}
    case = (CASES | more)[model_name](seed, tasks=tasks)
    model, loss_fn, metric_fn, episode, _ = case
    algorithm = MAML(model, loss_fn, metric_fn, SGD(LR, steps=steps), first_order=first_order)
    params = dict(model.named_parameters())
    Engine(algorithm, strategy).meta_backward(params, {}, episode)
    return [p.grad for p in params.values()], list(params.values()), case


def assert_close(got, want, rtol=1e-9):
    """Relative to the whole meta-gradient: a tensor whose true gradient is zero (a conv bias
    before batch norm) holds only rounding noise, which no per-tensor ratio can bound."""
    flat_got = torch.cat([g.flatten() for g in got])
    flat_want = torch.cat([w.flatten() for w in want])
    scale = torch.linalg.norm(flat_want)
    assert torch.linalg.norm(flat_got - flat_want) <= rtol * scale
    for g, w in zip(got, want, strict=True):
        assert torch.linalg.norm(g - w) <= rtol * max(torch.linalg.norm(w), 1e-3 * scale), (g, w)


MODELS = pytest.mark.parametrize("model_name", list(CASES))


@MODELS
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("steps", [1, 3])
def test_second_order_meta_gradient_matches_unrolled_reference(model_name, strategy, steps):
    got, weights, case = engine_meta_gradient(model_name, strategy, False, steps)
    assert_close(got, naive_meta_gradient(weights, case, steps, first_order=False))


@MODELS
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("steps", [1, 3])
def test_first_order_meta_gradient_is_the_query_gradient_at_adapted_weights(
        model_name, strategy, steps):
    got, weights, case = engine_meta_gradient(model_name, strategy, True, steps)
    assert_close(got, first_order_formula(weights, case, steps))
    assert_close(got, naive_meta_gradient(weights, case, steps, first_order=True))


@MODELS
def test_second_and_first_order_differ(model_name):
    second, _, _ = engine_meta_gradient(model_name, "vmap", first_order=False, steps=2)
    first, _, _ = engine_meta_gradient(model_name, "vmap", first_order=True, steps=2)
    diff = sum(torch.linalg.norm(a - b) for a, b in zip(second, first))
    assert diff > 1e-6 * sum(torch.linalg.norm(a) for a in second)


def test_zero_inner_steps_is_plain_multitask_loss():
    got, weights, case = engine_meta_gradient("mlp", "loop", first_order=False, steps=0)
    assert_close(got, naive_meta_gradient(weights, case, 0, first_order=False))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_adaptation_curve_tracks_metric_after_each_step(strategy):
    model, loss_fn, metric_fn, episode, naive_forward = sinusoid_case(0, tasks=3)
    algorithm = MAML(model, loss_fn, metric_fn, SGD(LR))
    params = {k: p.detach() for k, p in model.named_parameters()}
    with torch.no_grad():
        curves = Engine(algorithm, strategy).curves(params, {}, episode, steps=3)
    assert curves.shape == (3, 4, 1)
    weights = list(params.values())
    for t in range(3):
        fast = [w.clone().requires_grad_() for w in weights]
        for step in range(4):
            with torch.no_grad():
                want = F.mse_loss(naive_forward(fast, episode.query_x[t]), episode.query_y[t])
            torch.testing.assert_close(curves[t, step, 0], want, rtol=1e-9, atol=0)
            loss = F.mse_loss(naive_forward(fast, episode.support_x[t]), episode.support_y[t])
            grads = torch.autograd.grad(loss, fast)
            fast = [(p - LR * g).detach().requires_grad_() for p, g in zip(fast, grads)]


def test_metrics_before_adaptation_are_the_unadapted_network_s_and_only_asked_for():
    model, loss_fn, metric_fn, episode, naive_forward = sinusoid_case(0, tasks=2)
    algorithm = MAML(model, loss_fn, metric_fn, SGD(LR))
    params = dict(model.named_parameters())
    engine = Engine(algorithm, "loop")
    _, metrics = engine.meta_backward(params, {}, episode)
    assert set(metrics) == {"loss_post", "metric_post"}  # the meta-iteration skips that forward
    weights = [p.detach() for p in params.values()]
    want = sum(F.mse_loss(naive_forward(weights, episode.query_x[t]), episode.query_y[t])
               for t in range(2)) / 2
    before = engine.before(params, {}, episode)
    assert set(before) == {"loss_pre", "metric_pre"}
    torch.testing.assert_close(before["loss_pre"], want)
    assert before["loss_pre"] > metrics["loss_post"]  # one step of 0.01 lowered the mean query loss


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_resnet12_second_order_meta_gradient_matches_unrolled_reference(strategy):
    """One step on two tasks: float64 convolutions' double backward is slow on the CPU."""
    got, weights, case = engine_meta_gradient("resnet12", strategy, False, steps=1, tasks=2)
    assert_close(got, naive_meta_gradient(weights, case, 1, first_order=False))


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("first_order", [False, True])
def test_embedding_mlp_meta_gradient_matches_unrolled_reference(strategy, first_order):
    """The embedding tables adapt with the rest; a code's row gets gradient only where used."""
    got, weights, case = engine_meta_gradient("embedding_mlp", strategy, first_order, steps=2)
    assert_close(got, naive_meta_gradient(weights, case, 2, first_order=first_order))


@pytest.mark.parametrize("adapt", ["all", "head"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_non_transductive_evaluation_predicts_each_query_image_beside_the_support(strategy,
                                                                                   adapt):
    """eval.transductive=false: after the inner steps, each query image goes through the
    model in one batch with the support images (conv4's batch statistics over those), as
    openai/supervised-reptile's non-transductive evaluation does; ANIL's body too."""
    model, loss_fn, metric_fn, episode, naive = conv4_case(3, tasks=2)
    algorithm = MAML(model, loss_fn, metric_fn, SGD(LR, steps=2), adapt=adapt)
    weights = [p.detach() for p in model.parameters()]
    adapted = range(len(weights)) if adapt == "all" else range(len(weights) - 2, len(weights))
    want = []
    for t in range(episode.num_tasks):
        sx, sy, qx, _ = episode[t].tensors()
        fast = [w.clone().requires_grad_() for w in weights]
        for _ in range(2):
            grads = torch.autograd.grad(F.cross_entropy(naive(fast, sx), sy),
                                        [fast[i] for i in adapted])
            for i, g in zip(adapted, grads):
                fast[i] = fast[i] - LR * g
        want.append(torch.stack([naive(fast, torch.cat([sx, x[None]]))[-1] for x in qx]))

    def logits(*task, transductive):
        return list(algorithm.outcomes(*task, steps=2, transductive=transductive))[-1][0]

    params = dict(zip(dict(model.named_parameters()), weights))
    engine = Engine(algorithm, strategy)
    got = engine.map_tasks(logits, params, {}, episode, transductive=False)
    torch.testing.assert_close(got, torch.stack(want).detach(), rtol=1e-9, atol=1e-12)
    together = engine.map_tasks(logits, params, {}, episode, transductive=True)
    assert not torch.allclose(together, got)  # the queries' own statistics differ
