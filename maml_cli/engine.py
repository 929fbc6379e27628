"""How a meta-batch is executed: the algorithm's per-task function mapped over the task dimension.

`vmap` runs all tasks as one batched computation (torch.func.vmap); `loop` runs them one after
another. `auto` picks from what benchmarks/bench.py measured (docs/performance.md): vmap on CUDA
(conv4 Omniglot: 20x the loop on an H100) and for models without convolutions on CPU (the
sinusoid MLP: about 10x the loop); the loop for conv nets on CPU, where vmap is 3-5x slower. Models
with torch's own batch norm always get the loop: its second-order gradients under vmap are wrong
(conv4's hand-written batch norm is exact under both).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.func import vmap

from maml_cli.episode import Episode

STRATEGIES = ("vmap", "loop")


def choose_strategy(name: str, model: nn.Module, device: torch.device) -> str:
    if name != "auto":
        return name
    if any(isinstance(m, nn.modules.batchnorm._NormBase) for m in model.modules()):
        return "loop"
    if device.type == "cuda":
        return "vmap"
    convolutional = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
    return "loop" if convolutional else "vmap"


def _stack(outputs: list):
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(outputs)
    if isinstance(first, dict):
        return {k: _stack([o[k] for o in outputs]) for k in first}
    return type(first)(_stack(list(group)) for group in zip(*outputs))


class Engine:
    def __init__(self, strategy: str):
        self.strategy = strategy

    def map_tasks(self, fn, params, buffers, episode: Episode, **kwargs):
        """fn(params, buffers, support_x, support_y, query_x, query_y, **kwargs) for every task,
        outputs stacked along a new leading task dimension."""
        fn = partial(fn, **kwargs)
        if self.strategy == "vmap":
            return vmap(fn, in_dims=(None, None, 0, 0, 0, 0))(params, buffers, *episode.tensors())
        tasks = range(episode.num_tasks)
        return _stack([fn(params, buffers, *episode[t].tensors()) for t in tasks])

    def meta_backward(self, algorithm, params, buffers, episode: Episode, steps: int):
        """Accumulate the meta-gradient (of the mean query loss over the meta-batch) into the
        params' .grad; return that loss and the mean metrics, detached.

        The loop takes one backward per task, so only one task's graph is alive at a time:
        measured on Omniglot 5-way 1-shot conv4 (32 tasks, second order, 2-core CPU), 7% faster
        than one backward over all and a fraction of the memory.
        """
        if self.strategy == "vmap":
            loss, metrics = self.map_tasks(algorithm.task_loss, params, buffers, episode,
                                           steps=steps)
            loss = loss.mean()
            loss.backward()
            return loss.detach(), {k: v.mean() for k, v in metrics.items()}
        losses, metrics = [], []
        for t in range(episode.num_tasks):
            loss, task_metrics = algorithm.task_loss(params, buffers, *episode[t].tensors(),
                                                     steps=steps)
            (loss / episode.num_tasks).backward()
            losses.append(loss.detach())
            metrics.append(task_metrics)
        return torch.stack(losses).mean(), {k: v.mean() for k, v in _stack(metrics).items()}
