"""The meta-training loop: sample a meta-batch, meta-gradient, outer step; on schedule log,
validate and checkpoint; stop cleanly on a signal or a non-finite meta-gradient."""

from __future__ import annotations

import signal
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from maml_cli import checkpoint, distributed, optim, tracking
from maml_cli.algorithms.base import CARRY
from maml_cli.build import Run
from maml_cli.engine import choose_compile
from maml_cli.errors import Stopped, UserError
from maml_cli.evaluate import validate
from maml_cli.tracking import Tracker, Window, log, progress

# Under trainer.nan_policy=skip, this many non-finite meta-batches in a row stop the run anyway:
# then the meta-parameters themselves are broken, and skipping would spin forever.
MAX_CONSECUTIVE_SKIPS = 20
# trainer.compile=auto on the CPU times this many iterations after the first (which has one-off
# costs) before it chooses.
TIMED_ITERATIONS = 3
# Iterations whose loss and gradient norms wait for a check, at most (they hold small tensors).
MAX_UNCHECKED = 1000


class Trainer:
    def __init__(self, run: Run, run_dir: Path, resume: dict | None = None):
        self.run, self.run_dir, self.group = run, run_dir, distributed.group()
        self.checkpoints = checkpoint.Folder(run_dir / "checkpoints", run.trainer.keep_last)
        self.sampler = torch.Generator(run.device).manual_seed(run.seed)
        self.params = dict(run.model.named_parameters())
        # What the outer optimizer steps: the model's parameters and any the algorithm adds.
        self.outer_params = [p for g in run.optimizer.param_groups for p in g["params"]]
        self.buffers = dict(run.model.named_buffers())
        self.progress, self.consecutive_skips = checkpoint.Progress(), 0
        self.stopping = False  # all ranks agree on it (distributed.average)
        # The iteration of the first non-finite loss or gradient found (0: none), and the norms
        # of the loss and every gradient of the iterations not inspected yet: one multi-tensor
        # kernel per iteration and no sync, read back where the loop syncs anyway.
        self.first_bad, self.unchecked = 0, []
        self.last_figure = None  # the iteration of the last validation figure in this process
        if resume is not None:
            self.progress = checkpoint.restore(run, resume, self.sampler)
            log.info("resumed at iteration %d (best val %s so far: %s)", self.progress.iteration,
                     run.task.metric_name, self.progress.best)
        # trainer.compile=auto on the CPU is settled by this process's first iterations unless
        # a checkpoint already holds the choice: then a resumed run goes on as the
        # uninterrupted one did.
        choice = choose_compile(run.trainer.compile, run.device,
                                getattr(run.model, "is_policy", False))
        if choice is not None or self.progress.compiled is None:
            self.progress.compiled = choice
        run.engine.set_compile(bool(self.progress.compiled))
        self.eager_seconds: list[float] = []
        # The outer Adam's tensors, where its step may join the compiled meta-iteration
        # (Engine.meta_step): nothing must come between the meta-gradient and the step (no
        # all-reduce, no skipping of non-finite meta-batches). `whole`: whether the last
        # iteration's meta-batch could compile as one graph (trainer.compile=auto asks).
        self.outer, self.whole = None, False
        if isinstance(run.optimizer, optim.Adam) and self.group.world == 1 \
                and run.trainer.nan_policy == "stop":
            self.outer = run.optimizer.functional()

    def save(self, *names: str) -> None:
        self._check_finite()
        if self.group.main:
            self.checkpoints.write(checkpoint.capture(self.run, self.progress, self.sampler),
                                   *names)

    def validate(self, tracker: Tracker) -> float | None:
        """Rank 0 only: the others run on and wait for it at the next all_reduce."""
        if not self.group.main:
            return None
        self._check_finite()
        p, every, last = self.progress, self.run.trainer.figure_every, self.last_figure
        figure = bool(every) and (last is None or p.iteration - last >= every
                                  or p.iteration == self.run.trainer.iterations)
        if figure:
            self.last_figure = p.iteration
        metric = validate(self.run, tracker, p.iteration, p.best, figure)
        if self.run.task.better(metric, p.best):
            p.best = metric
            self.save("best.pt")
        return metric

    def fit(self, stop: Sequence[int] = ()) -> float | None:
        """Train to trainer.iterations (or stop_after); the best validation metric. `stop`: the
        signals received so far, growing as they come (cli.stop_requests); after one, the run
        stops with a checkpoint at the end of the iteration it is in."""
        run, tc, p, main = self.run, self.run.trainer, self.progress, self.group.main
        started, last, untrained = time.perf_counter(), {}, None
        window = Window(getattr(run.task, "env_steps_simulated", None))
        # The tracker closes (flushing its events) on every way out, errors and signals too.
        with Tracker(self.run_dir / "tb" if main else None) as tracker, \
                progress("meta-train", show=main) as bar:
            # A signal that came before training stops it here, not after a first step that
            # may compile for minutes.
            if distributed.anyone(bool(stop), run.device):
                self._stop(stop[0] if stop else signal.SIGTERM)
            task = bar.add_task("train", total=tc.iterations, completed=p.iteration, status="")
            if tc.val_every and p.iteration == 0:
                untrained = self.validate(tracker)
            # stop_after ends this process early; the schedule still spans tc.iterations.
            end = min(tc.iterations, tc.stop_after or tc.iterations)
            while p.iteration < end:
                p.iteration += 1
                step_started = time.perf_counter()
                window.add(self._step(bool(stop), before=not window.has_before))
                if p.compiled is None:
                    self._choose_compile(time.perf_counter() - step_started)
                if p.iteration % tc.log_every == 0 or p.iteration == end:
                    self._check_finite()
                    last = window.close(self.group, tc.meta_batch_size) or last
                    tracker.train_window(p.iteration, last, run, p.skipped)
                    bar.update(task, completed=p.iteration, status="" if not last else
                               f"loss {last['loss_pre']:.3f} -> {last['loss_post']:.3f}")
                # A process stopped early validates only on schedule, so that its run is the
                # uninterrupted run's prefix, best.pt included.
                final = p.iteration == tc.iterations
                if tc.val_every and (p.iteration % tc.val_every == 0 or final):
                    self.validate(tracker)
                if tc.checkpoint_every and p.iteration % tc.checkpoint_every == 0:
                    self.save(f"iter_{p.iteration:07d}.pt", "last.pt")
                if self.stopping:
                    self._stop(stop[0] if stop else signal.SIGTERM)
            self.save("last.pt")
            if not main:
                return None
            if p.iteration < tc.iterations:
                log.info("stopped after iteration %d of %d (trainer.stop_after); continue "
                         "with: maml-train resume=%s", p.iteration, tc.iterations, self.run_dir)
            result = tracking.sweep_result(tracker, run, p.best, last)
        tracking.finish(self.run_dir, run.task.metric_name, p.iteration,
                        time.perf_counter() - started, last, untrained, p.best, p.skipped, result,
                        (run.engine.steps, run.engine.eval_steps))
        return result

    def _step(self, stop_requested: bool, before: bool) -> dict | None:
        """One meta-update; its metrics, or None when nan_policy=skip dropped the meta-batch.
        `before`: also measure the meta-batch's query metrics before adaptation (once per log
        window, since only the log reads them)."""
        run, group, it = self.run, self.group, self.progress.iteration
        size = run.trainer.meta_batch_size
        episode = run.task.sample("train", size, self.sampler)
        if group.world > 1:  # this rank's slice of the meta-batch every rank drew
            episode = episode[group.tasks(size)]
        # What optimizer.zero_grad(set_to_none=True) does, without its per-call profiler record
        # and dynamo guard (a few points of the default run's overhead: make bench's T1).
        for p in self.outer_params:
            p.grad = None
        run.schedule.start(it)
        run.algorithm.start_iteration(it)
        episode = run.engine.collect(self.params, self.buffers, episode)
        self.whole = self.outer is not None and run.engine.can_meta_step(self.params,
                                                                         self.buffers, episode)
        if self.whole and run.engine.compile:
            # with the meta-parameters this meta-batch adapts from, before the step updates them
            metrics = run.engine.before(self.params, self.buffers, episode) if before else {}
            _, step_metrics, norms = run.engine.meta_step(
                self.params, self.buffers, episode, self.outer,
                run.optimizer.param_groups[0]["lr"])
            self.stopping = stop_requested
            self._queue_check(it, norms)
            run.algorithm.carry_over(step_metrics.pop(CARRY, {}))
            return step_metrics | metrics
        loss, metrics = run.engine.meta_backward(self.params, self.buffers, episode)
        carry = metrics.pop(CARRY, {})
        grads = [p.grad for p in self.outer_params if p.grad is not None]
        self.stopping = stop_requested
        if group.world > 1:  # the carried state is a mean over tasks too: in the same message
            loss, self.stopping = distributed.average([*grads, *carry.values()], loss,
                                                      stop_requested, group.share(size))
        # A norm is non-finite if anything in its tensor is (torch.nn.utils.get_total_norm's
        # own bookkeeping costs more than this on small models: make bench's T1).
        norms = torch.stack(torch._foreach_norm([loss, *grads]))
        if run.trainer.nan_policy == "skip":
            # a sync per iteration: the price of choosing to skip
            if not norms.isfinite().all().item():
                self.progress.skipped += 1
                self.consecutive_skips += 1
                if self.consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
                    self.first_bad = it
                    self._check_finite()
                return None
            self.consecutive_skips = 0
        else:
            self._queue_check(it, norms)
        if before:  # with the meta-parameters this meta-batch adapted from
            metrics |= run.engine.before(self.params, self.buffers, episode)
        if getattr(run.optimizer, "needs_closure", False):  # TRPO: it evaluates the batch again
            run.optimizer.step(lambda: run.engine.surrogate(self.params, self.buffers, episode))
            metrics |= run.optimizer.stats
        else:
            run.optimizer.step()
        run.algorithm.carry_over(carry)
        return metrics

    def _queue_check(self, iteration: int, norms: torch.Tensor) -> None:
        """Keep an iteration's norms for the next _check_finite."""
        self.unchecked.append((iteration, norms))
        if len(self.unchecked) >= MAX_UNCHECKED:  # however long trainer.log_every is
            self._check_finite()

    def _choose_compile(self, seconds: float) -> None:
        """trainer.compile=auto on the CPU: once TIMED_ITERATIONS have been timed, compile if the
        rest of the run, eager, would take longer than engine.CPU_COMPILE_AFTER_S (or
        CPU_WHOLE_COMPILE_AFTER_S, where the whole meta-iteration compiles). Every rank
        takes the slowest rank's time, so that all choose alike."""
        self.eager_seconds.append(seconds)
        if len(self.eager_seconds) <= TIMED_ITERATIONS:
            return
        per_iteration = statistics.median(self.eager_seconds[1:])
        if self.group.world > 1:
            per_iteration = max(distributed.gather([per_iteration]))
        run, p = self.run, self.progress
        left = per_iteration * (run.trainer.iterations - p.iteration)
        p.compiled = choose_compile("auto", run.device, eager_s_left=left, whole=self.whole)
        if p.compiled:
            log.info("trainer.compile=auto: the %d iterations left would take about %.0f min "
                     "uncompiled, so the engine compiles now (trainer.compile=false: never)",
                     run.trainer.iterations - p.iteration, left / 60)
            run.engine.set_compile(True)

    def _stop(self, signum: int) -> None:
        self.save("last.pt")
        message = (f"stopped by {signal.Signals(signum).name} after iteration "
                   f"{self.progress.iteration}; checkpoint {self.checkpoints.path / 'last.pt'}; "
                   f"continue with: maml-train resume={self.run_dir}")
        if self.group.main:
            log.warning("%s", message)
        raise Stopped(signum, message)

    def _check_finite(self) -> None:
        """Stop before anything computed from a non-finite meta-gradient is logged or saved."""
        if self.unchecked and not self.first_bad:
            finite = torch.cat([norms for _, norms in self.unchecked]).isfinite()
            ok, start = finite.tolist(), 0
            for it, norms in self.unchecked:
                if not all(ok[start:start + len(norms)]):
                    self.first_bad = it
                    break
                start += len(norms)
        self.unchecked = []
        bad = self.first_bad
        if not bad:
            return
        skipping = self.run.trainer.nan_policy == "skip"
        kept = (f"the checkpoints in {self.checkpoints.path} predate it"
                if self.checkpoints.any() else "no checkpoint was written")
        raise UserError(
            f"the meta-loss or its gradient was NaN or infinite at iteration {bad}"
            f"{f' and the {MAX_CONSECUTIVE_SKIPS - 1} before it' if skipping else ''} "
            f"(learning rate too large? inner.lr={self.run.algorithm.inner.lr}, "
            f"outer.lr={self.run.schedule.base_lrs[0]}); {kept}"
            f"{'' if skipping else '; trainer.nan_policy=skip would skip such meta-batches'}"
        )
