"""mini-ImageNet's loader on a small fixture written in the real on-disk format (the
Ravi & Larochelle images/ + train.csv / val.csv / test.csv layout): the data itself is not here."""

import csv
import os
import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from maml_cli.errors import UserError
from maml_cli.tasks import miniimagenet
from maml_cli.tasks.miniimagenet import MiniImageNet

CLASSES = {"train": 6, "val": 5, "test": 5}
PER_CLASS = 4


def write_fixture(root):
    """JPEGs of assorted sizes named like the real ones (<wnid><8 digits>.jpg)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    wnid = 1000000
    for split, classes in CLASSES.items():
        rows = []
        for _ in range(classes):
            wnid += 1
            for j in range(PER_CLASS):
                name = f"n0{wnid}{j:08d}.jpg"
                h, w = rng.integers(60, 120, size=2)
                pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / "images" / name, quality=90)
                rows.append((name, f"n0{wnid}"))
        with open(root / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["filename", "label"])
            writer.writerows(rows)


def data_at(root, download=False):
    return OmegaConf.create({"root": str(root), "download": download,
                             "cache_dir": str(root / "cache")})


@pytest.fixture
def fixture_root(tmp_path):
    write_fixture(tmp_path / "miniimagenet")
    return tmp_path


def test_loads_the_csv_layout_into_84px_uint8_splits(fixture_root):
    tasks = MiniImageNet(ways=3, shots=1, queries=2, data=data_at(fixture_root))
    for split, classes in CLASSES.items():
        s = tasks.splits[split]
        assert s.num_classes == classes and (s.counts == PER_CLASS).all()
        assert s.images.shape == (classes * PER_CLASS, 3, 84, 84) and s.images.dtype == torch.uint8
    original = np.asarray(Image.open(sorted((fixture_root / "miniimagenet/images").iterdir())[0]))
    assert tasks.splits["train"].images[0].float().mean() == pytest.approx(original.mean(), abs=3)
    episode = tasks.sample("val", 4, torch.Generator().manual_seed(0))
    assert episode.support_x.shape == (4, 3, 3, 84, 84)
    assert episode.query_x.shape == (4, 6, 3, 84, 84)
    assert len(list((fixture_root / "cache").glob("miniimagenet-84px-*.pt"))) == 1


def test_missing_data_says_where_to_get_it(tmp_path):
    with pytest.raises(UserError, match=r"mini-ImageNet not found.*train.csv.*docs/data.md"):
        MiniImageNet(data=data_at(tmp_path))
    with pytest.raises(UserError, match="no official download"):
        MiniImageNet(data=data_at(tmp_path, download=True))


def test_missing_or_corrupt_images_are_clear_errors(fixture_root):
    images = sorted((fixture_root / "miniimagenet/images").iterdir())
    images[5].write_bytes(b"\xff\xd8 truncated jpeg")
    with pytest.raises(UserError, match=rf"{images[5].name} is missing or corrupt"):
        MiniImageNet(ways=3, shots=1, queries=2, data=data_at(fixture_root))
    images[5].unlink()
    with pytest.raises(UserError, match=rf"{images[5].name} is missing or corrupt"):
        MiniImageNet(ways=3, shots=1, queries=2, data=data_at(fixture_root))


def test_a_split_file_without_its_columns_is_rejected(fixture_root):
    (fixture_root / "miniimagenet" / "val.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="val.csv is not a mini-ImageNet split file"):
        MiniImageNet(ways=3, shots=1, queries=2, data=data_at(fixture_root))


def test_the_cache_serves_only_the_source_it_was_made_from(fixture_root, tmp_path, monkeypatch):
    decoded = []
    preprocess = miniimagenet.preprocess
    monkeypatch.setattr(miniimagenet, "preprocess",
                        lambda *args: decoded.append(args) or preprocess(*args))
    cache = tmp_path / "shared-cache"

    def load(root):
        data = OmegaConf.create({"root": str(root), "download": False, "cache_dir": str(cache)})
        return MiniImageNet(ways=3, shots=1, queries=2, data=data).splits["train"].images

    first = load(fixture_root)
    assert torch.equal(load(fixture_root), first) and len(decoded) == 1  # reused
    image = sorted((fixture_root / "miniimagenet/images").iterdir())[0]
    Image.fromarray(np.zeros((90, 90, 3), np.uint8)).save(image)  # edited in place
    edited = load(fixture_root)
    assert len(decoded) == 2 and not torch.equal(edited, first) and edited[0].max() == 0
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched only
    load(fixture_root)
    assert len(decoded) == 3
    moved = tmp_path / "elsewhere"
    shutil.move(fixture_root / "miniimagenet", moved / "miniimagenet")
    assert torch.equal(load(moved), edited) and len(decoded) == 4
    shutil.rmtree(moved / "miniimagenet")
    with pytest.raises(UserError, match="mini-ImageNet not found"):
        load(moved)  # a cache is there, but of a source that is gone
    # One file per source location: edits replaced the first one's, the move made another.
    assert len(list(cache.glob("miniimagenet-84px-*.pt"))) == 2
