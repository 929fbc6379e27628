"""CIFAR-FS and FC100 on a small CIFAR-100 the test writes in the real python-version format
(cifar-100-python/train, test and meta: latin-1 pickles of CHW rows): the data is not here."""

import json
import pickle

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from maml_cli.errors import UserError
from maml_cli.tasks.cifar import CIFARFS, FC100, SPLIT_DIR

# CIFAR-100's superclasses and their fine classes (its meta file lists both alphabetically).
SUPERCLASSES = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
FINE = sorted(f for fs in SUPERCLASSES.values() for f in fs)
COARSE = sorted(SUPERCLASSES)
SUPER_OF = {f: s for s, fs in SUPERCLASSES.items() for f in fs}


def write_cifar100(root, per_class=(3, 1)):
    """Image j of fine class c has red = c, green = j, blue = 7 everywhere."""
    folder = root / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, count in zip(("train", "test"), per_class):
        rows, fine, coarse = [], [], []
        for c, f in enumerate(FINE):
            for j in range(count):
                planes = np.stack([np.full((32, 32), v, np.uint8) for v in (c, j, 7)])
                rows.append(planes.reshape(-1))
                fine.append(c)
                coarse.append(COARSE.index(SUPER_OF[f]))
        with open(folder / name, "wb") as out:
            pickle.dump({"filenames": [f"{i}.png" for i in range(len(rows))],
                         "fine_labels": fine, "coarse_labels": coarse,
                         "data": np.stack(rows)}, out, protocol=2)
    with open(folder / "meta", "wb") as out:
        pickle.dump({"fine_label_names": FINE, "coarse_label_names": COARSE}, out, protocol=2)
    return root


def data_at(root):
    return OmegaConf.create({"root": str(root), "download": False, "cache_dir": str(root)})


def classes_of(split):
    """The fine class of each class of a split, from its images' red value."""
    return [FINE[int(split.images[split.index[k, 0], 0, 0, 0])] for k in range(split.num_classes)]


def test_the_split_files_partition_cifar100_as_published():
    fs = json.loads((SPLIT_DIR / "cifar_fs.json").read_text())
    assert {k: len(v) for k, v in fs.items()} == {"train": 64, "val": 16, "test": 20}
    assert sorted(sum(fs.values(), [])) == FINE
    fc = json.loads((SPLIT_DIR / "fc100.json").read_text())
    assert {k: len(v) for k, v in fc.items()} == {"train": 12, "val": 4, "test": 4}
    assert sorted(sum(fc.values(), [])) == COARSE


def test_cifar_fs_pools_both_files_into_its_64_16_20_classes(tmp_path):
    tasks = CIFARFS(ways=5, shots=1, queries=2, data=data_at(write_cifar100(tmp_path)))
    split = json.loads((SPLIT_DIR / "cifar_fs.json").read_text())
    for name, count in (("train", 64), ("val", 16), ("test", 20)):
        s = tasks.splits[name]
        assert s.num_classes == count and (s.counts == 4).all()
        assert s.images.shape == (count * 4, 3, 32, 32) and s.images.dtype == torch.uint8
        assert sorted(classes_of(s)) == split[name]
    # A class's images are whole: every one of its 4 images, channels in CHW order.
    s = tasks.splits["test"]
    assert sorted(s.images[s.index[0], 1, 0, 0].tolist()) == [0, 0, 1, 2]  # 3 train, 1 test
    assert (s.images[:, 2] == 7).all()
    episode = tasks.sample("train", 3, torch.Generator().manual_seed(0))
    assert episode.support_x.shape == (3, 5, 3, 32, 32) and episode.query_x.shape == (3, 10, 3,
                                                                                       32, 32)


def test_fc100_splits_by_superclass(tmp_path):
    tasks = FC100(ways=5, shots=1, queries=2, data=data_at(write_cifar100(tmp_path)))
    split = json.loads((SPLIT_DIR / "fc100.json").read_text())
    supers = {}
    for name, count in (("train", 60), ("val", 20), ("test", 20)):
        s = tasks.splits[name]
        assert s.num_classes == count and (s.counts == 4).all()
        supers[name] = {SUPER_OF[f] for f in classes_of(s)}
        assert sorted(supers[name]) == split[name]
    assert not supers["train"] & supers["test"]


def test_missing_or_corrupt_files_say_where_to_get_them(tmp_path):
    with pytest.raises(UserError, match=r"CIFAR-100 not found: no .*cifar-100-python/train.*"
                                        r"data.download=true"):
        CIFARFS(data=data_at(tmp_path))
    root = write_cifar100(tmp_path / "bad")
    (root / "cifar100" / "cifar-100-python" / "test").write_bytes(b"\x80\x02 truncated")
    with pytest.raises(UserError, match=r"CIFAR-100 file .*test is corrupt or unreadable"):
        FC100(data=data_at(root))
