"""The MAML family's update rules against naive references on tiny inputs, in float64: Meta-SGD,
LSLR, ANIL, the multi-step loss, per-step norms, derivative-order annealing, Reptile, the
pretrained baseline, Prototypical and Relation Networks, under every engine strategy."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from maml_cli.algorithms.base import CARRY
from maml_cli.algorithms.inner import SGD, Adam
from maml_cli.algorithms.maml import MAML
from maml_cli.algorithms.pretrain import Pretrain
from maml_cli.algorithms.protonet import ProtoNet
from maml_cli.algorithms.relationnet import RelationNet
from maml_cli.algorithms.reptile import Reptile
from maml_cli.engine import STRATEGIES, Engine
from maml_cli.errors import UserError
from maml_cli.models.conv4 import Conv4
from tests.algorithms.test_maml import CASES, LR, assert_close, image_case

STRATEGY = pytest.mark.parametrize("strategy", STRATEGIES)
MODELS = pytest.mark.parametrize("model_name", list(CASES))


def meta_gradient(algorithm, model, episode, strategy):
    """The engine's meta-gradient of the model's and the algorithm's own weights, after the
    algorithm's inner optimizer's steps."""
    params = dict(model.named_parameters())
    Engine(algorithm, strategy).meta_backward(params, {}, episode)
    return params, dict(algorithm.learned.named_parameters())


def naive_objective(weights, case, steps, lr, adapted, norm=None, step_weights=None,
                    first_order=False):
    """Mean over tasks of the query loss after `steps` unrolled SGD steps, written out with
    torch.autograd.grad on weight lists. lr(i, step): weight i's rate; `adapted`: indices that
    the inner loop updates; norm: {index: [steps, ...] table} replacing weight i at each step."""
    _, loss_fn, _, episode, forward = case

    def at(ws, step):
        ws = list(ws)
        for i, table in (norm or {}).items():
            ws[i] = table[min(step, table.shape[0] - 1)]
        return ws

    total = 0
    for t in range(episode.num_tasks):
        sx, sy, qx, qy = episode[t].tensors()
        fast, losses = list(weights), []
        for step in range(steps):
            loss = loss_fn(forward(at(fast, step), sx), sy)
            grads = torch.autograd.grad(loss, [fast[i] for i in adapted], create_graph=True)
            for i, g in zip(adapted, grads):
                fast[i] = fast[i] - lr(i, step) * (g.detach() if first_order else g)
            losses.append(loss_fn(forward(at(fast, step), qx), qy))
        weights_ = [0] * (steps - 1) + [1] if step_weights is None else step_weights
        total = total + sum(w * q for w, q in zip(weights_, losses))
    return total / episode.num_tasks


def grads_of(objective, tensors):
    return [g if g is not None else torch.zeros_like(t)
            for g, t in zip(torch.autograd.grad(objective, tensors, allow_unused=True), tensors)]


def engine_grads(tensors):
    return [t.grad if t.grad is not None else torch.zeros_like(t) for t in tensors]


@MODELS
@STRATEGY
@pytest.mark.parametrize("lr_mode", ["per_parameter", "per_layer_step"])
def test_learned_inner_rates_get_the_exact_meta_gradient(model_name, strategy, lr_mode):
    """Meta-SGD (a rate per weight) and LSLR (a rate per tensor and step): the meta-gradient
    reaches the rates and equals the unrolled reference's."""
    model, loss_fn, metric_fn, episode, _ = case = CASES[model_name](0, tasks=3)
    algorithm = MAML(model, loss_fn, metric_fn, SGD(LR, steps=2), lr_mode=lr_mode)
    with torch.no_grad():  # distinct rates, so that a mix-up of steps or tensors shows
        for r in algorithm.lrs.values():
            r.mul_(torch.rand_like(r) + 0.5)
    params, learned = meta_gradient(algorithm, model, episode, strategy)
    weights, names = list(params.values()), list(params)
    rates = [algorithm.lrs[n] for n in names]
    if lr_mode == "per_parameter":
        def lr(i, step): return rates[i]
    else:
        def lr(i, step): return rates[i][step]
    want = grads_of(naive_objective(weights, case, 2, lr, range(len(weights))), weights + rates)
    assert all(torch.linalg.norm(r.grad) > 0 for r in rates)
    assert_close(engine_grads(weights + rates), want)
    assert set(learned) == {f"lr:{n.replace('.', '/')}" for n in names}


