"""The meta-training loop: sample a meta-batch, meta-loss, step; validate, log, checkpoint."""

from __future__ import annotations

import json
import math
import random
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from maml_cli import checkpoint, distributed
from maml_cli.build import Run, load_weights, make_optimizer, meta_parameters
from maml_cli.errors import UserError
from maml_cli.evaluate import adaptation_curves, mean_ci95
from maml_cli.figures import sinusoid_fit
from maml_cli.tracking import Tracker, flatten, log, print_table, progress

# Validation tasks come from their own stream, fixed per run seed, so every validation of a run
# sees the same tasks and never the training stream's.
VAL_SEED_OFFSET = 7_919
# Under trainer.nan_policy=skip, this many non-finite meta-batches in a row stop the run anyway:
# then the meta-parameters themselves are broken, and skipping would spin forever.
MAX_CONSECUTIVE_SKIPS = 20


def lr_factor(schedule: str, iterations: int, floor: float):
    """The outer learning rate's factor after t finished iterations: constant, or annealed from
    1 to `floor` (min_lr / lr) over the run by a half cosine (MAML++) or a line (Reptile)."""
    shapes = {"constant": lambda p: 1.0, "cosine": lambda p: 0.5 * (1 + math.cos(math.pi * p)),
              "linear": lambda p: 1 - p}
    shape = shapes[schedule]
    return lambda t: floor + (1 - floor) * shape(min(t / max(iterations, 1), 1.0))


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every random stream a run may draw from, in types a weights_only load accepts."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
        self.optimizer = make_optimizer(cfg, run)
        # The schedule is a function of the iteration alone, so the iteration in a checkpoint
        # is all the state it needs to resume exactly.
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.lr_factor = lr_factor(cfg.trainer.lr_schedule, cfg.trainer.iterations,
                                   cfg.trainer.min_lr / cfg.outer.lr)
        self.group = distributed.group()
        self.stopping = False  # all ranks agree on it (distributed.average)
        self.generator = torch.Generator(run.device).manual_seed(cfg.seed)
        self.iteration, self.best, self.untrained = 0, None, None
        self.skipped, self.consecutive_skips = 0, 0
        # Iteration of the first non-finite loss or gradient (0: none), kept on the device so
        # that checking costs no sync; it is read wherever the loop syncs anyway.
        self.first_bad = torch.zeros((), dtype=torch.long, device=run.device)
        if resume is not None:
            self._restore(resume)

    def _restore(self, state: dict) -> None:
        try:
            load_weights(self.run, state)
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(f"checkpoint does not fit this model/optimizer: "
                            f"{str(e).splitlines()[0]}") from None
        set_rng_state(state["rng"])
        self.generator.set_state(state["rng"]["sampler"])
        self.iteration, self.best = state["iteration"], state["best"]
        self.skipped = state["skipped"]
        log.info("resumed at iteration %d (best val %s so far: %s)", self.iteration,
                 self.run.task.metric_name, self.best)

    def state(self) -> dict:
        return {
            "iteration": self.iteration,
            "model": self.run.model.state_dict(),
            "algorithm": self.run.algorithm.learned.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": {**rng_state(), "sampler": self.generator.get_state()},
            "best": self.best,
            "skipped": self.skipped,
            "metric": self.run.task.metric_name,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }

    def save(self, *names: str) -> None:
        self._check_finite()
        if not self.group.main:
            return
        state, folder = self.state(), self.run_dir / "checkpoints"
        for name in names:
            try:
                checkpoint.save(folder / name, state)
            except OSError as e:
                raise UserError(f"cannot write checkpoint {folder / name}: {e.strerror or e} "
                                f"(disk full or not writable?); the checkpoints already in "
                                f"{folder} are intact") from None
        keep = self.cfg.trainer.keep_last
        if keep and any(n.startswith("iter_") for n in names):
            # Only after the new one is safely on disk; last.pt and best.pt are never rotated.
            for old in sorted(folder.glob("iter_*.pt"))[:-keep]:
                old.unlink()

    def validate(self, tracker: Tracker) -> float | None:
        """Rank 0 only: the others run on and wait for it at the next all_reduce."""
        if not self.group.main:
            return None
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
        weights = meta_parameters(run)
        started, sums, window_start, window_iters = time.perf_counter(), {}, time.perf_counter(), 0
        last: dict[str, float] = {}
        # The tracker closes (flushing its events) on every way out, errors and signals too.
        main = self.group.main
        with Tracker(self.run_dir / "tb" if main else None) as tracker, \
                progress("meta-train", show=main) as bar, stop_requests() as stop:
            task = bar.add_task("train", total=tc.iterations, completed=self.iteration, status="")
            if tc.val_every and self.iteration == 0:
                self.untrained = self.validate(tracker)
            if run.engine.compile:
                log.info("trainer.compile: the first iteration compiles the meta-batch (30 s "
                         "to minutes); trainer.compile=false skips that")
            # stop_after ends this process early; the schedule still spans tc.iterations.
            end = min(tc.iterations, tc.stop_after or tc.iterations)
            while self.iteration < end:
                self.iteration += 1
                metrics = self._step(params, buffers, weights, bool(stop))
                if metrics is not None:
                    # Summed on the device; read back (a sync) only once per log window.
                    sums = {k: sums.get(k, 0) + v for k, v in metrics.items()}
                    window_iters += 1
                # A process stopped early logs its last window but validates only on schedule,
                # so that its run is the uninterrupted run's prefix, best.pt included.
                final = self.iteration == tc.iterations
                if self.iteration % tc.log_every == 0 or self.iteration == end:
                    self._check_finite()
                    elapsed = time.perf_counter() - window_start
                    scalars = {"train/skipped_meta_batches": self.skipped,
                               "lr/outer": self.optimizer.param_groups[0]["lr"],
                               "lr/inner": float(run.algorithm.inner_lr())}
                    if window_iters:
                        means = {k: v / window_iters for k, v in sums.items()}
                        if self.group.world > 1:
                            means = distributed.average_metrics(
                                means, self.group.share(tc.meta_batch_size))
                        last = {k: v.item() for k, v in means.items()}
                        scalars |= {
                            "train/query_loss_pre": last["loss_pre"],
                            "train/query_loss_post": last["loss_post"],
                            f"train/query_{name}_pre": last["metric_pre"],
                            f"train/query_{name}_post": last["metric_post"],
                            "perf/tasks_per_s": window_iters * tc.meta_batch_size / elapsed,
                        }
                        bar.update(task, status=f"loss {last['loss_pre']:.3f} -> "
                                                f"{last['loss_post']:.3f}")
                    tracker.scalars(self.iteration, scalars)
                    bar.update(task, completed=self.iteration)
                    sums, window_start, window_iters = {}, time.perf_counter(), 0
                if tc.val_every and (self.iteration % tc.val_every == 0 or final):
                    self._check_finite()
                    self.validate(tracker)
                if tc.checkpoint_every and self.iteration % tc.checkpoint_every == 0:
                    self.save(f"iter_{self.iteration:07d}.pt", "last.pt")
                if self.stopping:
                    self._stop(stop[0] if stop else signal.SIGTERM)
            self.save("last.pt")
            if self.iteration < tc.iterations and main:
                log.info("stopped after iteration %d of %d (trainer.stop_after); continue "
                         "with: maml-train resume=%s", self.iteration, tc.iterations, self.run_dir)
            result = self._result() if main else None
            tracker.hparams(flatten(OmegaConf.to_container(cfg, resolve=True)),
                            {f"hparam/val_{name}_best": result,
                             "hparam/train_query_loss_post": last.get("loss_post", math.nan)})
        seconds = time.perf_counter() - started
        if not main:
            return result
        metrics = {"iterations": self.iteration, "wall_s": round(seconds, 1),
                   f"val_{name}_untrained": self.untrained, f"val_{name}_best": self.best,
                   **{f"train_query_{k}": v for k, v in last.items()},
                   "skipped_meta_batches": self.skipped, "result": result}
        checkpoint.atomic_write(self.run_dir / "metrics.json",
                                lambda f: f.write((json.dumps(metrics) + "\n").encode()))
        self._summary(seconds, last)
        return result

    def _result(self) -> float:
        """What sweepers optimise: the best validation metric, or the worst value there is when
        no validation gave a finite one, so that no search prefers this run."""
        if self.best is not None:
            return self.best
        worst = -math.inf if self.run.task.higher_is_better else math.inf
        log.warning("no finite validation %s (trainer.val_every=%d): reporting %s to sweepers",
                    self.run.task.metric_name, self.cfg.trainer.val_every, worst)
        return worst

    def _step(self, params, buffers, weights, stop_requested: bool) -> dict | None:
        """One meta-update; its metrics, or None when nan_policy=skip dropped the meta-batch."""
        cfg, run, group = self.cfg, self.run, self.group
        episode = run.task.sample("train", cfg.trainer.meta_batch_size, self.generator)
        if group.world > 1:  # this rank's slice of the meta-batch every rank drew
            episode = episode[group.tasks(cfg.trainer.meta_batch_size)]
        self.optimizer.zero_grad(set_to_none=True)
        for param_group, base in zip(self.optimizer.param_groups, self.base_lrs):
            param_group["lr"] = base * self.lr_factor(self.iteration - 1)
        run.algorithm.start_iteration(self.iteration)
        loss, metrics = run.engine.meta_backward(run.algorithm, params, buffers, episode,
                                                 cfg.inner.steps)
        grads = [p.grad for p in weights if p.grad is not None]
        self.stopping = stop_requested
        if group.world > 1:
            loss, self.stopping = distributed.average(
                grads, loss, stop_requested, group.share(cfg.trainer.meta_batch_size))
        finite = torch.isfinite(loss) & torch.isfinite(torch.nn.utils.get_total_norm(grads))
        if cfg.trainer.nan_policy == "skip":
            if not finite.item():  # a sync per iteration: the price of choosing to skip
                self.skipped += 1
                self.consecutive_skips += 1
                if self.consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
                    self.first_bad.fill_(self.iteration)
                    self._check_finite()
                return None
            self.consecutive_skips = 0
        else:
            self.first_bad = torch.where(finite | (self.first_bad > 0), self.first_bad,
                                         self.iteration)
        self.optimizer.step()
        return metrics

    def _stop(self, signum: int) -> None:
        self.save("last.pt")
        log.warning("stopped by %s after iteration %d; checkpoint %s; continue with: "
                    "maml-train resume=%s", signal.Signals(signum).name, self.iteration,
                    self.run_dir / "checkpoints" / "last.pt", self.run_dir)
        raise SystemExit(128 + signum)

    def _check_finite(self) -> None:
        """Stop before anything computed from a non-finite meta-gradient is logged or saved."""
        bad = int(self.first_bad)
        if not bad:
            return
        skipping = self.cfg.trainer.nan_policy == "skip"
        folder = self.run_dir / "checkpoints"
        kept = (f"the checkpoints in {folder} predate it" if any(folder.glob("*.pt"))
                else "no checkpoint was written")
        raise UserError(
            f"the meta-loss or its gradient was NaN or infinite at iteration {bad}"
            f"{f' and the {MAX_CONSECUTIVE_SKIPS - 1} before it' if skipping else ''} "
            f"(learning rate too large? inner.lr={self.cfg.inner.lr}, "
            f"outer.lr={self.cfg.outer.lr}); {kept}"
            f"{'' if skipping else '; trainer.nan_policy=skip would skip such meta-batches'}"
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
