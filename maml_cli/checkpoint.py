"""Checkpoints: what one holds, in and out (the model's and the algorithm's weights, the outer
optimizer, every random stream, the iteration, the best validation metric), written atomically
and rotated, loaded weights_only, and found from a path or a run dir."""

from __future__ import annotations

import os
import pickle
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from maml_cli import __version__, files
from maml_cli.errors import UserError

if TYPE_CHECKING:
    from maml_cli.build import Run

FORMAT = "maml-cli-checkpoint/3"


def on_cpu(obj):
    """Every tensor in a nest of dicts, lists and tuples moved to the CPU, so that a checkpoint
    written on a GPU loads with a plain torch.load(path, weights_only=True) anywhere."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(on_cpu(v) for v in obj)
    return obj


def save(path: Path, state: dict[str, Any]) -> None:
    state = on_cpu({"format": FORMAT, "version": __version__, **state})
    files.atomic_write(path, lambda f: torch.save(state, f))


def locate(path: str | os.PathLike, prefer: str = "last.pt") -> Path:
    """A checkpoint file, or a run dir whose checkpoints/<prefer> (else last.pt) is taken."""
    p = Path(path).expanduser()
    if p.is_dir():
        for name in (prefer, "last.pt"):
            for candidate in (p / "checkpoints" / name, p / name):
                if candidate.is_file():
                    return candidate
        raise UserError(f"no checkpoint in {p} (looked for checkpoints/{prefer} and last.pt)")
    if not p.exists():
        raise UserError(f"checkpoint not found: {p}")
    return p


def load(path: Path) -> dict[str, Any]:
    """Load with weights_only=True: tensors and plain data only, no code ever runs."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        code = re.search(r"GLOBAL (\S+)", str(e))
        if code:
            raise UserError(f"refusing to load {path}: it asks to run code ({code.group(1)}); "
                            "checkpoints may hold only tensors and plain data") from None
        raise UserError(f"{path} is not a readable checkpoint (not a torch file)") from None
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise UserError(f"{path} is not a readable checkpoint (truncated or not a torch file: "
                        f"{type(e).__name__})") from None
    found = state.get("format") if isinstance(state, dict) else None
    if isinstance(found, str) and found.startswith(FORMAT.split("/")[0]) and found != FORMAT:
        raise UserError(f"{path} was written by an incompatible maml-cli version "
                        f"({state.get('version')}, {found}); this version reads {FORMAT}")
    if found != FORMAT:
        raise UserError(f"{path} is not a maml-cli checkpoint (expected format {FORMAT})")
    return state


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


@dataclass
class Progress:
    """How far a run got: what a checkpoint holds beside the weights and the random streams."""
    iteration: int = 0
    best: float | None = None  # the best validation metric so far
    skipped: int = 0  # meta-batches dropped by trainer.nan_policy=skip
    compiled: bool | None = None  # whether the engine compiles (None: auto, not yet settled)


def capture(run: Run, progress: Progress, sampler: torch.Generator) -> dict[str, Any]:
    return {
        "iteration": progress.iteration,
        "model": run.model.state_dict(),
        "algorithm": run.algorithm.learned.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "rng": {**rng_state(), "sampler": sampler.get_state()},
        "best": progress.best,
        "skipped": progress.skipped,
        "compiled": progress.compiled,
        "metric": run.task.metric_name,
        "config": run.config,
    }


def load_weights(run: Run, state: dict) -> None:
    """The model's and the algorithm's weights from a checkpoint; RuntimeError if they differ
    from this run's."""
    run.model.load_state_dict(state["model"])
    run.algorithm.learned.load_state_dict(state["algorithm"])


def restore(run: Run, state: dict, sampler: torch.Generator) -> Progress:
    """Everything capture() took, put back: the run continues as if never stopped."""
    try:
        load_weights(run, state)
        run.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise UserError(f"checkpoint does not fit this model/optimizer: "
                        f"{str(e).splitlines()[0]}") from None
    set_rng_state(state["rng"])
    sampler.set_state(state["rng"]["sampler"])
    # Checkpoints from before trainer.compile=auto could switch mid-run have no "compiled".
    return Progress(state["iteration"], state["best"], state["skipped"], state.get("compiled"))


class Folder:
    """A run's checkpoints/ folder: last.pt, best.pt and iter_<n>.pt, the newest `keep_last` of
    those kept (0: all)."""

    def __init__(self, path: Path, keep_last: int):
        self.path, self.keep_last = path, keep_last

    def write(self, state: dict, *names: str) -> None:
        for name in names:
            try:
                save(self.path / name, state)
            except OSError as e:
                raise UserError(f"cannot write checkpoint {self.path / name}: "
                                f"{e.strerror or e} (disk full or not writable?); the "
                                f"checkpoints already in {self.path} are intact") from None
        if self.keep_last and any(n.startswith("iter_") for n in names):
            # Only after the new one is safely on disk; last.pt and best.pt are never rotated.
            for old in sorted(self.path.glob("iter_*.pt"))[:-self.keep_last]:
                old.unlink()

    def any(self) -> bool:
        return any(self.path.glob("*.pt"))
