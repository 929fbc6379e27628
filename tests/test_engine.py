from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.utils import counters
from torch.func import functional_call

from maml_cli.algorithms.inner import SGD
from maml_cli.algorithms.maml import MAML
from maml_cli.device import resolve_device
from maml_cli.engine import (
    CPU_COMPILE_AFTER_S,
    CPU_WHOLE_COMPILE_AFTER_S,
    EAGER_VMAP_MAX_FLOP_PER_THREAD,
    STRATEGIES,
    Engine,
    choose_compile,
    choose_strategy,
)
from maml_cli.episode import Episode
from maml_cli.errors import UserError
from maml_cli.models.conv4 import Conv4
from maml_cli.models.mlp import MLP
from maml_cli.optim import Adam
from tests.algorithms.test_maml import CASES, LR, assert_close, naive_meta_gradient


def test_auto_follows_the_benchmark_and_never_vmaps_torchs_batchnorm():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    mlp, conv = MLP((1,), 1), Conv4((1, 28, 28), 5)
    assert choose_strategy("auto", mlp, cpu) == choose_strategy("auto", mlp, cuda) == "vmap"
    assert choose_strategy("auto", conv, cpu) == "loop"
    assert choose_strategy("auto", conv, cuda) == "vmap"
    torch_bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    assert choose_strategy("auto", torch_bn, cuda) == "loop"
    with pytest.raises(UserError, match="engine=vmap gives wrong second-order gradients"):
        choose_strategy("vmap", torch_bn, cpu)
    assert choose_strategy("loop", mlp, cuda) == "loop"


def test_auto_runs_a_conv_net_on_the_cpu_under_vmap_only_uncompiled_on_small_tasks(threads):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    mlp, conv = MLP((1,), 1), Conv4((1, 28, 28), 5)
    limit = EAGER_VMAP_MAX_FLOP_PER_THREAD
    small, large = (lambda: limit), (lambda: limit + 1)
    threads(1)
    assert choose_strategy("auto", conv, cpu, small) == "vmap"
    assert choose_strategy("auto", conv, cpu, large) == "loop"
    assert choose_strategy("auto", conv, cuda, large) == "vmap"
    assert choose_strategy("auto", mlp, cpu, large) == "vmap"
    assert choose_strategy("loop", conv, cpu, small) == "loop"
    threads(2)  # the limit is per thread
    assert choose_strategy("auto", conv, cpu, large) == "vmap"
    assert choose_strategy("auto", conv, cpu, lambda: 2 * limit + 1) == "loop"


@pytest.mark.parametrize("queries, chosen", [(1, "vmap"), (15, "loop")])
def test_autos_strategy_comes_from_a_tasks_flops_and_computes_what_the_loop_does(queries, chosen,
                                                                                  threads):
    """Omniglot 5-way 1-shot on the paper's conv4, one thread: 5 support and 5 query images per
    task (the presets') are under the limit, 5 and 75 (15 per class) over it; compiled, the loop
    either way. The curves and the meta-gradient are the loop's."""
    threads(1)
    torch.manual_seed(0)
    model = Conv4((1, 28, 28), 5)
    labels = torch.arange(5)
    episode = Episode(torch.rand(3, 5, 1, 28, 28), labels.expand(3, 5),
                      torch.rand(3, 5 * queries, 1, 28, 28),
                      labels.repeat_interleave(queries).expand(3, 5 * queries))
    algorithm = MAML(model, F.cross_entropy, F.cross_entropy, SGD(0.4, eval_steps=2))
    params = dict(model.named_parameters())
    auto, loop = Engine(algorithm, "auto"), Engine(algorithm, "loop")
    assert auto.strategy_for(params, {}, episode) == chosen
    assert auto.strategy_for(params, {}, episode, compiled=True) == "loop"
    assert loop.strategy_for(params, {}, episode) == "loop"
    with torch.no_grad():
        torch.testing.assert_close(auto.curves(params, {}, episode),
                                   loop.curves(params, {}, episode), rtol=1e-4, atol=1e-5)
    grads = []
    for engine in (auto, loop):
        model.zero_grad()
        engine.meta_backward(params, {}, episode)
        grads.append([p.grad.clone() for p in params.values()])
    assert_close(*grads, rtol=1e-4)


