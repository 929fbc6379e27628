"""The config's schema, in one place: typed structured configs that Hydra checks every composed
config against (`task.shots=abc` or a misspelt key fails at composition, before anything runs),
and the value rules checked before any work starts.

The run-level keys (seed, engine, device, data, trainer, eval) have their defaults here. A config
group's options have their values in their YAML only (configs/<group>/<option>.yaml lists its
schema first in its defaults: `- /schema_task_sinusoid@_here_`); here they have types only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from maml_cli.algorithms.maml import ADAPT, HEAD_INITS, LR_MODES
from maml_cli.engine import AMP_DTYPES, STRATEGIES
from maml_cli.errors import UserError
from maml_cli.tasks.images import AUGMENTS


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
    eval_shots: int | None = MISSING
    eval_queries: int | None = MISSING
    loss_scale: float = MISSING
    augment: list[str] = MISSING


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
class ResizedImageTaskConfig(ImageTaskConfig):  # mini-ImageNet, CUB
    image_size: int = MISSING


@dataclass
class FolderConfig(ImageTaskConfig):
    path: str = MISSING
    image_size: int | None = MISSING
    channels: int | None = MISSING
    split_file: str | None = MISSING


@dataclass
class EntityTaskConfig(TaskConfig):  # a task per entity of a table: table, movielens
    queries: int | None = MISSING  # null: all the entity's other rows, at most max_queries
    max_queries: int = MISSING
    split_file: str | None = MISSING


@dataclass
class TableConfig(EntityTaskConfig):
    path: str = MISSING
    group: str = MISSING
    target: str = MISSING
    features: list[str] = MISSING
    categorical: list[str] = MISSING
    objective: str = MISSING


@dataclass
class MovieLensConfig(EntityTaskConfig):
    variant: str = MISSING


@dataclass
class RLTaskConfig(TaskConfig):
    horizon: int = MISSING
    discount: float = MISSING


@dataclass
class Navigation2DConfig(RLTaskConfig):
    goal_range: list[float] = MISSING
    max_step: float = MISSING
    tolerance: float = MISSING
    scale_actions: bool = MISSING


@dataclass
class HalfCheetahConfig(RLTaskConfig):
    ctrl_cost: float = MISSING


@dataclass
class HalfCheetahVelocityConfig(HalfCheetahConfig):
    goal_range: list[float] = MISSING


@dataclass
class MLPConfig(Target):
    hidden: list[int] = MISSING


@dataclass
class GaussianMLPConfig(MLPConfig):
    init_std: float = MISSING


@dataclass
class EmbeddingMLPConfig(MLPConfig):
    embedding_dim: int = MISSING


@dataclass
class Conv4Config(Target):
    filters: int = MISSING
    downsample: str = MISSING
    norm: str = MISSING
    norm_eps: float = MISSING
    spatial_mean: bool = MISSING
    init: str = MISSING
    downsample_blocks: int = MISSING


@dataclass
class ResNet12Config(Target):
    channels: list[int] = MISSING


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
    keep_inner_state: bool = MISSING


@dataclass
class RelationNetConfig(Target):
    filters: int = MISSING
    hidden: int = MISSING


@dataclass
class InnerConfig(Target):
    lr: float = MISSING
    steps: int = MISSING
    eval_steps: int = MISSING
    later_lr: float | None = MISSING


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
    fused: bool | None = None


@dataclass
class AdamConfig(OptimizerConfig):
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class SGDConfig(OptimizerConfig):
    momentum: float = 0.0
    nesterov: bool = False


@dataclass
class TRPOConfig(Target):
    lr: float = MISSING  # the fraction of the full trust-region step tried first
    max_kl: float = MISSING
    damping: float = MISSING
    cg_iters: int = MISSING
    backtrack: float = MISSING
    line_search_steps: int = MISSING


SCHEMAS = {
    "task": {"sinusoid": SinusoidConfig, "omniglot": OmniglotConfig, "mnist": MNISTConfig,
             "miniimagenet": ResizedImageTaskConfig, "folder": FolderConfig,
             "cifar_fs": ImageTaskConfig, "fc100": ImageTaskConfig, "cub": ResizedImageTaskConfig,
             "tiered_imagenet": ImageTaskConfig, "table": TableConfig,
             "movielens": MovieLensConfig,
             "navigation2d": Navigation2DConfig,
             "halfcheetah_vel": HalfCheetahVelocityConfig, "halfcheetah_dir": HalfCheetahConfig},
    "model": {"mlp": MLPConfig, "conv4": Conv4Config, "resnet12": ResNet12Config,
              "gaussian_mlp": GaussianMLPConfig, "embedding_mlp": EmbeddingMLPConfig},
    "algorithm": {"maml": MAMLConfig, "reptile": ReptileConfig,
                  "pretrain": Target, "protonet": Target, "relationnet": RelationNetConfig},
    "inner": {"sgd": InnerConfig, "adam": InnerAdamConfig},
    "outer": {"adam": AdamConfig, "sgd": SGDConfig, "trpo": TRPOConfig},
}


# Run-level keys: their defaults are written here only (train.yaml and eval.yaml do not repeat
# them); `maml-train --cfg job` prints them composed.
@dataclass
class TrainerConfig:
    iterations: int = 15000
    # End this process after that iteration (last.pt written, exit 0); resume= goes on to
    # `iterations` on the same schedule. Taken from each command, never from a checkpoint.
    stop_after: int | None = None
    meta_batch_size: int = 25
    val_every: int = 1000  # 0: no validation
    val_tasks: int = 200
    # A validation also logs the task's figure (sinusoid fit, navigation paths) once this many
    # iterations have passed since the last one (0: never): drawing and encoding one took
    # 60-80 ms on a 2-core CPU, a dozen iterations of the default run.
    figure_every: int = 5000
    checkpoint_every: int = 0  # also write checkpoints/iter_<n>.pt every n iterations (0: never)
    keep_last: int = 0  # keep only the newest n iter_*.pt (0: all); last.pt, best.pt stay
    log_every: int = 50
    # stop: a NaN/inf meta-loss or meta-gradient stops the run; skip: drops that meta-batch.
    nan_policy: str = "stop"
    # The outer learning rate: constant, or cosine / linear annealing down to min_lr at the
    # last iteration, or step: times lr_decay every lr_decay_every iterations (towards min_lr).
    lr_schedule: str = "constant"
    min_lr: float = 0.0
    lr_decay_every: int | None = None
    lr_decay: float = 0.5
    # Speed switches (docs/performance.md has the measurements). compile: torch.compile the
    # meta-batch, 1.8-3.3x faster per iteration after 30 s to minutes of compiling; auto: on
    # CUDA, and on the CPU once the first iterations show the run long enough to repay it.
    # amp: bf16 autocast, at best 8% faster and its second-order meta-gradients are far from
    # exact, so off (null).
    compile: Any = "auto"
    amp: str | None = None
    # cuda_graphs: on CUDA, a compiled meta-iteration that is one graph (Engine.meta_step) is
    # captured as CUDA graphs and replayed (torch.compile's reduce-overhead mode).
    cuda_graphs: bool = True


@dataclass
class EvalConfig:
    tasks: int = 600
    seed: int = 1234
    batch_size: int = 100  # test tasks adapted at once; bounds memory
    # false: each query image is predicted in one batch with the support images alone, not with
    # the other queries, which a model with batch statistics (conv4, resnet12) would normalise
    # it with: the Reptile paper's non-transductive protocol. MAML-based algorithms only.
    transductive: bool = True


@dataclass
class DataConfig:
    # Holds one folder per dataset (omniglot/, mnist/, miniimagenet/).
    root: str = "${oc.env:MAML_DATA_ROOT,data}"
    download: bool = False
    # Preprocessed datasets are cached here, outside root, which may be read-only.
    cache_dir: str = "${oc.env:MAML_CACHE_DIR,'~/.cache/maml-cli'}"


@dataclass
class DeviceConfig:
    name: str = MISSING  # the device group's option sets it
    # CPU threads for torch (null: torch's default, one per core). Jobs that share a CPU,
    # such as parallel sweep jobs, run much faster with threads=1 each.
    threads: int | None = None


@dataclass
class RunConfig:
    seed: int = 0
    # How a meta-batch runs: vmap (all tasks batched), loop (one task after another), or auto.
    engine: str = "auto"
    task: Any = MISSING
    model: Any = MISSING
    algorithm: Any = MISSING
    inner: Any = MISSING
    outer: Any = MISSING
    device: DeviceConfig = field(default_factory=DeviceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


@dataclass
class TrainConfig(RunConfig):
    # Continue from a checkpoint file or a run dir (its checkpoints/last.pt); the run keeps that
    # checkpoint's config, with the keys given on this command line changed.
    resume: str | None = None


@dataclass
class EvalRunConfig(RunConfig):
    checkpoint: str | None = None
    # Other runs (dirs or eval.json files) evaluated before, drawn beside this one in
    # eval_curve.png: e.g. the pretrained baseline beside MAML.
    compare: list[str] = field(default_factory=list)


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalRunConfig)
    for group, options in SCHEMAS.items():
        for name, node in options.items():
            # Top-level names, not a schema/ group: a group would be offered to users by
            # --help and shell completion as if it were a choice of theirs.
            cs.store(name=f"schema_{group}_{name}", node=node)


ENGINES = ("auto", *STRATEGIES)
DEVICES = ("auto", "cpu", "cuda", "mps")
SCHEDULES = ("constant", "cosine", "linear", "step")


def at_least(n: int) -> tuple[str, Callable[[Any], bool]]:
    return f">= {n}", lambda v: v >= n


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


# (key, allowed range as the user reads it, check). Keys missing from a config are skipped,
# so task- or model-specific rules can live here too.
RULES: list[tuple[str, str, Callable[[Any], bool]]] = [
    ("seed", *at_least(0)),
    ("engine", f"one of {', '.join(ENGINES)}", lambda v: v in ENGINES),
    ("device.name", f"one of {', '.join(DEVICES)}", lambda v: v in DEVICES),
    ("device.threads", ">= 1, or null for torch's default", lambda v: v >= 1),
    ("inner.lr", "> 0", _positive),
    ("inner.later_lr", "> 0, or null for inner.lr", _positive),
    ("inner.steps", *at_least(0)),
    ("inner.eval_steps", *at_least(0)),
    ("outer.lr", "> 0", _positive),
    ("outer.max_kl", "> 0", _positive),
    ("outer.damping", *at_least(0)),
    ("outer.cg_iters", *at_least(1)),
    ("outer.backtrack", "in (0, 1)", lambda v: 0 < v < 1),
    ("outer.line_search_steps", *at_least(1)),
    ("trainer.iterations", *at_least(0)),
    ("trainer.meta_batch_size", *at_least(1)),
    ("trainer.stop_after", ">= 1, or null for trainer.iterations", lambda v: v >= 1),
    ("trainer.val_every", ">= 0 (0 disables validation)", lambda v: v >= 0),
    ("trainer.val_tasks", *at_least(1)),
    ("trainer.figure_every", ">= 0 (0: no figures)", lambda v: v >= 0),
    ("trainer.checkpoint_every", ">= 0 (0: only last.pt and best.pt)", lambda v: v >= 0),
    ("trainer.keep_last", ">= 0 (0 keeps every iter_*.pt)", lambda v: v >= 0),
    ("trainer.log_every", *at_least(1)),
    ("trainer.nan_policy", "stop or skip", lambda v: v in ("stop", "skip")),
    ("trainer.lr_schedule", f"one of {', '.join(SCHEDULES)}", lambda v: v in SCHEDULES),
    ("trainer.min_lr", *at_least(0)),
    ("trainer.lr_decay_every", ">= 1, or null (trainer.lr_schedule=step needs it)",
     lambda v: v >= 1),
    ("trainer.lr_decay", "in (0, 1)", lambda v: 0 < v < 1),
    ("trainer.compile", "true, false or auto", lambda v: v in (True, False, "auto")),
    ("trainer.amp", "bf16, or null for float32", lambda v: v in AMP_DTYPES),
    ("algorithm.adapt", f"one of {', '.join(ADAPT)}", lambda v: v in ADAPT),
    ("algorithm.lr_mode", f"one of {', '.join(LR_MODES)}", lambda v: v in LR_MODES),
    ("algorithm.head_init", f"one of {', '.join(HEAD_INITS)}", lambda v: v in HEAD_INITS),
    ("algorithm.first_order_until", *at_least(0)),
    ("algorithm.msl_iterations", *at_least(0)),
    ("algorithm.inner_batch_size", ">= 1, or null for the whole support set", lambda v: v >= 1),
    ("algorithm.filters", *at_least(1)),
    ("algorithm.hidden", *at_least(1)),
    ("inner.betas", "two numbers in [0, 1)", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v)),
    ("inner.eps", "> 0", _positive),
    ("eval.tasks", ">= 2 (a confidence interval needs two)", lambda v: v >= 2),
    ("eval.batch_size", *at_least(1)),
    ("task.shots", *at_least(1)),
    ("task.queries", ">= 1 (task=table, movielens: or null for all the entity's other rows)",
     lambda v: v >= 1),
    ("task.max_queries", *at_least(1)),
    ("task.ways", *at_least(2)),
    ("task.eval_shots", ">= 1, or null for task.shots", lambda v: v >= 1),
    ("task.eval_queries", ">= 1, or null for task.queries", lambda v: v >= 1),
    ("task.image_size", *at_least(8)),
    ("task.augment", f"a list of {', '.join(AUGMENTS)}", lambda v: all(t in AUGMENTS for t in v)),
    ("task.channels", "1 or 3, or null to infer it from the images", lambda v: v in (1, 3)),
    ("task.horizon", *at_least(1)),
    ("task.discount", "in [0, 1]", lambda v: 0 <= v <= 1),
    ("task.max_step", "> 0", _positive),
    ("task.tolerance", *at_least(0)),
    ("task.ctrl_cost", *at_least(0)),
    ("task.goal_range", "two numbers, low < high", lambda v: len(v) == 2 and v[0] < v[1]),
    ("model.init_std", "> 0", _positive),
]


def check_values(cfg: DictConfig) -> None:
    """Raise UserError naming the first key that has no value (`???` in its YAML, as
    task.path of task=folder) or whose value is out of range."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UserError(f"{missing[0]} needs a value: add {missing[0]}=... to the command")
    for key, allowed, ok in RULES:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not ok(value):
            raise UserError(f"{key} must be {allowed} (got {value!r})")
    if (OmegaConf.select(cfg, "trainer.lr_schedule") == "step"
            and OmegaConf.select(cfg, "trainer.lr_decay_every") is None):
        raise UserError("trainer.lr_schedule=step needs trainer.lr_decay_every=N (the outer rate "
                        "is multiplied by trainer.lr_decay every N iterations)")
