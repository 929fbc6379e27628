from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod

import torch

from maml_cli.episode import Episode
from maml_cli.errors import UserError

SPLITS = ("train", "val", "test")


def random_split(names: list[str], seed: int, val: float, test: float,
                 what: str) -> dict[str, list[str]]:
    """{split: sorted names}: the sorted names shuffled by Python's random.Random(seed), a share
    `val` for validation and `test` for test (at least one each), the rest for training."""
    if len(names) < 3:
        raise UserError(f"there are {len(names)} {what}; a split needs at least 3")
    names = sorted(names)
    random.Random(seed).shuffle(names)
    n_val, n_test = max(1, round(val * len(names))), max(1, round(test * len(names)))
    if n_val + n_test >= len(names):
        raise UserError(f"val {val} and test {test} leave no training {what} of {len(names)}")
    return {"train": sorted(names[n_val + n_test:]), "val": sorted(names[:n_val]),
            "test": sorted(names[n_val:n_val + n_test])}


class DataPlace:
    """Where this machine keeps datasets (data.root, data.download, data.cache_dir, resolved).
    Passed in by the builder rather than stored in the task's config, since it describes the
    machine, not the task. (Not a dataclass: hydra's instantiate would turn one into a config.)"""

    def __init__(self, root: str, download: bool, cache_dir: str):
        self.root, self.download, self.cache_dir = root, download, cache_dir


class TaskData:
    """What one task's inner loop trains on and its meta-objective and metric test on, after
    `step` inner steps."""

    def support(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def query(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class FixedData(TaskData):
    """Supervised tasks: the episode's support and query sets, the same at every step."""

    def __init__(self, support_x, support_y, query_x, query_y):
        self.support_set, self.query_set = (support_x, support_y), (query_x, query_y)

    def support(self, step):
        return self.support_set

    def query(self, step):
        return self.query_set


class TaskFamily(ABC):
    """Knows its data and splits; samples episodes with a generator on its device."""

    input_shape: tuple[int, ...]
    num_outputs: int
    metric_name: str
    higher_is_better: bool
    # RL tasks: the model is a policy (models/gaussian_mlp.py), and a sampled batch is goals
    # whose data the engine collects by rolling out the policies it adapts (tasks/rl.py).
    needs_policy = False
    # Table tasks: each categorical input's number of codes (its embedding's size); those
    # inputs are the last of the features, after the numeric ones (model=embedding_mlp).
    categories: list[int] | None = None

    def __init__(self, device: torch.device | str = "cpu", data: DataPlace | None = None):
        self.device, self.data = torch.device(device), data

    @abstractmethod
    def sample(self, split: str, num_tasks: int, generator: torch.Generator) -> Episode: ...

    def task_data(self, support_x, support_y, query_x, query_y) -> TaskData:
        """One task's data from its episode tensors (RL: its collected rollouts per step)."""
        return FixedData(support_x, support_y, query_x, query_y)

    @abstractmethod
    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss of one task, the one the inner loop and the meta-objective minimise."""

    @abstractmethod
    def metric(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar metric of one task, the one validation selects checkpoints by."""

    # Metrics evaluation reports beside the main one: {name: fn(prediction, target) -> scalar}.
    extra_metrics: dict = {}

    @property
    def metric_names(self) -> list[str]:
        return [self.metric_name, *self.extra_metrics]

    def metrics(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """[the main metric, then each extra one] of one task."""
        if not self.extra_metrics:
            return self.metric(prediction, target)
        return torch.stack([self.metric(prediction, target),
                            *(fn(prediction, target) for fn in self.extra_metrics.values())])

    def query_loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The meta-objective's loss on the query; the inner loss unless the task says
        otherwise (RL: an importance-weighted surrogate)."""
        return self.loss(prediction, target)

    kl = None  # RL tasks: KL(sampling policy || predicted policy), for outer=trpo

    def better(self, a: float, b: float | None) -> bool:
        """Whether metric value a improves on b (None: nothing yet). NaN or inf never does."""
        return math.isfinite(a) and (b is None or (a > b if self.higher_is_better else a < b))