@MODELS
@STRATEGY
def test_anil_adapts_only_the_head_and_trains_the_body_through_it(model_name, strategy):
    model, loss_fn, metric_fn, episode, _ = case = CASES[model_name](1, tasks=3)
    algorithm = MAML(model, loss_fn, metric_fn, SGD(LR, steps=3), adapt="head")
    params, _ = meta_gradient(algorithm, model, episode, strategy)
    weights = list(params.values())
    head = [len(weights) - 2, len(weights) - 1]  # the last Linear's weight and bias
    want = grads_of(naive_objective(weights, case, 3, lambda i, s: LR, head), weights)
    assert_close(engine_grads(weights), want)
    assert torch.linalg.norm(weights[0].grad) > 0  # the body is meta-learned
    path = list(algorithm.trajectory(params, {}, *episode[0].tensors(), 3, True))
    assert set(path[-1][0]) == {n for n in params if n.startswith(algorithm.head_prefix)}


@pytest.mark.parametrize("steps", [2, 5])
def test_multi_step_loss_weights_sum_to_one_and_anneal_to_the_last_step(steps):
    model, loss_fn, metric_fn, _, _ = CASES["mlp"](0, tasks=1)
    algorithm = MAML(model, loss_fn, metric_fn, SGD(LR, steps=steps), multi_step_loss=True,
                     msl_iterations=100)
    seen = []
    for iteration in (1, 30, 60, 100, 101):
        algorithm.start_iteration(iteration)
        weights = algorithm.step_weights(steps)
        seen.append(None if weights is None else weights.tolist())
    assert seen[0] == pytest.approx([1 / steps] * steps)  # uniform at first
    for weights in seen[:-1]:
        assert sum(weights) == pytest.approx(1) and min(weights) >= 0.03 / steps - 1e-7  # float32
    assert [w[-1] for w in seen[:-1]] == sorted(w[-1] for w in seen[:-1])  # last step gains
    assert seen[-1] is None  # after msl_iterations: the last step's loss alone


@MODELS
@STRATEGY
def test_mamlpp_switches_together_match_the_reference(model_name, strategy):
    """Multi-step loss, per-step rates and (conv4) per-step norm weights, all at once."""
    model, loss_fn, metric_fn, episode, _ = case = CASES[model_name](2, tasks=3)
    algorithm = MAML(model, loss_fn, metric_fn, SGD(LR, steps=3), lr_mode="per_layer_step",
                     per_step_norm=True, multi_step_loss=True, msl_iterations=10)
    algorithm.start_iteration(4)
    with torch.no_grad():
        for table in (*algorithm.lrs.values(), *algorithm.norm_params.values()):
            table.mul_(torch.rand_like(table) + 0.5)
    params, _ = meta_gradient(algorithm, model, episode, strategy)
    names, weights = list(params), list(params.values())
    norm = {i: algorithm.norm_params[n] for i, n in enumerate(names) if n in algorithm.norm_params}
    assert (model_name == "conv4") == bool(norm)
    adapted = [i for i in range(len(names)) if i not in norm]
    rates = {i: algorithm.lrs[names[i]] for i in adapted}
    objective = naive_objective(weights, case, 3, lambda i, s: rates[i][s], adapted, norm,
                                step_weights=algorithm.step_weights(3))
    tables = list(rates.values()) + list(norm.values())
    assert_close(engine_grads(weights + tables), grads_of(objective, weights + tables))
    assert all(weights[i].grad is None for i in norm)  # the model's own norm weights are unused


