"""Composing the config: where the YAML tree is, which groups a user chooses from, and the
config of a run continued or evaluated from a checkpoint. The schema is in schemas.py."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from maml_cli import schemas
from maml_cli.errors import UserError


def config_dir() -> str:
    """The configs/ tree: inside the package when installed from a wheel, else the repo's."""
    packaged = Path(__file__).parent / "configs"
    return str(packaged if packaged.is_dir() else Path(__file__).parents[1] / "configs")


def group_options() -> str:
    """The help's list of config groups and their options: the configs/ folders (the hydra/
    folder excepted)."""
    root = Path(config_dir())
    return "\n".join(f"{group}: {', '.join(sorted(p.stem for p in (root / group).glob('*.yaml')))}"
                     for group in config_groups())


def register_configs() -> None:
    if not OmegaConf.has_resolver("maml_groups"):
        OmegaConf.register_new_resolver("maml_groups", group_options)
    schemas.register()


def config_groups() -> list[str]:
    """The config groups a user chooses from (`task=...`), Hydra's own excepted."""
    return sorted(p.name for p in Path(config_dir()).iterdir() if p.is_dir() and p.name != "hydra")


# Taken from the command being run, never from the checkpoint: they describe this machine,
# this evaluation and this process, not the experiment.
_FROM_COMMAND = ("device", "data", "eval", "trainer.stop_after")


# Set by split_onto_checkpoint() for the command being run: its overrides that from_checkpoint
# applies to the checkpoint's config, out of Hydra's sight.
onto_checkpoint: list[str] = []


def split_onto_checkpoint(argv: list[str]) -> tuple[list[str], list[str]]:
    """(Hydra's arguments, the rest) of a command run from a checkpoint (resume=..., checkpoint=
    ...): keys of a config group whose option the command does not choose (task.horizon=50) are
    the rest. Hydra would check them against the group's default option (sinusoid's config has
    no horizon); they belong to the checkpoint's own option, so from_checkpoint applies them
    there. Other commands, and sweeps, keep every argument for Hydra."""
    if "-m" in argv or "--multirun" in argv or not any(
            a.split("=", 1)[0] in ("resume", "checkpoint") and a.split("=", 1)[1:] != [""]
            for a in argv):
        return argv, []
    groups = config_groups()
    chosen = {a.split("=", 1)[0].lstrip("+~") for a in argv if "=" in a}
    rest = [a for a in argv if "=" in a and not a.startswith(("+", "~"))
            and "." in a.split("=", 1)[0] and a.split(".", 1)[0] in groups
            and a.split(".", 1)[0] not in chosen]
    return [a for a in argv if a not in rest], rest


def from_checkpoint(stored: dict, cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The config of a run continued or evaluated from a checkpoint: the checkpoint's own config,
    with the _FROM_COMMAND keys and the keys the user overrode on this command line taken
    from `cfg`, and the onto_checkpoint keys applied to it."""
    merged = OmegaConf.create(stored)
    # Trainer keys added since the checkpoint was written take their defaults.
    merged.trainer = OmegaConf.merge(OmegaConf.structured(schemas.TrainerConfig), merged.trainer)
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
    for override in onto_checkpoint:
        key = override.split("=", 1)[0]
        old = OmegaConf.select(merged, key, default=_ABSENT)
        if old is _ABSENT and not _added_since(merged, key):
            raise UserError(f"{key} is not a key of the checkpoint's {key.split('.')[0]} config")
        value = OmegaConf.select(OmegaConf.from_dotlist([override]), key)
        if old is not _ABSENT and not _same_kind(old, value):
            raise UserError(f"{override}: the checkpoint's {key} is {type(old).__name__} "
                            f"({old!r})")
        OmegaConf.update(merged, key, value, merge=False)
    OmegaConf.set_struct(merged, True)
    return merged


_ABSENT = object()


def _added_since(stored: DictConfig, key: str) -> bool:
    """Whether `key` (group.name) is an argument of the class the checkpoint's group builds:
    a key added to maml-cli after the checkpoint was written (task.eval_shots), which the
    class then takes at its default."""
    group, _, name = key.partition(".")
    target = OmegaConf.select(stored, f"{group}._target_")
    if target is None or "." in name:
        return False
    return name in inspect.signature(get_class(target)).parameters


def _same_kind(old: Any, value: Any) -> bool:
    """Whether an override's value may stand for a checkpoint's: the same type, a whole number
    for a float, or null on either side (the checkpoint's config carries no schema)."""
    if old is None or value is None:
        return True
    if isinstance(old, float) and not isinstance(value, bool):
        return isinstance(value, (int, float))
    return type(old) is type(value)


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
