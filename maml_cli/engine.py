"""How a meta-batch is executed: the algorithm's per-task function mapped over the task dimension.

`vmap` runs all tasks as one batched computation (torch.func.vmap); `loop` runs them one after
another. `auto` picks from what benchmarks/bench.py measured (docs/performance.md): vmap on CUDA
(conv4 Omniglot: 20x the loop on an H100) and for models without convolutions on CPU (the
sinusoid MLP: about 10x the loop); the loop for conv nets on CPU, where vmap's convolutions with
per-task weights are slower per FLOP, except uncompiled (evaluation, short runs) on tasks small
enough that the loop's per-operator overhead dominates; the loop for RL policies on CPU (R1: the
loop 1.2x vmap on the 2D-navigation meta-update). Models
with torch's own batch norm always get the loop, and engine=vmap refuses them: its second-order
gradients under vmap are wrong (conv4's hand-written batch norm is exact under both). Either
strategy can be compiled (trainer.compile); under vmap with the outer Adam, the whole
meta-iteration compiles as one graph (meta_step), which CUDA graphs can replay. An RL task's
batch is collected first (collect()): from then on it is data like any other, under either
strategy."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import FlopCounterMode

from maml_cli.episode import Episode
from maml_cli.errors import UserError
from maml_cli.optim import adam_update
from maml_cli.tasks.base import TaskFamily

STRATEGIES = ("vmap", "loop")
AMP_DTYPES = {"bf16": torch.bfloat16}
# vmap's in_dims for fn(params, buffers, support_x, support_y, query_x, query_y): the weights are
# shared by every task, the episode's tensors have the task dimension first.
TASK_DIMS = (None, None, 0, 0, 0, 0)


# Uncompiled, a conv net on the CPU runs under vmap when a task's forward (its support batch and
# its query batch) takes at most this many FLOPs per CPU thread: there the loop's per-operator
# overhead costs more than vmap's grouped convolutions, which also gain more from a second
# thread. bench.py, vmap x the loop, evaluation (E rows): one thread 1.65x at 80 MFLOP, 0.97x at
# 159; two threads 1.23-1.47x at 159, 0.89-1.05x at 196 (two runs). Second-order training: one
# thread 1.45x at 80 (W7) and still 1.36x at 133 (W8), where the limit takes the loop; two
# threads 1.43x at 133. Compiled, the loop is faster at every size measured.
EAGER_VMAP_MAX_FLOP_PER_THREAD = 9e7


def _torch_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._NormBase) for m in model.modules())


def check_strategy(name: str, model: nn.Module) -> None:
    if name == "vmap" and _torch_batch_norm(model):
        raise UserError("engine=vmap gives wrong second-order gradients through torch's "
                        "nn.BatchNorm (pytorch/functorch#534); use engine=loop or auto")


def choose_strategy(name: str, model: nn.Module, device: torch.device,
                    task_flop: Callable[[], float] | None = None) -> str:
    """engine=`name` for `model` on `device`. `task_flop`, given where the meta-batch runs
    uncompiled: the FLOPs of a task's forward, called only where the choice depends on it
    (EAGER_VMAP_MAX_FLOP_PER_THREAD, times torch's CPU threads)."""
    check_strategy(name, model)
    if name != "auto":
        return name
    if _torch_batch_norm(model):
        return "loop"
    if device.type == "cuda":
        return "vmap"
    # A policy's tasks are thousands of rollout steps each: compute-bound, where vmap only adds
    # its own overhead (the 2D-navigation meta-update, R1: the loop 1.2x vmap).
    if getattr(model, "is_policy", False):
        return "loop"
    if not any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules()):
        return "vmap"
    limit = EAGER_VMAP_MAX_FLOP_PER_THREAD * torch.get_num_threads()
    return "vmap" if task_flop is not None and task_flop() <= limit else "loop"


def _task_mean(outputs: dict) -> dict:
    """Every tensor of a (nested) dict of per-task outputs averaged over the task dimension."""
    return {k: _task_mean(v) if isinstance(v, dict) else v.mean(0) for k, v in outputs.items()}


def _stack(outputs: list):
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(outputs)
    if isinstance(first, dict):
        return {k: _stack([o[k] for o in outputs]) for k in first}
    return type(first)(_stack(list(group)) for group in zip(*outputs))


