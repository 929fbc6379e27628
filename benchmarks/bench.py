"""make bench: maml-cli's meta-batch engine against what users would write instead.

Every implementation computes the meta-gradient of one meta-batch of synthetic data of the
real shapes, from the same model and data. They are timed in one process, alternating, after a
warm-up, and the median is reported. The warm-up run also gives each one's meta-gradient's
distance to a float64 reference; peak memory is CUDA's allocator peak, or on CPU (second order)
the resident set of a fresh process running one meta-iteration.

    python benchmarks/bench.py [--device cpu|cuda] [--workloads W1,W2,...,W10] [--compile W1,W2]
                               [--eval E1,E2,...] [--out results.json]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.metadata
import io
import json
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import higher
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from rich.console import Console
from rich.table import Table
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from maml_cli.algorithms.inner import SGD
from maml_cli.algorithms.maml import MAML
from maml_cli.algorithms.pretrain import Pretrain
from maml_cli.algorithms.protonet import ProtoNet
from maml_cli.algorithms.reptile import Reptile
from maml_cli.build import build
from maml_cli.config import config_dir, register_configs
from maml_cli.engine import STRATEGIES, Engine, choose_compile, choose_strategy
from maml_cli.episode import Episode
from maml_cli.models.conv4 import Conv4
from maml_cli.models.gaussian_mlp import GaussianMLP
from maml_cli.models.mlp import MLP
from maml_cli.models.resnet12 import ResNet12
from maml_cli.optim import TRPO
from maml_cli.tasks.navigation import Navigation2D
from maml_cli.trainer import Trainer

try:  # a baseline where installed (make install runs benchmarks/install_learn2learn.sh; the GPU
    # machines lent for minutes lack it); its import of gym prints gym's retirement notice
    with contextlib.redirect_stderr(io.StringIO()):
        import learn2learn
except ImportError:
    learn2learn = None


@dataclass
class Workload:
    description: str
    tasks: int
    steps: int
    lr: float
    ways: int = 0  # 0: sinusoid regression
    shots: int = 10
    queries: int = 10  # per class for classification
    repeats: int = 3
    backbone: str = "conv4"  # for classification: conv4, conv4_maxpool or resnet12
    # Iterations of the run it stands for (its preset's), from which trainer.compile=auto
    # chooses on the CPU: the default run's 15,000, or the paper presets' 40,000-60,000.
    run_iterations: int = 15000
    eval_steps: int = 10  # the E rows' inner steps (the presets' eval_steps)

    def model(self) -> torch.nn.Module:
        if not self.ways:
            return MLP((1,), 1, hidden=(40, 40))
        if self.backbone == "resnet12":
            return ResNet12((1, 28, 28), self.ways)
        if self.backbone == "conv4_maxpool":
            return Conv4((1, 28, 28), self.ways, filters=64, downsample="maxpool")
        return Conv4((1, 28, 28), self.ways, filters=64)

    def loss(self, prediction, target):
        return F.cross_entropy(prediction, target) if self.ways else F.mse_loss(prediction, target)

    def episode(self, device, generator) -> Episode:
        t = self.tasks
        if not self.ways:
            amplitude = 0.1 + 4.9 * torch.rand(t, 1, 1, generator=generator, device=device)
            phase = torch.pi * torch.rand(t, 1, 1, generator=generator, device=device)
            xs = [-5 + 10 * torch.rand(t, n, 1, generator=generator, device=device)
                  for n in (self.shots, self.queries)]
            ys = [amplitude * torch.sin(x - phase) for x in xs]
            return Episode(xs[0], ys[0], xs[1], ys[1])
        labels = torch.arange(self.ways, device=device)
        parts = []
        for per_class in (self.shots, self.queries):
            n = self.ways * per_class
            parts.append(torch.rand(t, n, 1, 28, 28, generator=generator, device=device))
            parts.append(labels.repeat_interleave(per_class).expand(t, n).contiguous())
        return Episode(*parts)


WORKLOADS = {
    "W1": Workload("sinusoid MLP 1-40-40-1, 25 tasks, 10+10 points, 1 step", 25, 1, 0.01,
                   repeats=50),
    "W2": Workload("Omniglot 5-way 1-shot conv4, 32 tasks, 15 queries/class, 1 step",
                   32, 1, 0.4, ways=5, shots=1, queries=15, run_iterations=40000),
    "W3": Workload("Omniglot 20-way 1-shot conv4, 16 tasks, 15 queries/class, 5 steps",
                   16, 5, 0.1, ways=20, shots=1, queries=15, repeats=2, run_iterations=40000),
    # Not in the default run: minutes per meta-iteration on a 2-core CPU.
    "W4": Workload("W2 with ResNet-12 (64-160-320-640) instead of conv4", 32, 1, 0.4, ways=5,
                   shots=1, queries=15, repeats=2, backbone="resnet12", run_iterations=60000),
    # What most users' own conv nets look like (the mini-ImageNet conv4's downsampling): the
    # convolutions run at 4x the stride-2 net's resolution.
    "W5": Workload("W2 with 2x2 max-pooling instead of stride-2 convolutions", 32, 1, 0.4,
                   ways=5, shots=1, queries=15, backbone="conv4_maxpool", run_iterations=60000),
    # Not in the default run: the Omniglot 5-way 1-shot preset's own meta-batch (the reference
    # code's 1 query per class), tiny tasks where eager vmap gains on the loop.
    "W6": Workload("W2 with 1 query/class (the omniglot_5w1s preset's training)", 32, 1, 0.4,
                   ways=5, shots=1, queries=1, run_iterations=40000),
    # Not in the default run: either side of EAGER_VMAP_MAX_FLOP_PER_THREAD at one thread,
    # where uncompiled training switches between vmap and the loop (a task's forward: 80 and
    # 133 MFLOP).
    "W7": Workload("W6 with 2 queries/class", 32, 1, 0.4, ways=5, shots=1, queries=2,
                   run_iterations=40000),
    "W8": Workload("W6 with 4 queries/class", 32, 1, 0.4, ways=5, shots=1, queries=4,
                   run_iterations=40000),
    # Not in the default run: between W8 and W2, where uncompiled training's crossover lies (a
    # task's forward: 240 and 346 MFLOP).
    "W9": Workload("W6 with 8 queries/class", 32, 1, 0.4, ways=5, shots=1, queries=8,
                   run_iterations=40000),
    "W10": Workload("W6 with 12 queries/class", 32, 1, 0.4, ways=5, shots=1, queries=12,
                    run_iterations=40000),
}
DEFAULT_WORKLOADS = "W1,W2,W3,W5"
# Evaluation (maml-eval's and validation's adaptation curves): the presets' test tasks, where
# `queries` is per class at test, and steps around EAGER_VMAP_MAX_FLOP_PER_THREAD. 50 tasks each.
EVAL_WORKLOADS = {
    "E1": Workload("sinusoid MLP, 10+10 points", 50, 1, 0.01),
    "E2": Workload("Omniglot 5-way 1-shot conv4, 1 query/class (the Omniglot presets' test)",
                   50, 1, 0.4, ways=5, shots=1, queries=1),
    "E3": Workload("E2 with 2 queries/class", 50, 1, 0.4, ways=5, shots=1, queries=2),
    "E4": Workload("5-way 1-shot conv4, 5 queries/class (the MNIST preset's test)", 50, 1, 0.4,
                   ways=5, shots=1, queries=5),
    "E5": Workload("Omniglot 5-way 5-shot conv4, 5 queries/class", 50, 1, 0.4, ways=5,
                   shots=5, queries=5),
    "E6": Workload("Omniglot 20-way 1-shot conv4, 1 query/class", 50, 5, 0.1, ways=20, shots=1,
                   queries=1),
    "E7": Workload("E2 with W5's max-pooling conv4", 50, 1, 0.4, ways=5, shots=1, queries=1,
                   backbone="conv4_maxpool"),
}


# Each implementation leaves the meta-gradient (mean query loss over tasks) in .grad.

def naive_loop(w: Workload, model, ep: Episode, first_order: bool) -> None:
    """A per-task autograd loop as tutorials write it, one backward per task."""
    params = dict(model.named_parameters())
    for t in range(ep.num_tasks):
        fast = params
        for _ in range(w.steps):
            loss = w.loss(functional_call(model, fast, (ep.support_x[t],)), ep.support_y[t])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {k: p - w.lr * g for (k, p), g in zip(fast.items(), grads)}
        query = w.loss(functional_call(model, fast, (ep.query_x[t],)), ep.query_y[t])
        (query / ep.num_tasks).backward()


def with_higher(w: Workload, model, ep: Episode, first_order: bool) -> None:
    """facebookresearch/higher's documented MAML loop; first order by its own switch."""
    inner = torch.optim.SGD(model.parameters(), lr=w.lr)
    for t in range(ep.num_tasks):
        with higher.innerloop_ctx(model, inner, copy_initial_weights=False,
                                  track_higher_grads=not first_order) as (fmodel, diffopt):
            for _ in range(w.steps):
                diffopt.step(w.loss(fmodel(ep.support_x[t]), ep.support_y[t]))
            query = w.loss(fmodel(ep.query_x[t]), ep.query_y[t]) / ep.num_tasks
            if first_order:  # adapted weights are detached: carry their gradient over
                grads = torch.autograd.grad(query, list(fmodel.parameters()))
                for p, g in zip(model.parameters(), grads):
                    p.grad = g if p.grad is None else p.grad + g
            else:
                query.backward()


