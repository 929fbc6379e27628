"""Structured configs: the schema Hydra type-checks every composed config against,
and the value rules that are checked before any work starts."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from maml_cli import schemas
from maml_cli.algorithms.maml import ADAPT, HEAD_INITS, LR_MODES
from maml_cli.engine import AMP_DTYPES, STRATEGIES
from maml_cli.errors import UserError


def config_dir() -> str:
    """The configs/ tree: inside the package when installed from a wheel, else the repo's."""
    packaged = Path(__file__).parent / "configs"
    return str(packaged if packaged.is_dir() else Path(__file__).parents[1] / "configs")


@dataclass
class TrainerConfig:
    iterations: int = 15000
    # End this process after that iteration (last.pt written, exit 0); resume= goes on to
    # `iterations` on the same schedule. Taken from each command, never from a checkpoint.
    stop_after: int | None = None
    meta_batch_size: int = 25
    val_every: int = 1000
    val_tasks: int = 200
    checkpoint_every: int = 0  # 0: only last.pt and best.pt
    keep_last: int = 0  # iter_*.pt checkpoints kept (the newest); 0 keeps all
    log_every: int = 50
    nan_policy: str = "stop"  # stop | skip: what a NaN/inf meta-loss or meta-gradient does
    lr_schedule: str = "constant"  # constant | cosine | linear: the outer learning rate's
    min_lr: float = 0.0  # ... annealed to this by the last iteration
    compile: Any = "auto"  # true | false | auto (on CUDA): torch.compile the meta-batch
    amp: str | None = None  # bf16: that forward under autocast; null: float32


@dataclass
class EvalConfig:
    tasks: int = 600
    seed: int = 1234
    batch_size: int = 100  # test tasks adapted at once; bounds memory


@dataclass
class DataConfig:
    # Holds one folder per dataset (omniglot/, mnist/, miniimagenet/).
    root: str = "${oc.env:MAML_DATA_ROOT,data}"
    download: bool = False
    # Preprocessed datasets are cached here, outside root, which may be read-only.
    cache_dir: str = "${oc.env:MAML_CACHE_DIR,'~/.cache/maml-cli'}"


@dataclass
class DeviceConfig:
    name: str = "auto"
    # CPU threads for torch (null: torch's default, one per core). Jobs that share a CPU,
    # such as parallel sweep jobs, run much faster with threads=1 each.
    threads: int | None = None


@dataclass
class RunConfig:
    seed: int = 0
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
    resume: str | None = None


@dataclass
class EvalRunConfig(RunConfig):
    checkpoint: str | None = None
    # Other runs (dirs or eval.json files) evaluated before, drawn beside this one in
    # eval_curve.png: e.g. the pretrained baseline beside MAML.
    compare: list[str] = field(default_factory=list)


def group_options() -> str:
    """The help's list of config groups and their options: the configs/ folders only, not the
    schemas registered beside them (schema/...), which are no choice of the user's."""
    root = Path(config_dir())
    return "\n".join(f"{group}: {', '.join(sorted(p.stem for p in (root / group).glob('*.yaml')))}"
                     for group in config_groups())


def register_configs() -> None:
    if not OmegaConf.has_resolver("maml_groups"):
        OmegaConf.register_new_resolver("maml_groups", group_options)
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalRunConfig)
    schemas.register()


ENGINES = ("auto", *STRATEGIES)
DEVICES = ("auto", "cpu", "cuda", "mps")
SCHEDULES = ("constant", "cosine", "linear")


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


