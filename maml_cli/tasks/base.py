from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

from maml_cli.episode import Episode

SPLITS = ("train", "val", "test")


class DataPlace:
    """Where this machine keeps datasets (data.root, data.download, data.cache_dir, resolved).
    Passed in by the builder rather than stored in the task's config, since it describes the
    machine, not the task. (Not a dataclass: hydra's instantiate would turn one into a config.)"""

    def __init__(self, root: str, download: bool, cache_dir: str):
        self.root, self.download, self.cache_dir = root, download, cache_dir


class TaskFamily(ABC):
    """Knows its data and splits; samples episodes with a generator on its device."""

    input_shape: tuple[int, ...]
    num_outputs: int
    metric_name: str
    higher_is_better: bool

    def __init__(self, device: torch.device | str = "cpu", data: DataPlace | None = None):
        self.device, self.data = torch.device(device), data

    @abstractmethod
    def sample(self, split: str, num_tasks: int, generator: torch.Generator) -> Episode: ...

    @abstractmethod
    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss of one task, the one the inner loop and the meta-objective minimise."""

    @abstractmethod
    def metric(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar metric of one task, the one validation and evaluation report."""

    def better(self, a: float, b: float | None) -> bool:
        """Whether metric value a improves on b (None: nothing yet). NaN or inf never does."""
        return math.isfinite(a) and (b is None or (a > b if self.higher_is_better else a < b))