def with_learn2learn(w: Workload, model, ep: Episode, first_order: bool) -> None:
    """learn2learn's documented MAML loop (its examples/vision/maml_omniglot.py): a clone of the
    wrapped model per task, adapt() per inner step; first order by its own switch."""
    maml = learn2learn.algorithms.MAML(model, lr=w.lr, first_order=first_order)
    for t in range(ep.num_tasks):
        learner = maml.clone()
        for _ in range(w.steps):
            learner.adapt(w.loss(learner(ep.support_x[t]), ep.support_y[t]))
        (w.loss(learner(ep.query_x[t]), ep.query_y[t]) / ep.num_tasks).backward()


class MamlCli:
    """maml-cli's engine. Like the trainer, which makes them once per run, it makes the
    algorithm and engine once per model and order: a compiled engine compiles on first use."""

    def __init__(self, strategy: str, compile: bool = False):
        self.strategy, self.compile, self.made = strategy, compile, {}

    def __call__(self, w: Workload, model, ep: Episode, first_order: bool) -> None:
        if (model, first_order) not in self.made:
            algorithm = MAML(model, w.loss, w.loss, SGD(w.lr, steps=w.steps),
                             first_order=first_order)
            self.made[model, first_order] = Engine(algorithm, self.strategy, self.compile)
        engine = self.made[model, first_order]
        params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
        engine.meta_backward(params, buffers, ep)