# (key, allowed range as the user reads it, check). Keys missing from a config are skipped,
# so task- or model-specific rules can live here too.
RULES: list[tuple[str, str, Callable[[Any], bool]]] = [
    ("seed", ">= 0", lambda v: v >= 0),
    ("engine", f"one of {', '.join(ENGINES)}", lambda v: v in ENGINES),
    ("device.name", f"one of {', '.join(DEVICES)}", lambda v: v in DEVICES),
    ("device.threads", ">= 1, or null for torch's default", lambda v: v >= 1),
    ("inner.lr", "> 0", _positive),
    ("inner.steps", ">= 0", lambda v: v >= 0),
    ("inner.eval_steps", ">= 0", lambda v: v >= 0),
    ("outer.lr", "> 0", _positive),
    ("trainer.iterations", ">= 0", lambda v: v >= 0),
    ("trainer.meta_batch_size", ">= 1", lambda v: v >= 1),
    ("trainer.stop_after", ">= 1, or null for trainer.iterations", lambda v: v >= 1),
    ("trainer.val_every", ">= 0 (0 disables validation)", lambda v: v >= 0),
    ("trainer.val_tasks", ">= 1", lambda v: v >= 1),
    ("trainer.checkpoint_every", ">= 0 (0: only last.pt and best.pt)", lambda v: v >= 0),
    ("trainer.keep_last", ">= 0 (0 keeps every iter_*.pt)", lambda v: v >= 0),
    ("trainer.log_every", ">= 1", lambda v: v >= 1),
    ("trainer.nan_policy", "stop or skip", lambda v: v in ("stop", "skip")),
    ("trainer.lr_schedule", f"one of {', '.join(SCHEDULES)}", lambda v: v in SCHEDULES),
    ("trainer.min_lr", ">= 0", lambda v: v >= 0),
    ("trainer.compile", "true, false or auto", lambda v: v in (True, False, "auto")),
    ("trainer.amp", "bf16, or null for float32", lambda v: v in AMP_DTYPES),
    ("algorithm.adapt", f"one of {', '.join(ADAPT)}", lambda v: v in ADAPT),
    ("algorithm.lr_mode", f"one of {', '.join(LR_MODES)}", lambda v: v in LR_MODES),
    ("algorithm.head_init", f"one of {', '.join(HEAD_INITS)}", lambda v: v in HEAD_INITS),
    ("algorithm.first_order_until", ">= 0", lambda v: v >= 0),
    ("algorithm.msl_iterations", ">= 0", lambda v: v >= 0),
    ("algorithm.inner_batch_size", ">= 1, or null for the whole support set", lambda v: v >= 1),
    ("inner.betas", "two numbers in [0, 1)", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v)),
    ("inner.eps", "> 0", _positive),
    ("eval.tasks", ">= 2 (a confidence interval needs two)", lambda v: v >= 2),
    ("eval.batch_size", ">= 1", lambda v: v >= 1),
    ("task.shots", ">= 1", lambda v: v >= 1),
    ("task.queries", ">= 1", lambda v: v >= 1),
    ("task.ways", ">= 2", lambda v: v >= 2),
    ("task.eval_queries", ">= 1, or null for task.queries", lambda v: v >= 1),
    ("task.image_size", ">= 8", lambda v: v >= 8),
]


def validate(cfg: DictConfig) -> None:
    """Raise UserError naming the first key whose value is out of range."""
    for key, allowed, ok in RULES:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not ok(value):
            raise UserError(f"{key} must be {allowed} (got {value!r})")


def config_groups() -> list[str]:
    """The config groups a user chooses from (`task=...`), Hydra's own excepted."""
    return sorted(p.name for p in Path(config_dir()).iterdir() if p.is_dir() and p.name != "hydra")


# Taken from the command being run, never from the checkpoint: they describe this machine,
# this evaluation and this process, not the experiment.
_FROM_COMMAND = ("device", "data", "eval", "trainer.stop_after")


def from_checkpoint(stored: dict, cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The config of a run continued or evaluated from a checkpoint: the checkpoint's own config,
    with the _FROM_COMMAND keys and the keys the user overrode on this command line taken
    from `cfg`."""
    merged = OmegaConf.create(stored)
    # Trainer keys added since the checkpoint was written take their defaults.
    merged.trainer = OmegaConf.merge(OmegaConf.structured(TrainerConfig), merged.trainer)
    for key in _FROM_COMMAND:
        OmegaConf.update(merged, key, OmegaConf.select(cfg, key), merge=False)
    groups = config_groups()
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    chosen = [o for o, k in zip(overrides, keys) if k in groups and k not in _FROM_COMMAND]
    if chosen:
        single = {k for k in keys if k not in groups}
        _same_experiment(merged, cfg, chosen, skip={*single, *_FROM_COMMAND, "resume"})
    for key in keys:
        if key not in groups and OmegaConf.select(cfg, key) is not None:
            OmegaConf.update(merged, key, OmegaConf.select(cfg, key), merge=False)
    OmegaConf.set_struct(merged, True)
    return merged


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        return {k: v for key, value in node.items()
                for k, v in _leaves(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def _same_experiment(stored: DictConfig, cfg: DictConfig, chosen: list[str],
                     skip: set[str]) -> None:
    """A continued run keeps its checkpoint's experiment: group choices on the command line (the
    user's original command, say) are accepted when they compose the same config, and refused
    naming the first key they would change. Keys set one by one on the command line, and keys
    added to maml-cli since the checkpoint was written, are not compared."""
    old = _leaves(OmegaConf.to_container(stored, resolve=True))
    new = _leaves(OmegaConf.to_container(cfg, resolve=True))
    for key, value in new.items():
        if key in old and old[key] != value and not any(
                key == s or key.startswith(f"{s}.") for s in skip):
            # The choice of the key's own group, else a preset (it sets keys of any group).
            choice = next((c for c in chosen if c.split("=")[0] == key.split(".")[0]),
                          next((c for c in chosen if c.lstrip("+~").split("=")[0] not in cfg),
                               chosen[0]))
            raise UserError(f"{choice} would change {key} from the checkpoint's {old[key]!r} to "
                            f"{value!r}: a continued run keeps its own config (change single "
                            f"keys, e.g. {key}=..., or start a new run)")