# trainer.compile=auto on the CPU compiles once the trainer has timed its first iterations and
# the rest of the run, eager, would take longer than this. Compiling the meta-batch's forward
# took 30 s (the sinusoid MLP) to over 2 minutes (conv4, five inner steps) on 2 cores and then
# made every iteration 1.8-2.2x faster (docs/performance.md): a run this long repays it at least
# twice over.
CPU_COMPILE_AFTER_S = 600.0
# The same where the whole meta-iteration compiles as one graph (Engine.meta_step): compiling
# the sinusoid MLP's took 31 s with an empty compile cache on one thread, and the trainer then
# ran 4.1x the eager iterations per second (docs/performance.md, "The whole meta-iteration as
# one graph"), so a run this long repays it at least twice over too. The default run (40-60 s
# eager on 2 cores) stays eager.
CPU_WHOLE_COMPILE_AFTER_S = 90.0


def choose_compile(setting: bool | str, device: torch.device, policy: bool = False,
                   eager_s_left: float | None = None, whole: bool = False) -> bool | None:
    """Whether the engine compiles; None: trainer.compile=auto on the CPU, not yet known, which
    the trainer settles with `eager_s_left` (its first iterations' time, eager, times the
    iterations left) and `whole` (whether the whole meta-iteration would compile:
    Engine.can_meta_step). Auto on CUDA: always, where benchmarks/bench.py measured 3x the
    iterations per second (conv4 Omniglot on an H100), paid back after about 1,500 iterations.
    Never for RL policies on the CPU: their TRPO step, which is not compiled, is most of an
    iteration."""
    if setting != "auto":
        return bool(setting)
    if device.type == "cuda":
        return True
    if policy:
        return False
    if eager_s_left is None:
        return None
    return eager_s_left > (CPU_WHOLE_COMPILE_AFTER_S if whole else CPU_COMPILE_AFTER_S)