@STRATEGY
def test_derivative_order_annealing_switches_from_first_to_second_order(strategy):
    model, loss_fn, metric_fn, episode, _ = case = CASES["mlp"](3, tasks=2)
    algorithm = MAML(model, loss_fn, metric_fn, SGD(LR, steps=2), first_order_until=5)
    weights = list(model.parameters())
    every = range(len(weights))
    for iteration, first_order in ((5, True), (6, False)):
        model.zero_grad()
        algorithm.start_iteration(iteration)
        meta_gradient(algorithm, model, episode, strategy)
        want = grads_of(naive_objective(weights, case, 2, lambda i, s: LR, every,
                                        first_order=first_order), weights)
        assert_close(engine_grads(weights), want)


def reference_adapt(model, optimizer, sx, sy, steps, batch):
    """openai/supervised-reptile's inner loop: `optimizer`, one torch.optim.Adam, keeps its
    moments and step count from call to call; only the weights are set by the caller."""
    for step in range(steps):
        index = (torch.arange(batch) + step * batch) % len(sx)
        optimizer.zero_grad()
        F.mse_loss(model(sx[index]), sy[index]).backward()
        optimizer.step()


def naive_reptile_targets(model, episode, make_optimizer, steps, batch):
    """Each task's adapted weights, by torch.optim on a deep copy of the model."""
    adapted = []
    for t in range(episode.num_tasks):
        clone = copy.deepcopy(model)
        reference_adapt(clone, make_optimizer(clone.parameters()), episode.support_x[t],
                        episode.support_y[t], steps, batch)
        adapted.append([p.detach() for p in clone.parameters()])
    return [torch.stack(ps).mean(0) for ps in zip(*adapted)]


@STRATEGY
@pytest.mark.parametrize("inner", ["sgd", "adam"])
def test_reptile_meta_step_is_the_interpolation_towards_the_adapted_weights(strategy, inner):
    model, loss_fn, metric_fn, episode, _ = CASES["mlp"](4, tasks=3)
    if inner == "sgd":
        rule, reference = SGD(LR, steps=4), lambda ps: torch.optim.SGD(ps, lr=LR)
    else:
        rule = Adam(0.01, steps=4, betas=(0.0, 0.999))
        reference = lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.0, 0.999))  # noqa: E731
    algorithm = Reptile(model, loss_fn, metric_fn, rule, inner_batch_size=3)
    phi = naive_reptile_targets(model, episode, reference, 4, batch=3)
    theta = [p.detach().clone() for p in model.parameters()]
    epsilon = 0.3
    optimizer = torch.optim.SGD(model.parameters(), lr=epsilon)
    meta_gradient(algorithm, model, episode, strategy)
    optimizer.step()
    want = [t + epsilon * (f - t) for t, f in zip(theta, phi)]
    assert_close(list(model.parameters()), want, rtol=1e-9)


