"""Config -> objects. Every component is made by hydra.utils.instantiate from its group."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from maml_cli.algorithms.base import Algorithm
from maml_cli.device import resolve_device
from maml_cli.engine import Engine, choose_compile, choose_strategy
from maml_cli.errors import UserError
from maml_cli.tasks.base import TaskFamily


@dataclass
class Run:
    device: torch.device
    task: TaskFamily
    model: nn.Module
    algorithm: Algorithm
    engine: Engine


def make(group: str, node: DictConfig, **kwargs):
    """instantiate(node), with failures reported as one line naming the config group."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, UserError):
            raise e.__cause__ from None
        detail = " ".join(str(e.__cause__ or e).split())
        raise UserError(f"cannot build {group} from its config: {detail}") from None


def build(cfg: DictConfig) -> Run:
    device = resolve_device(cfg.device.name, cfg.device.threads)
    task = make("task", cfg.task, device=device, data=cfg.data)
    model = make("model", cfg.model, input_shape=task.input_shape, num_outputs=task.num_outputs)
    # torch's BatchNorm updates running statistics in place, which torch.func.grad refuses.
    # Without them it normalises with batch statistics in training and test alike, as conv4's
    # norm and MAML's reference code do.
    torch.func.replace_all_batch_norm_modules_(model)
    model = model.to(device)
    algorithm = make(
        "algorithm", cfg.algorithm, model=model, loss_fn=task.loss, metric_fn=task.metric,
        inner=make("inner", cfg.inner), num_classes=getattr(task, "ways", None),
    )
    engine = Engine(choose_strategy(cfg.engine, model, device),
                    choose_compile(cfg.trainer.compile, device), cfg.trainer.amp)
    return Run(device, task, model, algorithm, engine)


def meta_parameters(run: Run) -> list[torch.nn.Parameter]:
    """What the outer optimizer trains: the model's weights and the algorithm's own."""
    return [*run.model.parameters(), *run.algorithm.learned.parameters()]


def load_weights(run: Run, state: dict) -> None:
    """The model's and the algorithm's weights from a checkpoint; RuntimeError if they differ
    from this run's."""
    run.model.load_state_dict(state["model"])
    run.algorithm.learned.load_state_dict(state["algorithm"])


def make_optimizer(cfg: DictConfig, run: Run) -> torch.optim.Optimizer:
    return make("outer", cfg.outer, params=meta_parameters(run))
