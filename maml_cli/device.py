from __future__ import annotations

import torch

from maml_cli.errors import UserError


def resolve_device(name: str, threads: int | None = None) -> torch.device:
    """`auto` takes CUDA, then MPS, then the CPU; an explicit choice must exist here."""
    if threads:
        torch.set_num_threads(threads)
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise UserError(
            f"device={name} was asked for but {name.upper()} is not available on this machine "
            "(use device=cpu, or device=auto to take what exists)"
        )
    return torch.device(name)
