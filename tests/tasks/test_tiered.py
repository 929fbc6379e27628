"""tiered-ImageNet on a small copy the test writes in Ren et al.'s pickled layout (Python 2
style latin-1 pickles: a list of PNG-encoded uint8 arrays and a labels dict): the data is not
here."""

import io
import pickle

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from maml_cli.errors import UserError
from maml_cli.tasks.tiered import TieredImageNet

CLASSES = {"train": 6, "val": 3, "test": 4}


def write_tiered(root, per_class=3):
    """Image j of class c (numbered within its split) has red = 10 c + j."""
    folder = root / "tiered-imagenet"
    folder.mkdir(parents=True)
    for split, classes in CLASSES.items():
        pngs, labels = [], []
        for c in range(classes):
            for j in range(per_class):
                pixels = np.zeros((84, 84, 3), np.uint8)
                pixels[..., 0] = 10 * c + j
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, format="PNG")
                pngs.append(np.frombuffer(buffer.getvalue(), dtype=np.uint8))
                labels.append(c)
        with open(folder / f"{split}_images_png.pkl", "wb") as f:
            pickle.dump(pngs, f, protocol=2)
        with open(folder / f"{split}_labels.pkl", "wb") as f:
            pickle.dump({"label_specific": np.array(labels), "label_general": np.zeros(len(labels)),
                         "label_specific_str": [f"n{c:08d}" for c in labels]}, f, protocol=2)
    return root


def data_at(root, download=False):
    return OmegaConf.create({"root": str(root), "download": download,
                             "cache_dir": str(root / "cache")})


def test_reads_the_pickled_layout_into_its_splits(tmp_path):
    tasks = TieredImageNet(ways=3, shots=1, queries=2, data=data_at(write_tiered(tmp_path)))
    for split, classes in CLASSES.items():
        s = tasks.splits[split]
        assert s.num_classes == classes and (s.counts == 3).all()
        assert s.images.shape == (classes * 3, 3, 84, 84) and s.images.dtype == torch.uint8
        # Class k holds the images labelled k, exactly (PNG is lossless).
        red = s.images[s.index, 0, 0, 0]
        assert red.tolist() == [[10 * k + j for j in range(3)] for k in range(classes)]
    assert tasks.sample("test", 2, torch.Generator().manual_seed(0)).support_x.shape == (
        2, 3, 3, 84, 84)


def test_missing_or_broken_files_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match=r"tiered-ImageNet not found: no folder .*docs/data.md"):
        TieredImageNet(data=data_at(tmp_path))
    with pytest.raises(UserError, match="no download built in"):
        TieredImageNet(data=data_at(tmp_path, download=True))
    root = write_tiered(tmp_path / "broken")
    (root / "tiered-imagenet" / "val_labels.pkl").write_bytes(b"\x80\x02 cut")
    with pytest.raises(UserError, match=r"val_labels.pkl is corrupt or unreadable"):
        TieredImageNet(data=data_at(root))
    (root / "tiered-imagenet" / "test_images_png.pkl").unlink()
    write_tiered(tmp_path / "again")
    (tmp_path / "again" / "tiered-imagenet" / "test_images_png.pkl").unlink()
    with pytest.raises(UserError, match=r"not found: no .*test_images_png.pkl"):
        TieredImageNet(data=data_at(tmp_path / "again"))