@STRATEGY
@pytest.mark.parametrize("meta_batch", [1, 3])
def test_reptile_keeps_the_inner_adam_state_as_the_reference_does(strategy, meta_batch):
    """keep_inner_state, two meta-batches: every task adapts from the kept Adam state with the
    weights reset to θ, θ ← θ + ε·mean(φ − θ), and the kept state becomes the tasks' mean final
    state; with one task per meta-batch that is the reference's serial run exactly.
    Evaluation adapts from the kept state and leaves it as it was."""
    model, loss_fn, metric_fn, episode, _ = CASES["mlp"](4, tasks=2 * meta_batch)
    reference = copy.deepcopy(model)
    adam = torch.optim.Adam(reference.parameters(), lr=0.01, betas=(0.0, 0.999))
    rule = Adam(0.01, steps=4, eval_steps=3, betas=(0.0, 0.999))
    algorithm = Reptile(model, loss_fn, metric_fn, rule, inner_batch_size=3,
                        keep_inner_state=True)
    engine, epsilon = Engine(algorithm, strategy), 0.3
    outer = torch.optim.SGD(model.parameters(), lr=epsilon)
    params = dict(model.named_parameters())
    for start in range(0, episode.num_tasks, meta_batch):
        theta = [p.detach().clone() for p in reference.parameters()]
        finals = []
        for t in range(start, start + meta_batch):
            clone, clone_adam = copy.deepcopy((reference, adam))
            reference_adapt(clone, clone_adam, episode.support_x[t], episode.support_y[t], 4, 3)
            finals.append((list(clone.parameters()), clone_adam))
        with torch.no_grad():
            for i, (p, t0) in enumerate(zip(reference.parameters(), theta)):
                phi = torch.stack([weights[i] for weights, _ in finals]).mean(0)
                p.copy_(t0 + epsilon * (phi - t0))
                for key in ("step", "exp_avg", "exp_avg_sq"):
                    adam.state[p][key] = torch.stack(
                        [o.state[w[i]][key] for w, o in finals]).mean(0)
        outer.zero_grad()
        _, metrics = engine.meta_backward(params, {}, episode[start:start + meta_batch])
        outer.step()
        algorithm.carry_over(metrics.pop(CARRY))
        assert_close(list(model.parameters()), list(reference.parameters()), rtol=1e-9)
        kept = [b.clone() for b in algorithm.learned.buffers()]
        # [step, first moments in parameter order, second moments]
        want = [adam.state[p]["step"].double() for p in reference.parameters()][:1] + [
            adam.state[p][key] for key in ("exp_avg", "exp_avg_sq")
            for p in reference.parameters()]
        assert_close(kept, want, rtol=1e-9)

    with torch.no_grad():
        curves = engine.curves({k: p.detach() for k, p in params.items()}, {}, episode[:1])
    clone, clone_adam = copy.deepcopy((reference, adam))
    reference_adapt(clone, clone_adam, episode.support_x[0], episode.support_y[0], 3, 3)
    with torch.no_grad():
        want = metric_fn(clone(episode.query_x[0]), episode.query_y[0])
    torch.testing.assert_close(curves[0, -1, 0], want, rtol=1e-9, atol=0)
    assert all(torch.equal(a, b) for a, b in zip(kept, algorithm.learned.buffers()))


def test_keep_inner_state_without_inner_state_is_one_line():
    model, loss_fn, metric_fn, _, _ = CASES["mlp"](0, tasks=1)
    with pytest.raises(UserError, match="keep_inner_state .* use inner=adam"):
        Reptile(model, loss_fn, metric_fn, SGD(LR), keep_inner_state=True)


@STRATEGY
def test_pretrain_is_plain_joint_training_on_every_tasks_data(strategy):
    model, loss_fn, metric_fn, episode, forward = CASES["mlp"](5, tasks=3)
    algorithm = Pretrain(model, loss_fn, metric_fn, SGD(LR))
    params, _ = meta_gradient(algorithm, model, episode, strategy)
    weights = list(params.values())
    objective = sum(F.mse_loss(forward(weights, torch.cat([sx, qx])), torch.cat([sy, qy]))
                    for sx, sy, qx, qy in (episode[t].tensors() for t in range(3))) / 3
    assert_close(engine_grads(weights), grads_of(objective, weights))


@STRATEGY
def test_protonet_logits_are_negative_squared_distances_to_class_means(strategy):
    model, loss_fn, metric_fn, episode, forward = CASES["conv4"](6, tasks=2)
    algorithm = ProtoNet(model, loss_fn, metric_fn, SGD(LR), num_classes=3)
    params, _ = meta_gradient(algorithm, model, episode, strategy)
    weights = list(params.values())

    def embed(x):  # conv4 without its head, from the hand-written reference
        captured = {}
        forward(weights[:-2] + [_Capture(captured), torch.zeros(3, dtype=x.dtype)], x)
        return captured["features"]

    objective = 0
    for t in range(2):
        sx, sy, qx, qy = episode[t].tensors()
        support, query = embed(sx), embed(qx)
        prototypes = torch.stack([support[sy == c].mean(0) for c in range(3)])
        logits = torch.stack([torch.stack([-((q - p) ** 2).sum() for p in prototypes])
                              for q in query])
        objective = objective + F.cross_entropy(logits, qy) / 2
    assert_close(engine_grads(weights), grads_of(objective, weights))
    assert weights[-1].grad is None and weights[-2].grad is None  # the head is never used
    curve = Engine(algorithm, strategy).curves(params, {}, episode, steps=2)
    assert (curve == curve[:, :1]).all()  # no inner loop: every step count reports the same


