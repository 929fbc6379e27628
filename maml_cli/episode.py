from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class Episode:
    """A meta-batch of tasks; every tensor has the task dimension first."""

    support_x: torch.Tensor  # [T, support size, *input_shape]
    support_y: torch.Tensor  # [T, support size, ...]
    query_x: torch.Tensor  # [T, query size, *input_shape]
    query_y: torch.Tensor  # [T, query size, ...]

    @property
    def num_tasks(self) -> int:
        return self.support_x.shape[0]

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))

    def __getitem__(self, index) -> Episode:
        """Tasks `index` (an int keeps no task dimension, a slice keeps it)."""
        return Episode(*(t[index] for t in self.tensors()))
