"""maml-eval: adapt a checkpoint's meta-parameters on fresh test tasks and report mean ± 95% CI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from maml_cli import checkpoint, distributed, files
from maml_cli.build import build
from maml_cli.cli import main_wrapper, reports_errors
from maml_cli.config import config_dir, from_checkpoint, register_configs
from maml_cli.errors import UserError
from maml_cli.evaluate import adaptation_curves, mean_ci95
from maml_cli.figures import adaptation_curves_plot, save_png, task_figure
from maml_cli.schemas import check_values
from maml_cli.tracking import log, print_table

register_configs()


@hydra.main(config_path=config_dir(), config_name="eval", version_base="1.3")
@reports_errors("maml-eval")
def main(cfg: DictConfig) -> dict:
    if not cfg.checkpoint:
        raise UserError("checkpoint=<checkpoint file or run dir> is required")
    path = checkpoint.locate(cfg.checkpoint, prefer="best.pt")
    state = checkpoint.load(path)
    compared = [compared_report(c) for c in cfg.compare]
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("compare=")]
    run_cfg = from_checkpoint(state["config"], cfg, overrides)
    check_values(run_cfg)
    run = build(run_cfg)
    try:
        checkpoint.load_weights(run, state)
    except RuntimeError as e:
        raise UserError(f"{path} does not fit its own config's model: "
                        f"{str(e).splitlines()[0]}") from None

    ev, steps, (name, *extra) = run.eval, run.engine.eval_steps, run.task.metric_names
    log.info("evaluating %s (iteration %d) on %d test tasks", path, state["iteration"], ev.tasks)
    group = distributed.group()
    start = time.perf_counter()
    curves = adaptation_curves(run, "test", ev.tasks, ev.seed, ev.batch_size, group)
    tasks_per_s = ev.tasks / (time.perf_counter() - start)
    by_metric = [[dict(zip(("steps", "mean", "ci95"), (s, *mean_ci95(curves[:, s, m]))))
                  for s in range(steps + 1)] for m in range(1 + len(extra))]
    results = by_metric[0]
    report = {
        "checkpoint": str(path), "iteration": state["iteration"], "label": label(run, path),
        "metric": name, "split": "test", "tasks": ev.tasks, "seed": ev.seed,
        "transductive": ev.transductive, "results": results,
        # Sampling, adaptation and metrics of every test task, over the wall time they took.
        "tasks_per_s": tasks_per_s,
    }
    if extra:  # the task's other metrics, on the same tasks
        report["extra_metrics"] = dict(zip(extra, by_metric[1:]))
    if not group.main:  # under torchrun, rank 0 reports for all
        return report
    files.write_json(path.parent / "eval.json", report, indent=2)
    figure = task_figure(run, ev.seed, (1, steps))
    if figure is not None:
        save_png(figure[1], path.parent / f"eval_{figure[0]}.png")
    save_png(adaptation_curves_plot([report, *compared]), path.parent / "eval_curve.png")
    print_table(f"test {name}, {ev.tasks} tasks",
                ["inner steps", *(f"{n} (mean ± 95% CI)" for n in (name, *extra))],
                [[str(s), *(f"{rows[s]['mean']:.4f} ± {rows[s]['ci95']:.4f}" for rows in by_metric)]
                 for s in range(steps + 1)])
    log.info("wrote %s (%.1f tasks adapted and scored per second)", path.parent / "eval.json",
             tasks_per_s)
    return report


def label(run, path) -> str:
    """What a curve is called in eval_curve.png: the algorithm's class and its run."""
    return f"{type(run.algorithm).__name__} ({path.parent.parent.name}/{path.name})"


def compared_report(where: str) -> dict:
    """The eval.json of an earlier maml-eval: a file, or the one beside a run dir's checkpoint."""
    path = Path(where).expanduser()
    if path.is_dir():
        path = checkpoint.locate(path, prefer="best.pt").parent / "eval.json"
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"compare: cannot read {path} ({type(e).__name__}); run maml-eval on "
                        f"that run first") from None
    if not isinstance(report, dict) or not {"results", "metric", "tasks"} <= set(report):
        raise UserError(f"compare: {path} is not a maml-eval report")
    report.setdefault("label", path.parent.parent.name)
    return report


cli = main_wrapper("maml-eval", main, run_dirs=False)

if __name__ == "__main__":
    cli()