class _Capture:
    """Stands in for the head's weight matrix: records the features it is multiplied with."""

    def __init__(self, captured):
        self.captured = captured

    @property
    def T(self):  # noqa: N802
        return self

    def __rmatmul__(self, features):
        self.captured["features"] = features
        return torch.zeros(features.shape[0], 3, dtype=features.dtype)


def naive_norm(x, gamma, beta):
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * gamma[:, None, None] + beta[:, None, None]


def naive_relation_scores(embedding, relation, sx, sy, qx, ways):
    """Relation Networks written out by hand: conv4 with 2x2 max-pooling after its first two
    blocks; a class's map the sum of its support maps; every (class, query) pair stacked along
    the channels and passed whole through the relation module."""
    def embed(x):
        for i in range(4):
            w, b, gamma, beta = embedding[4 * i: 4 * i + 4]
            x = torch.relu(naive_norm(F.conv2d(x, w, b, padding=1), gamma, beta))
            x = F.max_pool2d(x, 2) if i < 2 else x
        return x

    support, query = embed(sx), embed(qx)
    classes = [sum(support[i] for i in range(len(sy)) if sy[i] == c) for c in range(ways)]
    pairs = torch.stack([torch.cat([classes[c], q]) for q in query for c in range(ways)])
    x = pairs
    for i in range(2):
        w, b, gamma, beta = relation[4 * i: 4 * i + 4]
        x = F.max_pool2d(torch.relu(naive_norm(F.conv2d(x, w, b, padding=1), gamma, beta)), 2)
    w1, b1, w2, b2 = relation[8:]
    hidden = torch.relu(x.flatten(1) @ w1.T + b1)
    return torch.sigmoid(hidden @ w2.T + b2).view(len(query), ways)


@STRATEGY
@pytest.mark.parametrize("shots", [1, 2])
def test_relation_network_gradient_matches_a_naive_reference(strategy, shots):
    ways = 3
    model, _, metric_fn, episode, _ = image_case(
        4, 2, lambda w: Conv4((1, 16, 16), w, filters=4, downsample="maxpool",
                              downsample_blocks=2), 16, None, ways=ways, shots=shots)
    algorithm = RelationNet(model, F.cross_entropy, metric_fn, SGD(LR), num_classes=ways,
                            filters=3, hidden=5)
    algorithm.learned.double()
    params, learned = meta_gradient(algorithm, model, episode, strategy)
    weights, relation = list(params.values()), list(learned.values())
    objective = 0
    for t in range(2):
        sx, sy, qx, qy = episode[t].tensors()
        scores = naive_relation_scores(weights[:-2], relation, sx, sy, qx, ways)
        objective = objective + ((scores - F.one_hot(qy, ways)) ** 2).mean() / 2
    assert_close(engine_grads(weights + relation), grads_of(objective, weights + relation))
    assert weights[-1].grad is None and weights[-2].grad is None  # the head is never used
    curve = Engine(algorithm, strategy).curves(params, {}, episode, steps=2)
    assert (curve == curve[:, :1]).all()  # no inner loop: every step count reports the same


def test_relation_network_needs_feature_maps_of_an_image_model():
    model, loss_fn, metric_fn, _, _ = CASES["mlp"](0, tasks=1)
    with pytest.raises(UserError, match="classification"):
        RelationNet(model, loss_fn, metric_fn, SGD(LR))
    with pytest.raises(UserError, match="needs an image model"):
        RelationNet(model, loss_fn, metric_fn, SGD(LR), num_classes=3)
    pooled_away = Conv4((1, 16, 16), 3, filters=4, downsample="maxpool")  # 1x1 maps
    with pytest.raises(UserError, match="at least 4x4, and the model gives 1x1"):
        RelationNet(pooled_away, loss_fn, metric_fn, SGD(LR), num_classes=3)