class Engine:
    """Runs `algorithm` over meta-batches: its meta-gradient after the inner optimizer's `steps`,
    its adaptation curves over its `eval_steps` (both counts come from the inner optimizer only).

    `compile`: torch.compile the meta-batch's forward (the vmapped tasks, or one task of the
    loop), inner gradients included; autograd's backward runs through the compiled graph.
    `amp`: run that forward under torch.autocast in this dtype (None: float32).
    `task`: the task family, for RL tasks, whose batches collect() turns into rollouts.
    `strategy`: vmap, loop, or auto: chosen for each meta-batch (strategy_for).
    `cuda_graphs`: on CUDA, capture the compiled meta-iteration (meta_step) as CUDA graphs."""

    def __init__(self, algorithm, strategy: str = "loop", compile: bool = False,
                 amp: str | None = None, task: TaskFamily | None = None,
                 cuda_graphs: bool = True):
        check_strategy(strategy, algorithm.model)
        self.algorithm, self.strategy, self.compile, self.task = algorithm, strategy, compile, task
        self.steps, self.eval_steps = algorithm.inner.steps, algorithm.inner.eval_steps
        self.amp = AMP_DTYPES[amp] if amp else None
        self.cuda_graphs = cuda_graphs
        self._chosen = {}  # strategy_for's choices, by the tasks' shapes
        self._task_loss = None  # (strategy, fn): made once (compiling is slow) by _mapped_task_loss
        self._meta_step = None  # (outer, graphs, its tensors, fn): made once by meta_step

    def set_compile(self, compile: bool) -> None:
        """Compile (or not) from the next meta-batch on: trainer.compile=auto's late choice."""
        if compile != self.compile:
            self.compile, self._task_loss, self._meta_step = compile, None, None

    @torch.no_grad()
    def collect(self, params, buffers, episode: Episode, steps: int | None = None) -> Episode:
        """An RL task's sampled batch as the algorithm trains or evaluates on it: every task's
        rollouts of its policy after 0..steps inner steps (default: as many as training
        takes). Drawn in lock-step: the tasks' policies after step s roll out together (one
        batched simulation, one vmapped policy call per time step), then every task takes its
        inner step s on them. Other tasks' batches are their data already."""
        if self.task is None or not self.task.needs_policy:
            return episode
        if steps is None:
            steps = self.steps if self.algorithm.adapts_in_training else 0
        params = {k: v.detach() for k, v in params.items()}
        data = self.task.allocate(episode, steps)
        # A task's inner loop reads its rollouts of step s (views into `data`) when it takes
        # step s, which is after simulate() has filled them.
        paths = [self.algorithm.trajectory(params, buffers, *data[t].tensors(), steps,
                                           first_order=True) for t in range(episode.num_tasks)]
        policy = vmap(lambda fast, x: self.algorithm.forward({**params, **fast}, buffers, x))
        for step in range(steps + 1):
            fast = _stack([next(path).params for path in paths])
            self.task.simulate(episode, step, lambda x, tasks, fast=fast: policy(
                {k: v[tasks] for k, v in fast.items()}, x), data)
        return data

    def strategy_for(self, params, buffers, episode: Episode, compiled: bool = False) -> str:
        """The strategy `episode` runs under, `compiled` or not (engine=auto: choose_strategy)."""
        key = (episode.support_x.shape[1:], episode.query_x.shape[1:], compiled)
        if key not in self._chosen:
            self._chosen[key] = choose_strategy(
                self.strategy, self.algorithm.model, episode.support_x.device,
                None if compiled else partial(self.task_flop, params, buffers, episode))
        return self._chosen[key]

    @torch.no_grad()
    def task_flop(self, params, buffers, episode: Episode) -> int:
        """The FLOPs of the model's forward on the first task's support and query batches."""
        task = episode[0]
        with FlopCounterMode(display=False) as counter:
            for x in (task.support_x, task.query_x):
                self.algorithm.forward(params, buffers, x)
        return counter.get_total_flops()

    def map_tasks(self, fn, params, buffers, episode: Episode, **kwargs):
        """fn(params, buffers, support_x, support_y, query_x, query_y, **kwargs) for every task,
        uncompiled, outputs stacked along a new leading task dimension."""
        fn = partial(fn, **kwargs)
        if self.strategy_for(params, buffers, episode) == "vmap":
            return vmap(fn, in_dims=TASK_DIMS)(params, buffers, *episode.tensors())
        tasks = range(episode.num_tasks)
        return _stack([fn(params, buffers, *episode[t].tensors()) for t in tasks])

    def _mapped_task_loss(self, strategy: str):
        """algorithm.task_loss, over every task at once (vmap) or for one (loop), compiled
        when asked."""
        if self._task_loss is None or self._task_loss[0] != strategy:
            fn = self.algorithm.task_loss
            if strategy == "vmap":
                fn = vmap(fn, in_dims=TASK_DIMS)
            if self.compile:
                _announce_compiling("the first meta-batch compiles (30 s to minutes)")
                fn = torch.compile(fn)
            self._task_loss = strategy, fn
        return self._task_loss[1]

    def curves(self, params, buffers, episode: Episode, steps: int | None = None,
               transductive: bool = True):
        """The query metrics of every task of a sampled batch after 0..steps inner steps
        (default eval_steps): [tasks, steps + 1, metrics], the task's main metric first
        (`transductive`: Algorithm.outcomes)."""
        steps = self.eval_steps if steps is None else steps
        return self.map_tasks(self.algorithm.adaptation_curve, params, buffers,
                              self.collect(params, buffers, episode, steps), steps=steps,
                              transductive=transductive)

    @torch.no_grad()
    def before(self, params, buffers, episode: Episode) -> dict:
        """The collected meta-batch's query metrics before adaptation (Algorithm.before),
        averaged over its tasks; uncompiled, since it runs once per log window."""
        with torch.autocast(episode.support_x.device.type, self.amp, enabled=bool(self.amp)):
            metrics = _task_mean(self.map_tasks(self.algorithm.before, params, buffers, episode))
        # Under trainer.amp the metrics come out in its dtype: at least float32 for the log.
        return {k: v.to(torch.promote_types(v.dtype, torch.float32)) for k, v in metrics.items()}

    def _forward(self, fn, device: torch.device, *args, steps: int):
        with _compiling():
            if self.amp is None:
                return fn(*args, steps=steps)
            with torch.autocast(device.type, self.amp):
                loss, metrics = fn(*args, steps=steps)
            return loss.float(), tree_map(lambda v: v.float(), metrics)

    def surrogate(self, params, buffers, episode: Episode):
        """The collected meta-batch's mean meta-objective and mean KL of its adapted policies
        from the ones that drew its samples, differentiable (what outer=trpo's closure
        returns)."""
        loss, kl = self.map_tasks(self.algorithm.surrogate, params, buffers, episode,
                                  steps=self.steps)
        return loss.mean(), kl.mean()

    def can_meta_step(self, params, buffers, episode: Episode) -> bool:
        """Whether meta_step can take this meta-batch's whole iteration, once compiling: under
        vmap, in float32, with no rollouts to collect."""
        return (self.amp is None and not (self.task is not None and self.task.needs_policy)
                and self.strategy_for(params, buffers, episode, compiled=True) == "vmap")

    def meta_step(self, params, buffers, episode: Episode, outer, lr: float):
        """One whole meta-iteration as one compiled graph (where can_meta_step): the meta-gradient,
        torch.func.grad of the mean query loss over the vmapped tasks, and the outer Adam step
        in place (`outer`: optim.Adam.functional()'s tensors, `lr`: this iteration's rate); on
        CUDA replayed as CUDA graphs (cuda_graphs). One graph instead of a backward pass and an
        optimizer step around a compiled forward: on the CPU the sinusoid's took a fifth of the
        eager meta-gradient's time, its outer step included (docs/performance.md, "The whole
        meta-iteration as one graph"); on CUDA it is what capturing needs. Returns the mean
        loss, the mean metrics and a vector of the norms of the loss and of every gradient (the
        trainer's NaN check), detached."""
        device = episode.support_x.device
        if self._meta_step is None or self._meta_step[0] is not outer:
            graphs = self.cuda_graphs and device.type == "cuda"
            # Updated in place without autograd seeing it: detached views of the parameters.
            state = ([p.detach() for p in outer[0]], *outer[1:4],
                     torch.zeros((), dtype=torch.float64, device=device))
            if graphs:  # replayed in place: the graphs read and update these very tensors
                for t in (*state[0], *state[1], *state[2], *state[3], state[4],
                          *buffers.values()):
                    torch._dynamo.mark_static_address(t)
            what = ("the whole meta-iteration compiles as one graph on its first call (30 s or "
                    "more; seconds from torch's cache)")
            _announce_compiling(what + (", then replays as CUDA graphs (trainer.cuda_graphs)"
                                        if graphs else ""))
            # each trained tensor's (part, name): the model's (0) or the algorithm's own (1)
            where = {id(v): (0, k) for k, v in params.items()}
            where |= {id(v): (1, k) for k, v in self.algorithm.learned.named_parameters()}
            fn = partial(self._whole_iteration, [where[id(p)] for p in outer[0]], outer[4])
            fn = torch.compile(fn, mode="reduce-overhead" if graphs else None)
            self._meta_step = outer, graphs, state, fn
        _, graphs, state, fn = self._meta_step
        state[4].fill_(lr)
        if graphs:  # the last replay's outputs are copied out below, nothing else reads them
            torch.compiler.cudagraph_mark_step_begin()
        with _compiling():
            out = fn(*state, buffers, *episode.tensors())
        return tree_map(torch.clone, out) if graphs else out

    def _whole_iteration(self, names, hyper, params, exp_avgs, exp_avg_sqs, counts, lr, buffers,
                         *tensors):
        task_loss = vmap(self.algorithm.task_loss, in_dims=TASK_DIMS)

        def mean_loss(model, learned):
            # the algorithm's own meta-parameters (learned rates, a relation module) in place
            loss, metrics = functional_call(self.algorithm.learned, learned,
                                            (task_loss, model, buffers, *tensors),
                                            {"steps": self.steps})
            return loss.mean(), _task_mean(metrics)

        named = ({}, {})  # the model's parameters, the algorithm's
        for (part, name), p in zip(names, params):
            named[part][name] = p
        grads, (loss, metrics) = grad_and_value(mean_loss, argnums=(0, 1), has_aux=True)(*named)
        grads = [grads[part][name] for part, name in names]
        with torch.no_grad():
            adam_update(params, grads, exp_avgs, exp_avg_sqs, counts, lr, *hyper)
        return loss, metrics, torch.stack(torch._foreach_norm([loss, *grads]))

    def meta_backward(self, params, buffers, episode: Episode):
        """Accumulate the meta-gradient (of the mean query loss over the collected meta-batch)
        into the params' .grad; return that loss and the mean metrics, detached.

        The loop takes one backward per task, so only one task's graph is alive at a time:
        measured on Omniglot 5-way 1-shot conv4 (32 tasks, second order, 2-core CPU), 7% faster
        than one backward over all and a fraction of the memory.
        """
        strategy = self.strategy_for(params, buffers, episode, self.compile)
        fn, device, steps = self._mapped_task_loss(strategy), episode.support_x.device, self.steps
        if strategy == "vmap":
            loss, metrics = self._forward(fn, device, params, buffers, *episode.tensors(),
                                          steps=steps)
            loss = loss.mean()
            loss.backward()
            return loss.detach(), _task_mean(metrics)
        losses, metrics = [], []
        for t in range(episode.num_tasks):
            loss, task_metrics = self._forward(fn, device, params, buffers,
                                               *episode[t].tensors(), steps=steps)
            (loss / episode.num_tasks).backward()
            losses.append(loss.detach())
            metrics.append(task_metrics)
        return torch.stack(losses).mean(), _task_mean(_stack(metrics))


def _announce_compiling(what: str) -> None:
    logging.getLogger("maml_cli").info("trainer.compile: %s; trainer.compile=false skips that",
                                       what)
    # A CUDA build of torch compiling for the CPU warns that there is no CUDA runtime, on
    # stderr, on every run: true, and nothing to act on.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


@contextmanager
def _compiling():
    """A failure of torch.compile as one clear line (TorchDynamoException is only raised when
    compiling)."""
    try:
        yield
    except torch._dynamo.exc.TorchDynamoException as e:
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise UserError(f"compiling the meta-batch (trainer.compile) failed: {first.strip()}; "
                        f"run with trainer.compile=false") from None