def test_torchs_batchnorm_without_running_stats_gets_the_exact_meta_gradient_in_the_loop():
    """A model with torch's own nn.BatchNorm, as build() prepares it (no running statistics,
    which torch.func.grad cannot update in place), against the naive reference in float64."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 3)).double()
    torch.func.replace_all_batch_norm_modules_(model)
    episode = Episode(torch.randn(3, 6, 1, 8, 8, dtype=torch.float64), torch.randint(0, 3, (3, 6)),
                      torch.randn(3, 9, 1, 8, 8, dtype=torch.float64), torch.randint(0, 3, (3, 9)))
    names = [n for n, _ in model.named_parameters()]

    def forward(weights, x):
        return functional_call(model, dict(zip(names, weights)), (x,))

    def accuracy(logits, y):
        return (logits.argmax(-1) == y).double().mean()

    case = (model, F.cross_entropy, accuracy, episode, forward)
    want = naive_meta_gradient(list(model.parameters()), case, steps=2, first_order=False)
    algorithm = MAML(model, F.cross_entropy, accuracy, SGD(LR, steps=2))
    Engine(algorithm, "loop").meta_backward(dict(model.named_parameters()), {}, episode)
    assert_close([p.grad for p in model.parameters()], want)


def test_compile_auto_compiles_on_cuda_and_on_the_cpu_for_long_runs_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_compile("auto", cuda) is True
    assert choose_compile("auto", cpu) is None  # the trainer times its first iterations
    assert choose_compile("auto", cpu, eager_s_left=CPU_COMPILE_AFTER_S / 2) is False
    assert choose_compile("auto", cpu, eager_s_left=CPU_COMPILE_AFTER_S * 2) is True
    # where the whole meta-iteration compiles as one graph, a shorter run repays it
    assert CPU_WHOLE_COMPILE_AFTER_S < CPU_COMPILE_AFTER_S
    assert choose_compile("auto", cpu, eager_s_left=CPU_WHOLE_COMPILE_AFTER_S * 2,
                          whole=True) is True
    assert choose_compile("auto", cpu, eager_s_left=CPU_WHOLE_COMPILE_AFTER_S * 2) is False
    assert choose_compile("auto", cpu, policy=True) is False
    assert choose_compile(True, cpu) is True
    assert choose_compile(False, cuda) is False


def test_device_threads_sets_torchs_cpu_threads():
    before = torch.get_num_threads()
    asked = 3 if before != 3 else 2  # not what it is already
    try:
        assert resolve_device("cpu", threads=asked) == torch.device("cpu")
        assert torch.get_num_threads() == asked
    finally:
        torch.set_num_threads(before)


def compiled_and_eager(strategy, iterations, monkeypatch=None):
    """The MLP's meta-gradients, eager and under trainer.compile, at each iteration, with the
    settings that change with the iteration (derivative order, multi-step loss weights)."""
    model, loss_fn, metric_fn, episode, _ = CASES["mlp"](0, tasks=3)
    algorithm = MAML(model, loss_fn, metric_fn, SGD(LR, steps=2), first_order_until=1,
                     multi_step_loss=True, msl_iterations=4)
    params = dict(model.named_parameters())
    eager, compiled = Engine(algorithm, strategy), Engine(algorithm, strategy, compile=True)
    torch._dynamo.reset()
    counters.clear()
    for iteration in iterations:
        algorithm.start_iteration(iteration)
        grads = []
        for engine in (eager, compiled):
            model.zero_grad()
            engine.meta_backward(params, {}, episode)
            grads.append([p.grad for p in params.values()])
        yield grads


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_compiled_meta_gradient_equals_eager(strategy):
    """trainer.compile: the same meta-gradient, float64, to 1e-9 (second order, multi-step
    loss; one graph each, as compiling costs CI seconds)."""
    for eager, compiled in compiled_and_eager(strategy, iterations=(2, 3)):
        assert_close(compiled, eager)
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_compiled_engine_recompiles_only_when_the_derivative_order_switches(strategy,
                                                                           monkeypatch):
    """Settings that change every iteration must not reach the compiled graph as constants,
    or it would recompile every iteration. Dynamo alone decides this, so its eager backend
    checks it without inductor's compile time."""
    monkeypatch.setattr(torch, "compile", partial(torch.compile, backend="eager"))
    for eager, compiled in compiled_and_eager(strategy, iterations=range(1, 5)):
        assert_close(compiled, eager)
    assert counters["stats"]["unique_graphs"] == 2


