"""Checkpoints: atomic writes, weights_only loads, and finding one from a path or run dir."""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from maml_cli import __version__
from maml_cli.errors import UserError

FORMAT = "maml-cli-checkpoint/3"


def atomic_write(path: Path, write) -> None:
    """write(file) into a temp file beside `path`, fsync it, then rename it over `path`.

    A crash at any moment leaves either the old file or the new one, never a torn one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
    atomic_write(path, lambda f: torch.save(state, f))


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
