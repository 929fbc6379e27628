"""The one boundary between the config and the run: build(cfg) makes every object a run needs,
each component by hydra.utils.instantiate from its group, and the typed settings the rest of
maml-cli reads. Nothing past this module reads the DictConfig."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from maml_cli.algorithms.base import Algorithm
from maml_cli.device import resolve_device
from maml_cli.engine import Engine
from maml_cli.errors import UserError
from maml_cli.schemas import SCHEMAS, EvalConfig, ImageTaskConfig, TrainerConfig
from maml_cli.tasks.base import DataPlace, TaskFamily


class OuterSchedule:
    """The outer learning rate of each iteration: constant, or annealed from the optimizer's own
    rate towards `min_lr` by a half cosine over the run (MAML++), a line over the run (Reptile),
    or steps: times `decay` every `decay_every` iterations (Prototypical and Relation Networks).
    A function of the iteration alone, so the iteration in a checkpoint is all it needs to
    resume exactly."""

    SHAPES = {"constant": lambda p: 1.0, "cosine": lambda p: 0.5 * (1 + math.cos(math.pi * p)),
              "linear": lambda p: 1 - p}

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: str, iterations: int,
                 min_lr: float, decay_every: int | None = None, decay: float = 0.5):
        if schedule == "step":
            self.shape = lambda done: decay ** (done // decay_every)
        else:
            shape = self.SHAPES[schedule]
            self.shape = lambda done: shape(min(done / max(iterations, 1), 1.0))
        self.optimizer = optimizer
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.floor = min_lr / self.base_lrs[0]

    def factor(self, done: int) -> float:
        """The factor after `done` finished iterations."""
        return self.floor + (1 - self.floor) * self.shape(done)

    def start(self, iteration: int) -> None:
        """Set the rate of iteration 1, 2, ..."""
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * self.factor(iteration - 1)


@dataclass
class Run:
    device: torch.device
    task: TaskFamily
    model: nn.Module
    algorithm: Algorithm
    engine: Engine
    optimizer: torch.optim.Optimizer  # the outer one
    schedule: OuterSchedule
    trainer: TrainerConfig
    eval: EvalConfig
    seed: int
    config: dict  # the resolved config, as checkpoints and hparams store it


def make(group: str, node: DictConfig, **kwargs):
    """instantiate(node), with failures reported as one line naming the config group. Lists and
    dicts of the config reach the constructor as plain Python ones: nothing past build() holds
    a piece of the DictConfig."""
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, UserError):
            raise e.__cause__ from None
        detail = " ".join(str(e.__cause__ or e).split())
        raise UserError(f"cannot build {group} from its config: {detail}") from None


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_model_fits(node: DictConfig, task: TaskFamily) -> None:
    """A model that does not fit the task, in one line naming both, before it is built (an
    image model's first convolution would fail on other inputs)."""
    try:
        model_class = get_class(node._target_)
    except Exception:  # make() reports an unloadable _target_ in its own words
        return
    name, task_name = model_class.__name__, type(task).__name__
    fits = ("gaussian_mlp" if task.needs_policy else "embedding_mlp" if task.categories else
            "conv4" if len(task.input_shape) == 3 else "mlp")
    if getattr(model_class, "takes_images", False) and len(task.input_shape) != 3:
        images = sorted(option for option, schema in SCHEMAS["task"].items()
                        if issubclass(schema, ImageTaskConfig))
        raise UserError(f"{name} is a model for image tasks (task={', '.join(images)}), and "
                        f"{task_name}'s inputs are not images (shape {list(task.input_shape)}): "
                        f"use model={fits}")
    takes_categories = getattr(model_class, "takes_categories", False)
    if takes_categories and task.categories is None:
        raise UserError(f"{name} is a model for table tasks (task=table); {task_name} needs "
                        f"model={fits}")
    if task.categories and not takes_categories:
        raise UserError(f"{task_name} has categorical inputs (task.categorical), which {name} "
                        f"would read as numbers: use model=embedding_mlp")
    if task.needs_policy != getattr(model_class, "is_policy", False):
        raise UserError(
            f"{task_name} is a reinforcement-learning task: it needs a policy "
            f"(model=gaussian_mlp), not {name}" if task.needs_policy else
            f"{name} is a policy, for reinforcement-learning tasks (task=navigation2d, "
            f"halfcheetah_vel, halfcheetah_dir); {task_name} needs model={fits}")


def build(cfg: DictConfig) -> Run:
    """Every object of the run `cfg` describes, its model initialised from `cfg.seed`."""
    seed_all(cfg.seed)
    device = resolve_device(cfg.device.name, cfg.device.threads)
    task = make("task", cfg.task, device=device,
                data=DataPlace(**OmegaConf.to_container(cfg.data, resolve=True)))
    check_model_fits(cfg.model, task)
    inputs = {"categories": task.categories} if task.categories else {}
    model = make("model", cfg.model, input_shape=task.input_shape, num_outputs=task.num_outputs,
                 **inputs)
    # torch's BatchNorm updates running statistics in place, which torch.func.grad refuses.
    # Without them it normalises with batch statistics in training and test alike, as conv4's
    # norm and MAML's reference code do.
    torch.func.replace_all_batch_norm_modules_(model)
    model = model.to(device)
    algorithm = make(
        "algorithm", cfg.algorithm, model=model, loss_fn=task.loss, metric_fn=task.metrics,
        inner=make("inner", cfg.inner), num_classes=getattr(task, "ways", None),
        data_fn=task.task_data, objective_fn=task.query_loss, kl_fn=task.kl,
    )
    # Eager until the trainer settles trainer.compile (evaluation never compiles).
    engine = Engine(algorithm, cfg.engine, amp=cfg.trainer.amp, task=task,
                    cuda_graphs=cfg.trainer.cuda_graphs)
    trainer = TrainerConfig(**OmegaConf.to_container(cfg.trainer, resolve=True))
    # The outer optimizer trains the model's weights and the algorithm's own.
    optimizer = make("outer", cfg.outer,
                     params=[*model.parameters(), *algorithm.learned.parameters()])
    if getattr(optimizer, "needs_closure", False) and (task.kl is None
                                                       or not hasattr(algorithm, "surrogate")):
        raise UserError("outer=trpo bounds the KL between policies: it needs an RL task "
                        "(task=navigation2d, halfcheetah_vel, halfcheetah_dir) and a MAML-based "
                        "algorithm")
    evaluation = EvalConfig(**OmegaConf.to_container(cfg.eval, resolve=True))
    if not evaluation.transductive and not hasattr(algorithm, "trajectory"):
        raise UserError("eval.transductive=false predicts each query image in one batch with "
                        "the support images: it needs a MAML-based algorithm (one with an inner "
                        "loop)")
    schedule = OuterSchedule(optimizer, trainer.lr_schedule, trainer.iterations, trainer.min_lr,
                             trainer.lr_decay_every, trainer.lr_decay)
    return Run(device, task, model, algorithm, engine, optimizer, schedule, trainer, evaluation,
               cfg.seed, OmegaConf.to_container(cfg, resolve=True))
