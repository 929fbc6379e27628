"""CIFAR-FS (Bertinetto et al. 2019) and FC100 (Oreshkin et al. 2018): few-shot splits of
CIFAR-100's 100 classes of 600 32x32 colour images (its training and test files pooled), read
from the python-version files torchvision downloads (<data.root>/cifar100/cifar-100-python/).

CIFAR-FS splits the classes at random, 64 / 16 / 20; FC100 by superclass, 12 / 4 / 4
superclasses (60 / 20 / 20 classes), so its test classes share no superclass with training.
The class lists are maml_cli/tasks/splits/cifar_fs.json and fc100.json (docs/data.md)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import torch

from maml_cli.errors import UserError
from maml_cli.tasks.base import SPLITS
from maml_cli.tasks.images import ImageTasks

FILES = ("train", "test", "meta")
SPLIT_DIR = Path(__file__).parent / "splits"
WHERE = ("CIFAR-100 is read from <data.root>/cifar100/cifar-100-python/ (train, test, meta: the "
         "python version, as torchvision.datasets.CIFAR100 keeps it); set data.root or "
         "MAML_DATA_ROOT, or add data.download=true to fetch it")


def read_cifar100(root: Path, download: bool) -> dict:
    """All 60,000 images, uint8 [N, 3, 32, 32], their fine and coarse labels, and the names of
    both."""
    folder = root / "cifar100" / "cifar-100-python"
    if download and not all((folder / f).is_file() for f in FILES):
        from torchvision.datasets import CIFAR100  # its URL and md5 check

        for train in (True, False):
            CIFAR100(str(root / "cifar100"), train=train, download=True)
    parts = {}
    for name in FILES:
        path = folder / name
        if not path.is_file():
            raise UserError(f"CIFAR-100 not found: no {path}. {WHERE}")
        try:
            with open(path, "rb") as f:
                parts[name] = pickle.load(f, encoding="latin1")
        except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
            raise UserError(f"CIFAR-100 file {path} is corrupt or unreadable "
                            f"({type(e).__name__})") from None
    try:
        data = np.concatenate([parts[p]["data"] for p in ("train", "test")])
        return {"images": torch.from_numpy(data.reshape(-1, 3, 32, 32)),
                "fine": torch.tensor(parts["train"]["fine_labels"] + parts["test"]["fine_labels"]),
                "coarse": torch.tensor(parts["train"]["coarse_labels"]
                                       + parts["test"]["coarse_labels"]),
                "fine_names": parts["meta"]["fine_label_names"],
                "coarse_names": parts["meta"]["coarse_label_names"]}
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{folder} does not hold CIFAR-100's python-version files ({e})") from None


class CIFAR100Tasks(ImageTasks):
    """N-way K-shot classification on a class split of CIFAR-100 (the subclasses' `split_file`,
    of fine class names, or of superclass names when `by_superclass`)."""

    split_file: str
    by_superclass: bool

    def load_splits(self):
        cifar = read_cifar100(Path(self.data.root).expanduser(), bool(self.data.download))
        names = cifar["coarse_names"] if self.by_superclass else cifar["fine_names"]
        labels = cifar["coarse"] if self.by_superclass else cifar["fine"]
        split = json.loads((SPLIT_DIR / self.split_file).read_text())
        splits = {}
        missing = [n for part in SPLITS for n in split[part] if n not in names]
        if missing:
            raise UserError(f"CIFAR-100's meta file lacks the class {missing[0]!r} of "
                            f"{self.split_file}. {WHERE}")
        for name in SPLITS:
            wanted = torch.tensor([names.index(n) for n in split[name]])
            keep = torch.isin(labels, wanted)
            # Each fine class of the split is a class of its own, under FC100 too.
            splits[name] = (cifar["images"][keep], cifar["fine"][keep])
        return splits


class CIFARFS(CIFAR100Tasks):
    split_file, by_superclass = "cifar_fs.json", False


class FC100(CIFAR100Tasks):
    split_file, by_superclass = "fc100.json", True