def implementations(model, device, compile: bool = False) -> dict:
    """Label -> implementation; with `compile`, also the auto strategy under trainer.compile."""
    auto = choose_strategy("auto", model, device)  # compiled: whatever a task's size
    variants = [(s, False) for s in STRATEGIES] + ([(auto, True)] if compile else [])
    impls = {"naive loop": naive_loop, "higher": with_higher}
    if learn2learn is not None:
        impls["learn2learn"] = with_learn2learn
    for strategy, compiled in variants:
        impls[f"maml-cli {strategy}{' + compile' if compiled else ''}"] = MamlCli(strategy,
                                                                                 compiled)
    return impls


def auto_strategy(w: Workload, model, ep: Episode, compiled: bool = False) -> str:
    """What engine=auto runs the workload's meta-batch under, `compiled` or not."""
    engine = Engine(MAML(model, w.loss, w.loss, SGD(w.lr, steps=w.steps)), "auto")
    return engine.strategy_for(dict(model.named_parameters()), dict(model.named_buffers()), ep,
                               compiled)


def mark_default(rows: dict, w: Workload, model, ep: Episode, device) -> dict:
    """The rows with "(= default)" on what the trainer runs with its defaults (engine=auto,
    trainer.compile=auto) for a run of the workload's length; on the CPU, auto chooses from the
    eager step's time, as the trainer does from its first iterations. Unmarked when that is a
    compiled row this run did not time."""
    eager = f"maml-cli {auto_strategy(w, model, ep)}"
    compiled = choose_compile("auto", device)
    if compiled is None:
        compiled = choose_compile("auto", device,
                                  eager_s_left=rows[eager]["ms"] / 1000 * w.run_iterations)
    default = f"maml-cli {auto_strategy(w, model, ep, True)} + compile" if compiled else eager
    return {f"{label} (= default)" if label == default else label: row
            for label, row in rows.items()}


