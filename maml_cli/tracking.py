"""Where a run reports: TensorBoard event files (scalars, figures, hparams), metrics.json, the
rich console (progress and the closing summary), and the text log."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import get_console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from torch.utils.tensorboard import SummaryWriter

from maml_cli import distributed, files

if TYPE_CHECKING:
    from maml_cli.build import Run

log = logging.getLogger("maml_cli")


class Tracker:
    """TensorBoard writer for one run dir; with log_dir None it records nothing (the ranks
    other than 0 of a distributed run)."""

    def __init__(self, log_dir=None):
        self.writer = None if log_dir is None else SummaryWriter(str(log_dir))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.writer:
            return
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        # On disk at once (once per log window): a run killed without warning keeps every step
        # it logged, so its log and the resumed run's meet without a gap.
        self.writer.flush()

    def train_window(self, step: int, means: dict[str, float], run: Run, skipped: int) -> None:
        """A log window's training scalars: its mean query metrics (when any meta-batch of it
        counted), the rates and the skipped meta-batches."""
        metric = run.task.metric_name
        self.scalars(step, {
            "train/skipped_meta_batches": skipped,
            "lr/outer": run.optimizer.param_groups[0]["lr"],
            "lr/inner": float(run.algorithm.inner_lr()),
            **({} if not means else {
                "train/query_loss_pre": means["loss_pre"],
                "train/query_loss_post": means["loss_post"],
                f"train/query_{metric}_pre": means["metric_pre"],
                f"train/query_{metric}_post": means["metric_post"],
                "perf/tasks_per_s": means["tasks_per_s"]}),
            **({"perf/env_steps_per_s": means["env_steps_per_s"]}
               if "env_steps_per_s" in means else {}),
            # The outer optimizer's own (TRPO: its KL, line-search steps, surrogate gain).
            **{f"outer/{k}": v for k, v in means.items() if k not in METRICS + THROUGHPUT}})

    def figure(self, tag: str, figure, step: int) -> None:
        if self.writer:
            self.writer.add_figure(tag, figure, step)

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        if self.writer:  # run_name="." keeps the hparams summary in this run's own event dir
            self.writer.add_hparams(hparams, metrics, run_name=".")

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        if self.writer:
            self.writer.close()


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"a.b": scalar}; lists and None become strings (hparams need scalars)."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def progress(description: str, show: bool = True) -> Progress:
    console = get_console()
    return Progress(
        TextColumn(f"[bold]{description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=not (show and console.is_terminal),
    )


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    get_console().print(table)


# The algorithm's metrics of every meta-batch, and the window's throughputs; any other key of a
# window is the outer optimizer's own (TRPO's).
METRICS = ("loss_pre", "loss_post", "metric_pre", "metric_post")
THROUGHPUT = ("tasks_per_s", "env_steps_per_s")


class Window:
    """The training metrics of one log window: summed on the device, read back (a sync) only
    when the window closes, each averaged over the meta-batches that measured it (the metrics
    before adaptation come from the window's first meta-batch: Trainer._step). `env_steps`: RL
    tasks' count of environment steps simulated so far (training and validation), for a
    throughput in environment steps per second."""

    def __init__(self, env_steps=None):
        self.env_steps = env_steps
        self._start()

    def _start(self) -> None:
        self.sums, self.counts, self.iterations = {}, {}, 0
        self.started = time.perf_counter()
        self.steps_at_start = self.env_steps() if self.env_steps else 0

    def add(self, metrics: dict | None) -> None:
        if metrics is not None:  # None: a meta-batch skipped by nan_policy=skip
            for k, v in metrics.items():
                self.sums[k] = self.sums.get(k, 0) + v
                self.counts[k] = self.counts.get(k, 0) + 1
            self.iterations += 1

    @property
    def has_before(self) -> bool:
        """Whether a meta-batch of this window measured the metrics before adaptation."""
        return "loss_pre" in self.sums

    def close(self, group: distributed.Group, meta_batch_size: int) -> dict[str, float]:
        """The window's mean metrics over every rank, with tasks_per_s (and env_steps_per_s);
        {} when every meta-batch was skipped. The next window starts."""
        means, elapsed = {}, time.perf_counter() - self.started
        if self.iterations:
            means = {k: v / self.counts[k] for k, v in self.sums.items()}
            if group.world > 1:
                means = distributed.average_metrics(means, group.share(meta_batch_size))
            means = {k: v.item() for k, v in means.items()}
            means["tasks_per_s"] = self.iterations * meta_batch_size / elapsed
            if self.env_steps:
                means["env_steps_per_s"] = (self.env_steps() - self.steps_at_start) / elapsed
        self._start()
        return means


def sweep_result(tracker: Tracker, run: Run, best: float | None, last: dict[str, float]) -> float:
    """What sweepers optimise, also written as the run's hparams metric: the best validation
    metric, or the worst value there is when no validation gave a finite one, so that no search
    prefers this run."""
    result, task = best, run.task
    if best is None:
        result = -math.inf if task.higher_is_better else math.inf
        log.warning("no finite validation %s (trainer.val_every=%d): reporting %s to sweepers",
                    task.metric_name, run.trainer.val_every, result)
    tracker.hparams(flatten(run.config), {f"hparam/val_{task.metric_name}_best": result,
                                          "hparam/train_query_loss_post":
                                              last.get("loss_post", math.nan)})
    return result


def finish(run_dir: Path, metric: str, iterations: int, seconds: float, last: dict[str, float],
           untrained: float | None, best: float | None, skipped: int, result: float,
           steps: tuple[int, int]) -> None:
    """metrics.json (what sweep summaries read) and the console's closing table; `steps`: the
    inner steps in training and at validation."""
    last = {k: v for k, v in last.items() if k in METRICS}
    files.write_json(run_dir / "metrics.json", {
        "iterations": iterations, "wall_s": round(seconds, 1), f"val_{metric}_untrained": untrained,
        f"val_{metric}_best": best, **{f"train_query_{k}": v for k, v in last.items()},
        "skipped_meta_batches": skipped, "result": result})
    rows = [["run dir", str(run_dir)], ["iterations", str(iterations)],
            ["wall time", f"{seconds:.1f} s"]]
    if last:
        rows.append([f"train query loss, 0 -> {steps[0]} steps (last window)",
                     f"{last['loss_pre']:.4f} -> {last['loss_post']:.4f}"])
    if best is not None:
        before = "" if untrained is None else f"untrained {untrained:.4f}, "
        rows.append([f"val {metric} after {steps[1]} steps", f"{before}best {best:.4f}"])
    rows.append(["checkpoints", str(run_dir / "checkpoints")])
    print_table("maml-train", ["", ""], rows)