@pytest.mark.parametrize("options", [{"multi_step_loss": True, "msl_iterations": 4},
                                     {"lr_mode": "per_parameter"}])
def test_the_whole_meta_iteration_compiled_is_the_eager_meta_gradient_and_adam_step(options):
    """Engine.meta_step, where the whole meta-iteration compiles as one graph: after three
    iterations of second-order MAML (with a multi-step loss; with Meta-SGD's learned rates,
    which the algorithm's own parameters carry), at a rate that changes every iteration, the
    parameters, the Adam state, the loss and the NaN check's norms of the eager meta-gradient
    and torch's fused Adam step, float64, to 1e-9; one graph, since nothing that changes every
    iteration reaches it as a constant."""
    runs = []
    for whole in (False, True):
        model, loss_fn, metric_fn, episode, _ = CASES["mlp"](0, tasks=3)
        algorithm = MAML(model, loss_fn, metric_fn, SGD(LR, steps=2), **options)
        engine = Engine(algorithm, "vmap", compile=whole)
        optimizer = Adam([*model.parameters(), *algorithm.learned.parameters()], lr=1e-2,
                         fused=True)
        outer, params = optimizer.functional(), dict(model.named_parameters())
        torch._dynamo.reset()
        counters.clear()
        for iteration in range(1, 4):
            algorithm.start_iteration(iteration)
            rate = 1e-2 / iteration
            if whole:
                assert engine.can_meta_step(params, {}, episode)
                loss, _, norms = engine.meta_step(params, {}, episode, outer, rate)
            else:
                optimizer.param_groups[0]["lr"] = rate
                optimizer.zero_grad(set_to_none=True)
                loss, _ = engine.meta_backward(params, {}, episode)
                trained = optimizer.param_groups[0]["params"]
                norms = torch.stack(torch._foreach_norm([loss, *(p.grad for p in trained)]))
                optimizer.step()
        state = optimizer.state_dict()["state"]
        trained = optimizer.param_groups[0]["params"]
        runs.append([*trained, *(s[k] for s in state.values() for k in sorted(s)),
                     loss.reshape(1), norms])
    assert counters["stats"]["unique_graphs"] == 1
    assert_close(runs[1], runs[0])
    assert len(trained) > len(params) or not options.get("lr_mode")
    assert all(p.grad is None for p in trained)  # the step never leaves .grad behind


def test_bf16_autocast_meta_loss_is_close_to_float32s():
    """trainer.amp=bf16 on the conv net: the meta-loss and the loss before adaptation within 2%
    of float32's, and the meta-gradient pointing the same way (second order through bf16 is far
    from exact: docs/performance.md)."""
    model, loss_fn, metric_fn, episode, _ = CASES["conv4"](0, tasks=2)
    model.float()
    episode = Episode(*(t.float() if t.is_floating_point() else t for t in episode.tensors()))
    algorithm = MAML(model, loss_fn, metric_fn, SGD(LR))
    params = dict(model.named_parameters())
    results = []
    for engine in (Engine(algorithm, "loop"), Engine(algorithm, "loop", amp="bf16")):
        model.zero_grad()
        loss, metrics = engine.meta_backward(params, {}, episode)
        before = engine.before(params, {}, episode)["loss_pre"]
        assert loss.dtype == metrics["loss_post"].dtype == before.dtype == torch.float32
        results.append((loss, torch.cat([p.grad.flatten() for p in params.values()]), before))
    (loss, grad, before), (amp_loss, amp_grad, amp_before) = results
    assert abs(amp_loss - loss) <= 0.02 * loss
    assert abs(amp_before - before) <= 0.02 * before
    assert torch.nn.functional.cosine_similarity(amp_grad, grad, dim=0) > 0.5
