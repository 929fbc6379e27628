"""Typed schemas of the config groups' options, so that Hydra type-checks `task.shots=abc` or a
misspelt key at composition, before anything runs. Each group option's YAML lists its schema
first in its defaults (`- /schema/task/sinusoid@_here_`); the values live in the YAML only."""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class Target:
    _target_: str = MISSING


@dataclass
class TaskConfig(Target):
    shots: int = MISSING
    queries: int = MISSING


@dataclass
class SinusoidConfig(TaskConfig):
    amplitude: list[float] = MISSING
    phase: list[float] = MISSING
    x_range: list[float] = MISSING


@dataclass
class ImageTaskConfig(TaskConfig):
    ways: int = MISSING
    eval_queries: int | None = MISSING
    loss_scale: float = MISSING


@dataclass
class OmniglotConfig(ImageTaskConfig):
    rotations: list[int] = MISSING
    image_size: int = MISSING


@dataclass
class MNISTConfig(ImageTaskConfig):
    train_classes: list[int] = MISSING
    val_classes: list[int] = MISSING
    test_classes: list[int] = MISSING
    rotations: list[int] = MISSING


@dataclass
class MiniImageNetConfig(ImageTaskConfig):
    image_size: int = MISSING


@dataclass
class MLPConfig(Target):
    hidden: list[int] = MISSING


@dataclass
class Conv4Config(Target):
    filters: int = MISSING
    downsample: str = MISSING
    norm: str = MISSING
    spatial_mean: bool = MISSING
    init: str = MISSING


@dataclass
class MAMLConfig(Target):
    first_order: bool = MISSING
    first_order_until: int = MISSING
    adapt: str = MISSING
    lr_mode: str = MISSING
    per_step_norm: bool = MISSING
    multi_step_loss: bool = MISSING
    msl_iterations: int = MISSING
    inner_batch_size: int | None = MISSING
    head_init: str = MISSING


@dataclass
class ReptileConfig(Target):
    inner_batch_size: int | None = MISSING


@dataclass
class InnerConfig(Target):
    lr: float = MISSING
    steps: int = MISSING
    eval_steps: int = MISSING


@dataclass
class InnerAdamConfig(InnerConfig):
    betas: list[float] = MISSING
    eps: float = MISSING


# Outer optimizers: the keys people tune, with torch's defaults, so `outer.weight_decay=1e-4`
# works without a `+` and a typo still fails.
@dataclass
class OptimizerConfig(Target):
    lr: float = MISSING
    weight_decay: float = 0.0


@dataclass
class AdamConfig(OptimizerConfig):
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class SGDConfig(OptimizerConfig):
    momentum: float = 0.0
    nesterov: bool = False


SCHEMAS = {
    "task": {"sinusoid": SinusoidConfig, "omniglot": OmniglotConfig, "mnist": MNISTConfig,
             "miniimagenet": MiniImageNetConfig},
    "model": {"mlp": MLPConfig, "conv4": Conv4Config},
    "algorithm": {"maml": MAMLConfig, "reptile": ReptileConfig,
                  "pretrain": Target, "protonet": Target},
    "inner": {"sgd": InnerConfig, "adam": InnerAdamConfig},
    "outer": {"adam": AdamConfig, "sgd": SGDConfig},
}


def register() -> None:
    cs = ConfigStore.instance()
    for group, options in SCHEMAS.items():
        for name, node in options.items():
            cs.store(group=f"schema/{group}", name=name, node=node)
