"""maml-train: meta-train from the Hydra config tree in configs/."""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from maml_cli import checkpoint, distributed, jobs
from maml_cli.build import build
from maml_cli.cli import main_wrapper, reports_errors, stop_requests
from maml_cli.config import config_dir, from_checkpoint, register_configs
from maml_cli.errors import UserError
from maml_cli.schemas import check_values
from maml_cli.trainer import Trainer

register_configs()


@hydra.main(config_path=config_dir(), config_name="train", version_base="1.3")
@reports_errors("maml-train")
def main(cfg: DictConfig) -> float:
    """Returns the best validation metric, the value Hydra's sweepers optimise."""
    # Signals are caught from here on: one that comes while the data loads or the model
    # builds stops the run before its first step (under torchrun, on every rank together).
    with stop_requests() as stop:
        return _train(cfg, stop)


def _train(cfg: DictConfig, stop: list[int]) -> float:
    hydra_cfg = HydraConfig.get()
    resume = None
    if cfg.resume:
        path = checkpoint.locate(cfg.resume, prefer="last.pt")
        resume = checkpoint.load(path)
        if "optimizer" not in resume:
            raise UserError(f"{path} holds weights only (no optimizer or random state), so it "
                            "can be evaluated with maml-eval but not continued; resume= needs a "
                            "run's own checkpoint")
        cfg = from_checkpoint(resume["config"], cfg, list(hydra_cfg.overrides.task))
    if cfg.device.threads is None:
        cfg.device.threads = jobs.cpu_share()
    check_values(cfg)
    world = distributed.group().world
    if cfg.trainer.meta_batch_size < world:
        raise UserError(f"trainer.meta_batch_size={cfg.trainer.meta_batch_size} must be at "
                        f"least the {world} processes sharing each meta-batch")
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if any((run_dir / "checkpoints").glob("*.pt")):
        raise UserError(f"{run_dir} already holds an earlier run's checkpoints; give this run "
                        f"its own hydra.run.dir (or continue that run: resume={run_dir})")
    # The effective config (after resume) beside Hydra's own record of what was composed.
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    run = build(cfg)
    if world > 1 and getattr(run.optimizer, "needs_closure", False):
        raise UserError("outer=trpo runs in one process (its line search evaluates the whole "
                        "meta-batch again); run it without torchrun")
    return Trainer(run, run_dir, resume).fit(stop)


cli = main_wrapper("maml-train", main)

if __name__ == "__main__":
    cli()
