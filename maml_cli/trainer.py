"""The meta-training loop: sample a meta-batch, meta-loss, step; validate, log, checkpoint."""

from __future__ import annotations

import math
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from maml_cli import checkpoint
from maml_cli.build import Run, make_optimizer
from maml_cli.errors import UserError
from maml_cli.evaluate import adaptation_curves, mean_ci95
from maml_cli.figures import sinusoid_fit
from maml_cli.tracking import Tracker, flatten, log, print_table, progress

# Validation tasks come from their own stream, fixed per run seed, so every validation of a run
# sees the same tasks and never the training stream's.
VAL_SEED_OFFSET = 7_919


@contextmanager
def stop_requests():
    """SIGINT / SIGTERM set a flag (the signal number) instead of killing the loop mid-step,
    so the current iteration finishes and a checkpoint is written before exiting."""
    requested: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield requested  # signal handlers can only be set from the main thread
        return
    previous = {s: signal.signal(s, lambda signum, _: requested.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class Trainer:
    def __init__(self, cfg: DictConfig, run: Run, run_dir: Path, resume: dict | None = None):
        self.cfg, self.run, self.run_dir = cfg, run, run_dir
        self.optimizer = make_optimizer(cfg, run.model)
        self.generator = torch.Generator(run.device).manual_seed(cfg.seed)
        self.iteration, self.best, self.untrained = 0, None, None
        if resume is not None:
            self._restore(resume)

    def _restore(self, state: dict) -> None:
        try:
            self.run.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(f"checkpoint does not fit this model/optimizer: "
                            f"{str(e).splitlines()[0]}") from None
        torch.set_rng_state(state["rng"]["torch"])
        self.generator.set_state(state["rng"]["sampler"])
        self.iteration, self.best = state["iteration"], state["best"]
        log.info("resumed at iteration %d (best val %s so far: %s)", self.iteration,
                 self.run.task.metric_name, self.best)

    def state(self) -> dict:
        return {
            "iteration": self.iteration,
            "model": self.run.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "sampler": self.generator.get_state()},
            "best": self.best,
            "metric": self.run.task.metric_name,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }

    def save(self, *names: str) -> None:
        state = self.state()
        for name in names:
            checkpoint.save(self.run_dir / "checkpoints" / name, state)

    def validate(self, tracker: Tracker) -> float:
        cfg, name = self.cfg, self.run.task.metric_name
        curves = adaptation_curves(self.run, "val", cfg.trainer.val_tasks, cfg.inner.eval_steps,
                                   cfg.seed + VAL_SEED_OFFSET, cfg.eval.batch_size)
        before, _ = mean_ci95(curves[:, 0])
        after, ci = mean_ci95(curves[:, -1])
        tracker.scalars(self.iteration, {f"val/{name}_pre": before, f"val/{name}": after})
        figure = sinusoid_fit(self.run, cfg.seed + VAL_SEED_OFFSET, (1, cfg.inner.eval_steps))
        if figure is not None:
            tracker.figure("val/fit", figure, self.iteration)
        improved = self.run.task.better(after, self.best)
        if improved:
            self.best = after
            self.save("best.pt")
        log.info("iteration %d: val %s %.4f before adaptation, %.4f ± %.4f after %d steps%s",
                 self.iteration, name, before, after, ci, cfg.inner.eval_steps,
                 " (best)" if improved else "")
        return after

    def fit(self) -> float:
        cfg, run = self.cfg, self.run
        tc, name = cfg.trainer, run.task.metric_name
        params, buffers = dict(run.model.named_parameters()), dict(run.model.named_buffers())
        started, sums, window_start, window_iters = time.perf_counter(), {}, time.perf_counter(), 0
        last: dict[str, float] = {}
        # The tracker closes (flushing its events) on every way out, errors and signals too.
        with Tracker(self.run_dir / "tb") as tracker, progress("meta-train") as bar, \
                stop_requests() as stop:
            task = bar.add_task("train", total=tc.iterations, completed=self.iteration, status="")
            if tc.val_every and self.iteration == 0:
                self.untrained = self.validate(tracker)
            while self.iteration < tc.iterations:
                self.iteration += 1
                episode = run.task.sample("train", tc.meta_batch_size, self.generator)
                loss, metrics = run.engine.meta_loss(run.algorithm, params, buffers, episode,
                                                     cfg.inner.steps)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                # Summed on the device; read back (a sync) only once per log window.
                sums = {k: sums.get(k, 0) + v for k, v in metrics.items()}
                window_iters += 1
                final = self.iteration == tc.iterations
                if self.iteration % tc.log_every == 0 or final:
                    last = {k: (v / window_iters).item() for k, v in sums.items()}
                    self._check_finite(last)
                    elapsed = time.perf_counter() - window_start
                    tracker.scalars(self.iteration, {
                        "train/query_loss_pre": last["loss_pre"],
                        "train/query_loss_post": last["loss_post"],
                        f"train/query_{name}_pre": last["metric_pre"],
                        f"train/query_{name}_post": last["metric_post"],
                        "perf/tasks_per_s": window_iters * tc.meta_batch_size / elapsed,
                        "lr/outer": self.optimizer.param_groups[0]["lr"],
                        "lr/inner": cfg.inner.lr,
                    })
                    bar.update(task, completed=self.iteration,
                               status=f"loss {last['loss_pre']:.3f} -> {last['loss_post']:.3f}")
                    sums, window_start, window_iters = {}, time.perf_counter(), 0
                if tc.val_every and (self.iteration % tc.val_every == 0 or final):
                    self.validate(tracker)
                if tc.checkpoint_every and self.iteration % tc.checkpoint_every == 0:
                    self.save(f"iter_{self.iteration:07d}.pt", "last.pt")
                if stop:
                    self._stop(stop[0])
            self.save("last.pt")
            result = self.best if self.best is not None else last.get("loss_post", math.nan)
            tracker.hparams(flatten(OmegaConf.to_container(cfg, resolve=True)),
                            {f"hparam/val_{name}_best": result,
                             "hparam/train_query_loss_post": last.get("loss_post", math.nan)})
        self._summary(time.perf_counter() - started, last)
        return result

    def _stop(self, signum: int) -> None:
        self.save("last.pt")
        log.warning("stopped by %s after iteration %d; checkpoint %s; continue with: "
                    "maml-train resume=%s", signal.Signals(signum).name, self.iteration,
                    self.run_dir / "checkpoints" / "last.pt", self.run_dir)
        raise SystemExit(128 + signum)

    def _check_finite(self, values: dict[str, float]) -> None:
        if not all(math.isfinite(v) for v in values.values()):
            raise UserError(
                f"the meta-loss became NaN or infinite by iteration {self.iteration} "
                f"(learning rate too large? inner.lr={self.cfg.inner.lr}, "
                f"outer.lr={self.cfg.outer.lr}); nothing from after it was checkpointed "
                f"(any checkpoints in {self.run_dir / 'checkpoints'} predate it)"
            )

    def _summary(self, seconds: float, last: dict[str, float]) -> None:
        name = self.run.task.metric_name
        rows = [["run dir", str(self.run_dir)], ["iterations", str(self.iteration)],
                ["wall time", f"{seconds:.1f} s"]]
        if last:
            rows.append([f"train query loss, 0 -> {self.cfg.inner.steps} steps (last window)",
                         f"{last['loss_pre']:.4f} -> {last['loss_post']:.4f}"])
        if self.best is not None:
            untrained = "" if self.untrained is None else f"untrained {self.untrained:.4f}, "
            rows.append([f"val {name} after {self.cfg.inner.eval_steps} steps",
                         f"{untrained}best {self.best:.4f}"])
        rows.append(["checkpoints", str(self.run_dir / "checkpoints")])
        print_table("maml-train", ["", ""], rows)
