"""Run the real maml-train entry point with one fault injected, in its own process.

    python inject.py FAULT [maml-train args...]

FAULT is one of
    kill-at:I          the process SIGKILLs itself at the start of iteration I
    hang-at:I          iteration I touches HANGING and never ends, as a long compile might
    pause-in-save:N    the N-th checkpoint write stops halfway, touches SAVING, waits to be killed
    full-disk:N        the N-th checkpoint write fails halfway with ENOSPC, as on a full disk
    nan-at:I,J,...     the meta-batches of iterations I, J, ... carry a NaN target
    term-in-build:R    the process of rank R (0 without torchrun) SIGTERMs itself while the run
                       builds, as a preemption during data loading would

Checkpoint writes are counted in the order the trainer makes them (iter_<n>.pt before last.pt).
"""

import errno
import io
import os
import signal
import sys
import time
from pathlib import Path

from maml_cli import files, train
from maml_cli.tasks.sinusoid import Sinusoid
from maml_cli.train import cli
from maml_cli.trainer import Trainer


def at_iteration(iteration: int, fault) -> None:
    """Run fault(trainer) at the start of that iteration's step."""
    step = Trainer._step

    def faulty(self, *args, **kwargs):
        if self.progress.iteration == iteration:
            fault(self)
        return step(self, *args, **kwargs)

    Trainer._step = faulty


def kill(trainer) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def hang(trainer) -> None:
    (trainer.run_dir / "HANGING").touch()
    while True:
        time.sleep(1)


def broken_save(n: int, pause: bool) -> None:
    write_file, saves = files.atomic_write, []

    def fault(path: Path, write) -> None:
        if path.parent.name == "checkpoints":
            saves.append(path)
        if len(saves) != n or path.parent.name != "checkpoints":
            return write_file(path, write)

        def half(f):
            buffer = io.BytesIO()
            write(buffer)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            f.flush()
            if pause:
                (path.parent / "SAVING").touch()
                time.sleep(600)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        write_file(path, half)

    files.atomic_write = fault


def nan_at(iterations: set[int]) -> None:
    sample, calls = Sinusoid.sample, []

    def fault(self, split, num_tasks, generator):
        episode = sample(self, split, num_tasks, generator)
        if split == "train":
            calls.append(1)
            if len(calls) in iterations:
                episode.support_y[0, 0] = float("nan")
        return episode

    Sinusoid.sample = fault


def term_in_build(rank: int) -> None:
    build = train.build

    def fault(cfg):
        if int(os.environ.get("RANK", "0")) == rank:
            os.kill(os.getpid(), signal.SIGTERM)
        return build(cfg)

    train.build = fault


def main() -> None:
    fault, _, arg = sys.argv[1].partition(":")
    if fault == "kill-at":
        at_iteration(int(arg), kill)
    elif fault == "hang-at":
        at_iteration(int(arg), hang)
    elif fault in ("pause-in-save", "full-disk"):
        broken_save(int(arg), pause=fault == "pause-in-save")
    elif fault == "nan-at":
        nan_at({int(i) for i in arg.split(",")})
    elif fault == "term-in-build":
        term_in_build(int(arg))
    else:
        sys.exit(f"unknown fault {fault}")
    sys.argv = ["maml-train", *sys.argv[2:]]
    cli()


if __name__ == "__main__":
    main()