def peak_cuda_mb(fn, *args) -> float:
    """CUDA memory allocated at the peak of fn(*args), above what was allocated before."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    fn(*args)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - start) / 2**20


def peak_rss_mb(w: Workload, first_order: bool, label: str) -> float:
    """CPU: how far one meta-iteration raises the peak resident set of a fresh process that
    has built the model and data (in this process, earlier runs' freed memory would hide it)."""
    order = "first" if first_order else "second"
    out = subprocess.run([sys.executable, __file__, "--rss", json.dumps(asdict(w)), order, label],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def high_water_mark_mb() -> float:
    # VmHWM, not getrusage's ru_maxrss: Linux carries the parent's peak over into a child's.
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kib / 1024


def rss_child(workload: str, order: str, label: str) -> None:
    w = Workload(**json.loads(workload))
    model = w.model()
    ep = w.episode(torch.device("cpu"), torch.Generator().manual_seed(0))
    fn = implementations(model, torch.device("cpu"), compile=True)[label]
    # A first meta-iteration's one-offs (compiling; libraries' lazy set-up) are not the
    # meta-iteration's memory: run one (on one task unless compiling, where the shapes must be
    # the timed ones), hand the freed memory back to the OS, then restart the high-water mark
    # at the current resident set (Linux's clear_refs "5").
    meta_grad(fn, w, model, ep if "compile" in label else ep[:1], order == "first")
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = high_water_mark_mb()
    meta_grad(fn, w, model, ep, order == "first")
    print(high_water_mark_mb() - before)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def alternate(runs: dict, repeats: int, device) -> dict[str, list[float]]:
    """Seconds of each run (a function of no arguments), `repeats` times, taking turns so that
    drifts in clock or load hit all alike."""
    times = {label: [] for label in runs}
    for _ in range(repeats):
        for label, run in runs.items():
            sync(device)
            start = time.perf_counter()
            run()
            sync(device)
            times[label].append(time.perf_counter() - start)
    return times


def meta_grad(fn, w, model, ep, first_order) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    fn(w, model, ep, first_order)
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def conv_floor(w: Workload, model, ep: Episode, device) -> tuple[float, float]:
    """(FLOPs of one second-order meta-iteration, the best FLOP/s this hardware reached on the
    same network's plain forward and backward, batched per task or over the whole meta-batch):
    their ratio is a time no implementation of the meta-iteration can beat here."""
    with FlopCounterMode(display=False) as counter:
        meta_grad(naive_loop, w, model, ep, first_order=False)
    flops = counter.get_total_flops()
    images = torch.cat([ep.support_x, ep.query_x], dim=1)  # [tasks, images per task, ...]
    rates = []
    for batches in (list(images), [images.flatten(0, 1)]):
        def dense(batches=batches):
            model.zero_grad(set_to_none=True)
            for batch in batches:
                model(batch).square().mean().backward()

        with FlopCounterMode(display=False) as counter:
            dense()
        dense()
        sync(device)
        runs, start = 3, time.perf_counter()
        for _ in range(runs):
            dense()
        sync(device)
        rates.append(counter.get_total_flops() * runs / (time.perf_counter() - start))
    return flops, max(rates)


def bench(name: str, w: Workload, device: torch.device, first_order: bool,
          compile: bool = False) -> dict:
    generator = torch.Generator(device).manual_seed(0)
    torch.manual_seed(0)
    model, ep = w.model().to(device), w.episode(device, generator)
    reference_model = w.model().double().to(device)
    reference_model.load_state_dict(model.state_dict())
    reference_ep = Episode(*(t.double() if t.is_floating_point() else t for t in ep.tensors()))
    reference = meta_grad(naive_loop, w, reference_model, reference_ep, first_order)
    impls, rows = implementations(model, device, compile), {}
    for label, fn in impls.items():  # warm-up, memory, correctness
        g = meta_grad(fn, w, model, ep, first_order)
        error = ((g.double() - reference).norm() / reference.norm()).item()
        if device.type == "cuda":
            peak = peak_cuda_mb(meta_grad, fn, w, model, ep, first_order)
        else:  # a process per implementation: second order only, where memory is the issue
            peak = None if first_order else peak_rss_mb(w, first_order, label)
        rows[label] = {"times": [], "peak_mb": peak, "grad_rel_error": error}
    def timed(fn):
        def run():
            model.zero_grad(set_to_none=True)
            fn(w, model, ep, first_order)
        return run

    times = alternate({label: timed(fn) for label, fn in impls.items()}, w.repeats, device)
    for label, row in rows.items():
        row["times"], row["ms"] = times[label], 1000 * statistics.median(times[label])
    for row in rows.values():
        row["x_naive"] = rows["naive loop"]["ms"] / row["ms"]
        row["x_higher"] = rows["higher"]["ms"] / row["ms"]
        if "learn2learn" in rows:
            row["x_learn2learn"] = rows["learn2learn"]["ms"] / row["ms"]
    rows = mark_default(rows, w, model, ep, device)
    result = {"workload": name, "description": w.description,
              "order": "first" if first_order else "second", "rows": rows}
    if w.ways and not first_order:
        flops, rate = conv_floor(w, model, ep, device)
        result |= {"gflop": flops / 1e9, "dense_gflop_per_s": rate / 1e9,
                   "floor_ms": 1000 * flops / rate}
        for row in rows.values():
            row["of_floor"] = result["floor_ms"] / row["ms"]
    return result


# The family, as `algorithm=` configures it (MAML++: its switches on algorithm=maml; the multi-step
# loss only acts with more than one inner step, so on W1/W2 it changes nothing).
ALGORITHMS = {
    "maml": (MAML, {}), "fomaml": (MAML, {"first_order": True}),
    "metasgd": (MAML, {"lr_mode": "per_parameter"}), "anil": (MAML, {"adapt": "head"}),
    "maml++ switches": (MAML, {"lr_mode": "per_layer_step", "per_step_norm": True,
                               "multi_step_loss": True, "msl_iterations": 10**9}),
    "reptile": (Reptile, {}), "pretrain": (Pretrain, {}), "protonet": (ProtoNet, {}),
}


def bench_algorithms(name: str, w: Workload, device: torch.device) -> dict:
    """Meta-iterations per second of each algorithm under engine=auto, timed alternately."""
    generator = torch.Generator(device).manual_seed(0)
    torch.manual_seed(0)
    model, ep = w.model().to(device), w.episode(device, generator)
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    runs = {}
    for label, (cls, options) in ALGORITHMS.items():
        if cls is ProtoNet and not w.ways:
            continue  # classification only
        options = options | ({"num_classes": w.ways} if w.ways else {})
        algorithm = cls(model, w.loss, w.loss, SGD(w.lr, steps=w.steps), **options)
        algorithm.start_iteration(1)
        weights = [*params.values(), *algorithm.learned.parameters()]
        engine = Engine(algorithm, "auto")

        def step(engine=engine, weights=weights):
            for p in weights:
                p.grad = None
            engine.meta_backward(params, buffers, ep)

        step()  # warm-up
        runs[label] = step
    times = alternate(runs, w.repeats, device)
    rows = {label: {"ms": 1000 * statistics.median(t)} for label, t in times.items()}
    for row in rows.values():
        row["it_per_s"] = 1000 / row["ms"]
        row["x_maml"] = rows["maml"]["ms"] / row["ms"]
    return {"workload": name, "description": w.description,
            "engine": auto_strategy(w, model, ep), "rows": rows}


def bench_eval(name: str, w: Workload, device: torch.device) -> dict:
    """Tasks adapted and scored per second by Engine.curves (eval_steps inner steps, no
    meta-gradient) under each strategy, timed alternately; the default is what engine=auto
    chooses from the task's forward's FLOPs (support and query), which the result also gives."""
    generator = torch.Generator(device).manual_seed(0)
    torch.manual_seed(0)
    model, ep = w.model().to(device), w.episode(device, generator)
    params = {k: p.detach() for k, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    algorithm = MAML(model, w.loss, w.loss, SGD(w.lr, steps=w.steps, eval_steps=w.eval_steps))
    runs = {f"maml-cli {strategy}": torch.no_grad()(
        partial(Engine(algorithm, strategy).curves, params, buffers, ep))
        for strategy in STRATEGIES}
    for run in runs.values():
        run()  # warm-up
    times = alternate(runs, w.repeats, device)
    default = f"maml-cli {auto_strategy(w, model, ep)}"
    rows = {}
    for label, t in times.items():
        ms = 1000 * statistics.median(t)
        rows[f"{label} (= default)" if label == default else label] = {
            "ms": ms, "tasks_per_s": 1000 * w.tasks / ms}
    loop_ms = next(row["ms"] for label, row in rows.items() if label.startswith("maml-cli loop"))
    for row in rows.values():
        row["x_loop"] = loop_ms / row["ms"]
    return {"workload": name, "description": f"{w.description}, {w.eval_steps} steps, "
            f"{w.tasks} tasks",
            "task_forward_mflop": Engine(algorithm).task_flop(params, buffers, ep) / 1e6,
            "rows": rows}


RL_DESCRIPTION = ("one meta-iteration of the 2D-navigation preset by phase (second-order MAML, "
                  "20 goals x 20 rollouts x 100 steps, TRPO)")


def bench_rl(device: torch.device, tasks: int = 20, rollouts: int = 20, horizon: int = 100,
             repeats: int = 3) -> dict:
    """R1, RL_DESCRIPTION, timed alternately: the batch's collection in lock-step
    against one task at a time (each task's rollouts, then its inner step, then the next task:
    what learn2learn's and pytorch-maml-rl's samplers do), and the meta-update (meta-gradient
    and TRPO step) under each strategy."""
    torch.manual_seed(0)
    task = Navigation2D(shots=rollouts, queries=rollouts, horizon=horizon, device=device)
    model = GaussianMLP(task.input_shape, task.num_outputs).to(device)
    params = dict(model.named_parameters())
    algorithm = MAML(model, task.loss, task.metric, SGD(0.1, steps=1), data_fn=task.task_data,
                     objective_fn=task.query_loss, kl_fn=task.kl)
    episode = task.sample("train", tasks, torch.Generator(device).manual_seed(0))
    engines = {strategy: Engine(algorithm, strategy, task=task) for strategy in STRATEGIES}
    collected = engines["loop"].collect(params, {}, episode)
    start = [p.detach().clone() for p in params.values()]
    optimizer = TRPO(params.values())

    def update(engine):
        for p in params.values():
            p.grad = None
        engine.meta_backward(params, {}, collected)
        optimizer.step(lambda: engine.surrogate(params, {}, collected))
        with torch.no_grad():  # every repeat steps from the same meta-parameters
            for p, s in zip(params.values(), start):
                p.copy_(s)

    runs = {"collect, lock-step": lambda: engines["loop"].collect(params, {}, episode),
            "collect, one task at a time": lambda: [engines["loop"].collect(
                params, {}, episode[t:t + 1]) for t in range(episode.num_tasks)]}
    runs |= {f"meta-update, {strategy}": partial(update, engine)
             for strategy, engine in engines.items()}
    for run in runs.values():
        run()  # warm-up
    times = alternate(runs, repeats, device)
    rows = {label: {"ms": 1000 * statistics.median(t)} for label, t in times.items()}
    return {"workload": "R1", "description": RL_DESCRIPTION,
            "engine": choose_strategy("auto", model, device), "rows": rows,
            "x_lock_step": rows["collect, one task at a time"]["ms"]
            / rows["collect, lock-step"]["ms"]}


def bench_trainer(device: torch.device, iterations: int = 15000, compile: str = "auto",
                  cuda_graphs: bool = True) -> dict:
    """T1, the default run (`maml-train` with no options but the device) through the whole
    trainer, and T2, the same with trainer.compile=true (`compile`): ms per iteration of
    Trainer.fit over `iterations` (sampling, the outer step, the NaN checks, TensorBoard
    logging, validation with its figure and the final checkpoint, all on their default
    schedule), and of the engine's step inside it (meta_backward, or meta_step where the whole
    meta-iteration compiles, which includes the outer step), timed in the same run, so that a
    machine's drift hits both alike (on CUDA each step is synchronised to be timed, which the
    trainer itself never does: there the overhead is an upper bound). The first compiled step,
    which compiles, counts in neither: its seconds are `compile_s`. `cuda_graphs`: the
    trainer.cuda_graphs setting."""
    register_configs()
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"device={device.type}",
                                           f"device.threads={torch.get_num_threads()}",
                                           f"trainer.iterations={iterations}",
                                           f"trainer.compile={compile}",
                                           f"trainer.cuda_graphs={cuda_graphs}"])
    run = build(cfg)
    trainer = Trainer(run, Path(tempfile.mkdtemp(prefix="maml-bench-")))
    inside, compiling = [], []

    def timed(step):
        def call(*args):
            start = time.perf_counter()
            result = step(*args)
            sync(device)
            seconds = time.perf_counter() - start
            (compiling if step is meta_step and not compiling else inside).append(seconds)
            return result
        return call

    meta_step = run.engine.meta_step
    run.engine.meta_backward = timed(run.engine.meta_backward)
    run.engine.meta_step = timed(meta_step)
    sync(device)
    start = time.perf_counter()
    trainer.fit()
    sync(device)
    trainer_ms = 1000 * (time.perf_counter() - start - sum(compiling)) / iterations
    shutil.rmtree(trainer.run_dir)
    engine_ms = 1000 * sum(inside) / iterations
    return {"workload": "T1" if compile == "auto" else "T2",
            "description": f"the default run (sinusoid, {iterations} iterations, validation "
            f"every 1000) through the trainer{'' if compile == 'auto' else ', compiled'}",
            "engine": choose_strategy(run.engine.strategy, run.model, device),
            "compiled": bool(trainer.progress.compiled),
            "whole_iteration": bool(compiling), "compile_s": sum(compiling),
            "engine_ms": engine_ms, "trainer_ms": trainer_ms,
            "overhead": trainer_ms / engine_ms - 1}


def machine(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "higher": importlib.metadata.version("higher"),
            "learn2learn": learn2learn.__version__ if learn2learn else None,
            "threads": torch.get_num_threads(),
            "cudnn_tf32": torch.backends.cudnn.allow_tf32,
            "cpu": platform.processor()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f
                               if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def table(title: str, columns: tuple[str, ...], rows) -> Table:
    """A rich table, its first column (the rows' labels) left-aligned, the numbers right."""
    t = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        t.add_column(column, justify="right" if i else "left")
    for row in rows:
        t.add_row(*row)
    return t


def speedups(result: dict) -> list[str]:
    """The baselines a workload's rows have a speed-up over: x_naive, x_higher and, in files
    from a machine that had it, x_learn2learn."""
    return [k for k in ("x_naive", "x_higher", "x_learn2learn")
            if k in next(iter(result["rows"].values()))]


def show(results: list[dict], info: dict, device: torch.device) -> None:
    console = Console(width=150)
    console.print(f"[bold]maml-cli benchmark[/] on {device}: {info}")
    for r in results:
        floor = f", floor {r['floor_ms']:.0f} ms ({r['gflop']:.0f} GFLOP at " \
                f"{r['dense_gflop_per_s']:.0f} GFLOP/s)" if "floor_ms" in r else ""
        x = speedups(r)
        console.print(table(
            f"{r['workload']} {r['order']} order: {r['description']}{floor}",
            ("implementation", "ms/iter", *(k.replace("_", " ") for k in x), "peak MB",
             "grad rel. error", "of floor"),
            ((label, f"{row['ms']:.2f}", *(f"{row[k]:.2f}" for k in x),
              "" if row["peak_mb"] is None else f"{row['peak_mb']:.0f}",
              f"{row['grad_rel_error']:.1e}", f"{row['of_floor']:.0%}" if "of_floor" in row else "")
             for label, row in r["rows"].items())))


def show_algorithms(results: list[dict]) -> None:
    console = Console(width=150)
    for r in results:
        console.print(table(
            f"{r['workload']} by algorithm (engine {r['engine']}, second order where it "
            f"applies): {r['description']}", ("algorithm", "ms/iter", "iterations/s", "x maml"),
            ((label, f"{row['ms']:.2f}", f"{row['it_per_s']:.2f}", f"{row['x_maml']:.2f}")
             for label, row in r["rows"].items())))


def show_trainer(results: list[dict]) -> None:
    for r in results:
        Console(width=150).print(
            f"{r['workload']}, {r['description']} (engine {r['engine']}{compiled(r)}): "
            f"{r['trainer_ms']:.2f} ms per iteration, the engine's step {r['engine_ms']:.2f} ms: "
            f"overhead {r['overhead']:.0%}")


def compiled(r: dict) -> str:
    """How a trainer row's run compiled (files from before these keys: not said)."""
    if not r.get("compiled"):
        return "" if "compiled" not in r else ", eager"
    if r["whole_iteration"]:
        return f", the whole meta-iteration compiled in {r['compile_s']:.0f} s"
    return ", compiled"


def show_eval(results: list[dict]) -> None:
    console = Console(width=150)
    for r in results:
        console.print(table(
            f"{r['workload']} evaluation: {r['description']} (a task's forward "
            f"{r['task_forward_mflop']:.3g} MFLOP)", ("strategy", "ms", "tasks/s", "x loop"),
            ((label, f"{row['ms']:.0f}", f"{row['tasks_per_s']:.1f}", f"{row['x_loop']:.2f}")
             for label, row in r["rows"].items())))


def show_rl(results: list[dict]) -> None:
    console = Console(width=150)
    for r in results:
        console.print(table(f"{r['workload']}: {r['description']} (auto: {r['engine']})",
                            ("phase", "ms"),
                            ((label, f"{row['ms']:.0f}") for label, row in r["rows"].items())))
        console.print(f"lock-step collection: {r['x_lock_step']:.2f}x one task at a time")


def markdown(data: dict) -> str:
    """docs/performance.md's tables from a results file."""
    lines = []
    for r in data["results"]:
        floor = (f" (floor {r['floor_ms']:.0f} ms: {r['gflop']:.0f} GFLOP at "
                 f"{r['dense_gflop_per_s']:.0f} GFLOP/s)" if "floor_ms" in r else "")
        x = speedups(r)
        columns = ["implementation", "ms/iter", *(k.replace("_", " ") for k in x), "peak MB",
                   "grad rel. error", "of floor"]
        lines += [f"**{r['workload']}, {r['order']} order**{floor}", "",
                  "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
        best = min(r["rows"], key=lambda label: r["rows"][label]["ms"])
        for label, row in r["rows"].items():
            cells = [label, f"{row['ms']:.2f}" if row["ms"] < 10 else f"{row['ms']:.1f}"
                     if row["ms"] < 100 else f"{row['ms']:.0f}",
                     *(f"{row[k]:.2f}" for k in x),
                     "" if row["peak_mb"] is None else f"{row['peak_mb']:.0f}",
                     f"{row['grad_rel_error']:.1e}",
                     f"{row['of_floor']:.0%}" if "of_floor" in row else ""]
            if label == best:
                cells[:2 + len(x)] = [f"**{c}**" for c in cells[:2 + len(x)]]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    for r in data.get("algorithms", []):
        lines += [f"**{r['workload']} by algorithm** (engine `{r['engine']}`)", "",
                  "| algorithm | ms/iteration | iterations/s | x MAML |", "|---|---|---|---|"]
        lines += [f"| {label} | {row['ms']:.2f} | {row['it_per_s']:.2f} | {row['x_maml']:.2f} |"
                  for label, row in r["rows"].items()]
        lines.append("")
    for r in data.get("trainer", []):
        lines += [f"**{r['workload']}**: {r['description']} (engine `{r['engine']}`"
                  f"{compiled(r)})", "",
                  "| the trainer, ms/iteration | the engine's step, ms | trainer overhead |",
                  "|---|---|---|",
                  f"| {r['trainer_ms']:.2f} | {r['engine_ms']:.2f} | {r['overhead']:.0%} |", ""]
    if data.get("eval"):
        lines += ["| evaluation | a task's forward, MFLOP | loop, tasks/s | vmap, tasks/s "
                  "| default | default x loop |", "|---|---|---|---|---|---|"]
        for r in data["eval"]:
            rate = {label.split()[1]: row["tasks_per_s"] for label, row in r["rows"].items()}
            default = next(label for label in r["rows"] if label.endswith("(= default)"))
            lines.append(f"| {r['workload']}: {r['description']} | {r['task_forward_mflop']:.3g} "
                         f"| {rate['loop']:.1f} | {rate['vmap']:.1f} | {default.split()[1]} "
                         f"| {r['rows'][default]['x_loop']:.2f} |")
        lines.append("")
    for r in data.get("rl", []):
        lines += [f"**{r['workload']}**: {r['description']} (`engine=auto`: {r['engine']}); "
                  f"lock-step collection {r['x_lock_step']:.2f}x one task at a time", "",
                  "| phase | ms |", "|---|---|"]
        lines += [f"| {label} | {row['ms']:.0f} |" for label, row in r["rows"].items()]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workloads", default=DEFAULT_WORKLOADS,
                        help=f"of {', '.join(WORKLOADS)} (default {DEFAULT_WORKLOADS})")
    parser.add_argument("--orders", default="second,first")
    parser.add_argument("--algorithms", default="W1,W2",
                        help="workloads to time every algorithm on ('' for none)")
    parser.add_argument("--trainer", action=argparse.BooleanOptionalAction, default=True,
                        help="time the default run through the whole trainer (T1)")
    parser.add_argument("--trainer-compiled", action=argparse.BooleanOptionalAction,
                        default=True, help="and compiled (T2), where the default does not "
                                           "compile")
    parser.add_argument("--trainer-iterations", type=int, default=15000,
                        help="T1's and T2's run length (default: the default run's 15,000)")
    parser.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True,
                        help="T1's and T2's trainer.cuda_graphs (on CUDA: replay the compiled "
                             "meta-iteration as CUDA graphs)")
    parser.add_argument("--eval", default=",".join(EVAL_WORKLOADS),
                        help=f"evaluation workloads to time under each strategy, of "
                             f"{', '.join(EVAL_WORKLOADS)} ('' for none)")
    parser.add_argument("--rl", action=argparse.BooleanOptionalAction, default=True,
                        help="time the 2D-navigation meta-iteration by phase (R1)")
    parser.add_argument("--compile", default=None,
                        help="workloads on which to also time the auto strategy under "
                             "trainer.compile (default: all of --workloads)")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("--markdown", metavar="RESULTS_JSON",
                        help="print the tables of a results file as docs/performance.md has "
                             "them, and exit")
    parser.add_argument("--no-tf32", action="store_true",
                        help="full float32 convolutions on CUDA (PyTorch's default is TF32)")
    parser.add_argument("--rss", nargs=3, metavar=("WORKLOAD", "ORDER", "LABEL"),
                        help=argparse.SUPPRESS)  # the child process of peak_rss_mb
    args = parser.parse_args()
    if args.rss:
        return rss_child(*args.rss)
    if args.markdown:
        with open(args.markdown) as f:
            return print(markdown(json.load(f)))
    device = torch.device(args.device)
    torch.backends.cudnn.allow_tf32 = not args.no_tf32
    compiled = (args.workloads if args.compile is None else args.compile).split(",")
    results = [bench(name, WORKLOADS[name], device, order == "first", name in compiled)
               for name in args.workloads.split(",") if name for order in args.orders.split(",")]
    algorithms = [bench_algorithms(name, WORKLOADS[name], device)
                  for name in args.algorithms.split(",") if name]
    trainer = []
    if args.trainer:
        trainer = [bench_trainer(device, args.trainer_iterations, "auto", args.cuda_graphs)]
        if args.trainer_compiled and not trainer[0]["compiled"]:
            trainer.append(bench_trainer(device, args.trainer_iterations, "true",
                                         args.cuda_graphs))
    evaluation = [bench_eval(name, EVAL_WORKLOADS[name], device)
                  for name in args.eval.split(",") if name]
    rl = [bench_rl(device)] if args.rl else []
    info = machine(device)
    show(results, info, device)
    show_algorithms(algorithms)
    show_trainer(trainer)
    show_eval(evaluation)
    show_rl(rl)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": shlex.join(["python", "benchmarks/bench.py", *sys.argv[1:]]),
                       "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "device": str(device), "machine": info, "results": results,
                       "algorithms": algorithms, "trainer": trainer, "eval": evaluation,
                       "rl": rl}, f, indent=1)


if __name__ == "__main__":
    main()
