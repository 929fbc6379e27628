"""Omniglot on the real, complete dataset in ../shared/data/omniglot."""

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from maml_cli.errors import UserError
from maml_cli.tasks import omniglot
from maml_cli.tasks.omniglot import SPLIT_FILE, Omniglot


@pytest.fixture(scope="module")
def tasks(data_config):
    return Omniglot(ways=5, shots=1, queries=2, data=data_config)


def test_split_file_is_1100_100_423_disjoint_characters_covering_the_dataset(shared_data):
    split = json.loads(SPLIT_FILE.read_text())
    assert {k: len(v) for k, v in split.items()} == {"train": 1100, "val": 100, "test": 423}
    every = [c for v in split.values() for c in v]
    assert len(set(every)) == 1623
    in_zips = set()
    for part in omniglot.PARTS:
        with zipfile.ZipFile(shared_data / "omniglot" / f"{part}.zip") as z:
            in_zips |= {n.rsplit("/", 1)[0] for n in z.namelist() if n.endswith(".png")}
    assert set(every) == in_zips


def test_splits_hold_every_rotation_of_their_characters(tasks):
    for name, characters in (("train", 1100), ("val", 100), ("test", 423)):
        split = tasks.splits[name]
        assert split.num_classes == 4 * characters and (split.counts == 20).all()
        assert split.images.shape == (4 * characters * 20, 1, 28, 28)
    # Class (90 degrees, character i) holds character i's drawings turned by 90 degrees.
    s = tasks.splits["val"]
    for i in (0, 57, 99):
        torch.testing.assert_close(s.images[s.index[100 + i]],
                                   torch.rot90(s.images[s.index[i]], 1, dims=(-2, -1)))
        torch.testing.assert_close(s.images[s.index[300 + i]],
                                   torch.rot90(s.images[s.index[i]], 3, dims=(-2, -1)))


def test_images_are_resized_inverted_strokes(tasks):
    images = tasks.splits["test"].images
    assert images.dtype == torch.uint8 and images.max() == 255 and images.min() == 0
    # Strokes are 255 on a 0 background: the ink covers a small part of each image.
    assert images.float().mean() < 40


def test_episodes_from_the_real_data(tasks):
    episode = tasks.sample("train", 32, torch.Generator().manual_seed(0))
    assert episode.support_x.shape == (32, 5, 1, 28, 28)
    assert episode.query_x.shape == (32, 10, 1, 28, 28)
    assert episode.support_y.min() == 0 and episode.support_y.max() == 4
    rows = tasks.sample_rows("test", 64, torch.Generator().manual_seed(1))
    assert rows.max() < len(tasks.splits["test"].images)
    support, query = rows[..., :1].flatten(1), rows[..., 1:].flatten(1)
    assert not (support[:, :, None] == query[:, None, :]).any()


def test_cache_is_reused_and_a_damaged_cache_rebuilt(tasks, data_config, monkeypatch):
    [cache] = Path(data_config.cache_dir).glob("omniglot-28px-*.pt")

    def no_decoding(*args):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(omniglot, "preprocess", no_decoding)
    again = Omniglot(ways=5, shots=1, queries=2, data=data_config)
    assert torch.equal(again.splits["train"].images, tasks.splits["train"].images)
    monkeypatch.undo()
    backup = cache.read_bytes()
    try:
        cache.write_bytes(backup[: len(backup) // 3])
        rebuilt = Omniglot(ways=5, shots=1, queries=2, data=data_config)
        assert torch.equal(rebuilt.splits["val"].images, tasks.splits["val"].images)
        assert cache.stat().st_size == len(backup)
    finally:
        cache.write_bytes(backup)


def data_at(root, cache):
    return OmegaConf.create({"root": str(root), "download": False, "cache_dir": str(cache)})


def test_missing_data_says_where_to_put_it(tmp_path, tasks, data_config):
    with pytest.raises(UserError, match=r"Omniglot not found under .*data.download=true"):
        Omniglot(data=data_at(tmp_path, tmp_path / "cache"))
    # ... even where a cache of the real data is at hand: it is not this (absent) source's.
    with pytest.raises(UserError, match=r"Omniglot not found under"):
        Omniglot(data=data_at(tmp_path, data_config.cache_dir))


def test_corrupt_data_is_a_clear_error(tmp_path, shared_data):
    (tmp_path / "omniglot").mkdir()
    shutil.copy(shared_data / "omniglot" / "images_evaluation.zip", tmp_path / "omniglot")
    (tmp_path / "omniglot" / "images_background.zip").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(UserError, match="images_background.zip is corrupt"):
        Omniglot(data=data_at(tmp_path, tmp_path / "cache"))
