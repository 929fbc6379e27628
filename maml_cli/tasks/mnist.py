"""Few-shot digit classification on MNIST, read through torchvision's own MNIST class."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from maml_cli.errors import UserError
from maml_cli.tasks.images import ImageTasks, check_rotations, rotate_classes


class MNIST(ImageTasks):
    """Digits are split into disjoint class sets. Meta-training and validation classes take
    their images from the official training file, and meta-test classes from the official test
    file, so no test image is seen in training. As in Omniglot, each of `rotations` turns every
    digit into a class of its own (a 90-degree "3" is not a "3"), so that four meta-training
    digits give sixteen classes."""

    def __init__(self, ways: int = 3, shots: int = 1, queries: int = 15,
                 eval_queries: int | None = None, eval_shots: int | None = None,
                 train_classes: Sequence[int] = (0, 1, 2, 3),
                 val_classes: Sequence[int] = (4, 5, 6), test_classes: Sequence[int] = (7, 8, 9),
                 rotations: Sequence[int] = (0,), loss_scale: float = 1.0, device="cpu",
                 data=None, augment: Sequence[str] = ()):
        self.classes = {"train": list(train_classes), "val": list(val_classes),
                        "test": list(test_classes)}
        flat = [c for cs in self.classes.values() for c in cs]
        if len(set(flat)) != len(flat) or not all(0 <= c <= 9 for c in flat):
            raise UserError("task.train_classes, task.val_classes and task.test_classes must be "
                            f"disjoint digits 0-9 (got {self.classes})")
        self.rotations = check_rotations(rotations)
        super().__init__(ways, shots, queries, eval_queries, loss_scale, device, data, augment,
                         eval_shots)

    def load_splits(self):
        from torchvision.datasets import MNIST as TorchvisionMNIST

        root = Path(self.data.root).expanduser() / "mnist"
        files = {}
        for official_train in (True, False):
            try:
                files[official_train] = TorchvisionMNIST(str(root), train=official_train,
                                                         download=bool(self.data.download))
            except RuntimeError as e:
                raise UserError(f"MNIST missing or unreadable under {root}/MNIST/raw ({e}); "
                                "set data.root or MAML_DATA_ROOT to the folder holding mnist/, "
                                "or add data.download=true") from None
        splits = {}
        for split, classes in self.classes.items():
            source = files[split != "test"]
            keep = torch.isin(source.targets, torch.tensor(classes))
            splits[split] = rotate_classes(source.data[keep].unsqueeze(1), source.targets[keep],
                                           self.rotations)
        return splits
