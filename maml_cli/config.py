"""Composing the config: where the YAML tree is, which groups a user chooses from, and the
config of a run continued or evaluated from a checkpoint. The schema is in schemas.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def from_checkpoint(stored: dict, cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The config of a run continued or evaluated from a checkpoint: the checkpoint's own config,
    with the _FROM_COMMAND keys and the keys the user overrode on this command line taken
    from `cfg`."""
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
