"""maml-eval: adapt a checkpoint's meta-parameters on fresh test tasks and report mean ± 95% CI."""

from __future__ import annotations

import json

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from maml_cli import checkpoint, distributed
from maml_cli.build import build, load_weights
from maml_cli.cli import main_wrapper, reports_errors
from maml_cli.config import config_dir, from_checkpoint, register_configs, validate
from maml_cli.errors import UserError
from maml_cli.evaluate import adaptation_curves, mean_ci95
from maml_cli.figures import save_png, sinusoid_fit
from maml_cli.tracking import log, print_table

register_configs()


@hydra.main(config_path=config_dir(), config_name="eval", version_base="1.3")
@reports_errors("maml-eval")
def main(cfg: DictConfig) -> dict:
    if not cfg.checkpoint:
        raise UserError("checkpoint=<checkpoint file or run dir> is required")
    path = checkpoint.locate(cfg.checkpoint, prefer="best.pt")
    state = checkpoint.load(path)
    run_cfg = from_checkpoint(state["config"], cfg, list(HydraConfig.get().overrides.task))
    validate(run_cfg)
    run = build(run_cfg)
    try:
        load_weights(run, state)
    except RuntimeError as e:
        raise UserError(f"{path} does not fit its own config's model: "
                        f"{str(e).splitlines()[0]}") from None

    ev, steps, name = run_cfg.eval, run_cfg.inner.eval_steps, run.task.metric_name
    log.info("evaluating %s (iteration %d) on %d test tasks", path, state["iteration"], ev.tasks)
    group = distributed.group()
    curves = adaptation_curves(run, "test", ev.tasks, steps, ev.seed, ev.batch_size, group)
    results = [dict(zip(("steps", "mean", "ci95"), (s, *mean_ci95(curves[:, s]))))
               for s in range(steps + 1)]
    report = {
        "checkpoint": str(path), "iteration": state["iteration"], "metric": name,
        "split": "test", "tasks": ev.tasks, "seed": ev.seed, "results": results,
    }
    if not group.main:  # under torchrun, rank 0 reports for all
        return report
    checkpoint.atomic_write(path.parent / "eval.json",
                            lambda f: f.write((json.dumps(report, indent=2) + "\n").encode()))
    figure = sinusoid_fit(run, ev.seed, (1, steps))
    if figure is not None:
        save_png(figure, path.parent / "eval_fit.png")
    print_table(f"test {name}, {ev.tasks} tasks", ["inner steps", f"{name} (mean ± 95% CI)"],
                [[str(r["steps"]), f"{r['mean']:.4f} ± {r['ci95']:.4f}"] for r in results])
    log.info("wrote %s", path.parent / "eval.json")
    return report


cli = main_wrapper("maml-eval", main, run_dirs=False)

if __name__ == "__main__":
    cli()
