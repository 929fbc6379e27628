"""tiered-ImageNet (Ren et al. 2018): 608 ImageNet classes in 34 categories, split by category
(20 / 6 / 8 categories: 351 / 97 / 160 classes) so that test classes are far from training
ones, 84x84 colour. Read in the pickled layout of Ren et al.'s few-shot-ssl-public, which
torchmeta and learn2learn also read: <data.root>/tiered-imagenet/{train,val,test}_images_png.pkl
(each image PNG-encoded) and {split}_labels.pkl (its "label_specific" class numbers)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from maml_cli.errors import UserError
from maml_cli.tasks.base import SPLITS
from maml_cli.tasks.images import ImageTasks, cached

CACHE_FORMAT = "maml-cli-tiered-imagenet/1"
WHERE = ("tiered-ImageNet is read from <data.root>/tiered-imagenet/ in Ren et al.'s pickled "
         "layout ({split}_images_png.pkl and {split}_labels.pkl for train, val and test); see "
         "docs/data.md for where to get it")


def load_pickle(path: Path):
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")  # Ren et al. wrote them with Python 2
    except FileNotFoundError:
        raise UserError(f"tiered-ImageNet not found: no {path}. {WHERE}") from None
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise UserError(f"tiered-ImageNet file {path} is corrupt or unreadable "
                        f"({type(e).__name__})") from None


def decode(root: Path) -> dict:
    """{split: uint8 images [N, 3, 84, 84], split + "_labels": class numbers [N]}."""
    out = {}
    for split in SPLITS:
        pngs = load_pickle(root / f"{split}_images_png.pkl")
        labels = load_pickle(root / f"{split}_labels.pkl")
        if not isinstance(labels, dict) or "label_specific" not in labels:
            raise UserError(f"{root / f'{split}_labels.pkl'} has no 'label_specific' labels. "
                            f"{WHERE}")
        if len(labels["label_specific"]) != len(pngs):
            raise UserError(f"{split}: {len(pngs)} images but {len(labels['label_specific'])} "
                            f"labels. {WHERE}")
        images = np.empty((len(pngs), 84, 84, 3), dtype=np.uint8)
        for i, png in enumerate(pngs):
            try:
                with Image.open(io.BytesIO(np.asarray(png, dtype=np.uint8).tobytes())) as image:
                    image = image.convert("RGB")
                    if image.size != (84, 84):
                        image = image.resize((84, 84), Image.LANCZOS)
                    images[i] = np.asarray(image)
            except (OSError, ValueError) as e:
                raise UserError(f"tiered-ImageNet {split} image {i} is corrupt "
                                f"({type(e).__name__})") from None
        out[split] = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        out[f"{split}_labels"] = torch.as_tensor(np.asarray(labels["label_specific"]),
                                                 dtype=torch.long)
    return out


class TieredImageNet(ImageTasks):
    def load_splits(self):
        if self.data.download:
            raise UserError("tiered-ImageNet has no download built in; " + WHERE)
        root = Path(self.data.root).expanduser() / "tiered-imagenet"
        if not root.is_dir():
            raise UserError(f"tiered-ImageNet not found: no folder {root}. {WHERE}")
        dataset = cached(self.data.cache_dir, "tiered-imagenet-84px", CACHE_FORMAT, [root],
                         lambda: decode(root))
        return {split: (dataset[split], dataset[f"{split}_labels"]) for split in SPLITS}