def test_protonet_refuses_regression_and_anil_refuses_what_it_cannot_split():
    model, loss_fn, metric_fn, _, _ = CASES["mlp"](0, tasks=1)
    with pytest.raises(UserError, match="classification"):
        ProtoNet(model, loss_fn, metric_fn, SGD(LR))
    with pytest.raises(UserError, match="last layer"):
        MAML(nn.Linear(2, 2), loss_fn, metric_fn, SGD(LR), adapt="head")
    with pytest.raises(UserError, match="per_step_norm needs algorithm.adapt=all"):
        MAML(model, loss_fn, metric_fn, SGD(LR), adapt="head", per_step_norm=True)


@STRATEGY
@pytest.mark.parametrize("first_order", [False, True])
def test_adapt_no_norm_leaves_the_norm_weights_to_the_outer_loop(strategy, first_order):
    """The reference code's choice: its norm offsets are meta-learned, never adapted."""
    model, loss_fn, metric_fn, episode, _ = case = CASES["conv4"](3, tasks=3)
    algorithm = MAML(model, loss_fn, metric_fn, SGD(LR, steps=2), adapt="no_norm",
                     first_order=first_order)
    params, _ = meta_gradient(algorithm, model, episode, strategy)
    weights = list(params.values())
    norms = {4 * i + j for i in range(4) for j in (2, 3)}  # conv4's gamma, beta per block
    adapted = [i for i in range(len(weights)) if i not in norms]
    want = grads_of(naive_objective(weights, case, 2, lambda i, s: LR, adapted,
                                    first_order=first_order), weights)
    assert_close(engine_grads(weights), want)
    assert all(torch.linalg.norm(weights[i].grad) > 0 for i in norms)  # meta-learned


@MODELS
@STRATEGY
@pytest.mark.parametrize("first_order", [False, True])
def test_head_init_zero_starts_every_task_from_a_zero_head(model_name, strategy, first_order):
    model, loss_fn, metric_fn, episode, _ = case = CASES[model_name](4, tasks=3)
    algorithm = MAML(model, loss_fn, metric_fn, SGD(LR, steps=2), head_init="zero",
                     first_order=first_order)
    params, _ = meta_gradient(algorithm, model, episode, strategy)
    weights = list(params.values())
    body, head = weights[:-2], [torch.zeros_like(w, requires_grad=True) for w in weights[-2:]]
    want = grads_of(naive_objective(body + head, case, 2, lambda i, s: LR,
                                    range(len(weights)), first_order=first_order), body)
    assert_close(engine_grads(body), want)
    assert all(w.grad is None for w in weights[-2:])  # the head's init is no meta-parameter


@STRATEGY
def test_later_inner_steps_take_inner_later_lr(strategy):
    """inner.later_lr: the first step at inner.lr, the others at later_lr (the MAML paper's RL
    evaluation: 0.1, then 0.05), second order through all three."""
    case = CASES["mlp"](0, tasks=3)
    model, loss_fn, metric_fn, episode, _ = case
    algorithm = MAML(model, loss_fn, metric_fn, SGD(LR, steps=3, later_lr=LR / 2))
    weights = list(model.parameters())
    want = grads_of(naive_objective(weights, case, 3, lambda i, s: LR if s == 0 else LR / 2,
                                    range(len(weights))), weights)
    meta_gradient(algorithm, model, episode, strategy)
    assert_close(engine_grads(weights), want)


def test_later_lr_with_learned_rates_is_one_line():
    model, loss_fn, metric_fn, _, _ = CASES["mlp"](0, tasks=1)
    with pytest.raises(UserError, match="inner.later_lr sets the fixed rate of later inner steps"):
        MAML(model, loss_fn, metric_fn, SGD(LR, steps=2, later_lr=LR / 2), lr_mode="per_parameter")
