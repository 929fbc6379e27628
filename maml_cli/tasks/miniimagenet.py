"""mini-ImageNet (Vinyals et al.) with the Ravi & Larochelle split: 64 / 16 / 20 classes of
600 images, resized to 84x84."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from maml_cli.errors import UserError
from maml_cli.tasks.base import SPLITS
from maml_cli.tasks.images import ImageTasks, cached

CACHE_FORMAT = "maml-cli-miniimagenet/1"
WHERE = ("mini-ImageNet is read from <data.root>/miniimagenet/ in the Ravi & Larochelle layout: "
         "images/*.jpg with train.csv, val.csv and test.csv (columns filename,label); see "
         "docs/data.md for where to get it")


def read_split(root: Path, split: str) -> list[tuple[str, str]]:
    name = {"train": "train.csv", "val": "val.csv", "test": "test.csv"}[split]
    path = root / name
    if not path.is_file():
        raise UserError(f"mini-ImageNet not found: no {path}. {WHERE}")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"filename", "label"} <= set(rows[0]):
        raise UserError(f"{path} is not a mini-ImageNet split file (needs columns "
                        "filename,label)")
    return [(r["filename"], r["label"]) for r in rows]


def preprocess(root: Path, size: int) -> dict:
    """{split: uint8 images [N, 3, size, size]} and {split + "_labels": class numbers}."""
    out = {}
    for split in SPLITS:
        rows = read_split(root, split)
        classes = {label: i for i, label in enumerate(sorted({label for _, label in rows}))}
        images = np.empty((len(rows), size, size, 3), dtype=np.uint8)
        for i, (filename, _) in enumerate(rows):
            path = root / "images" / filename
            try:
                with Image.open(path) as image:
                    images[i] = np.asarray(image.convert("RGB").resize((size, size),
                                                                       Image.LANCZOS))
            except (OSError, ValueError) as e:
                raise UserError(f"mini-ImageNet image {path} is missing or corrupt "
                                f"({type(e).__name__}). {WHERE}") from None
        out[split] = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        out[f"{split}_labels"] = torch.tensor([classes[label] for _, label in rows])
    return out


class MiniImageNet(ImageTasks):
    def __init__(self, ways: int = 5, shots: int = 1, queries: int = 15,
                 eval_queries: int | None = None, eval_shots: int | None = None,
                 image_size: int = 84, loss_scale: float = 1.0,
                 device="cpu", data=None, augment: Sequence[str] = ()):
        self.image_size = image_size
        super().__init__(ways, shots, queries, eval_queries, loss_scale, device, data, augment,
                         eval_shots)

    def load_splits(self):
        if self.data.download:
            raise UserError("mini-ImageNet has no official download; " + WHERE)
        root = Path(self.data.root).expanduser() / "miniimagenet"
        if not root.is_dir():
            raise UserError(f"mini-ImageNet not found: no folder {root}. {WHERE}")
        dataset = cached(self.data.cache_dir, f"miniimagenet-{self.image_size}px", CACHE_FORMAT,
                         [root], lambda: preprocess(root, self.image_size))
        return {split: (dataset[split], dataset[f"{split}_labels"]) for split in SPLITS}
