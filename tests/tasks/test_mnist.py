"""MNIST on the real files in ../shared/data/mnist, read through torchvision."""

import pytest
import torch
from omegaconf import OmegaConf

from maml_cli.errors import UserError
from maml_cli.tasks.mnist import MNIST

# Images per digit in the official files (shared/data/mnist/README.md).
TRAIN_FILE = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_FILE = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def tasks(data_config):
    return MNIST(data=data_config)


def test_default_split_is_disjoint_digits_from_the_right_files(tasks):
    assert tasks.classes == {"train": [0, 1, 2, 3], "val": [4, 5, 6], "test": [7, 8, 9]}
    for name, digits, counts in (("train", [0, 1, 2, 3], TRAIN_FILE),
                                 ("val", [4, 5, 6], TRAIN_FILE),
                                 ("test", [7, 8, 9], TEST_FILE)):
        assert tasks.splits[name].counts.tolist() == [counts[d] for d in digits]


def test_test_images_come_from_the_official_test_file(tasks, data_config):
    from torchvision.datasets import MNIST as TorchvisionMNIST

    official = TorchvisionMNIST(f"{data_config.root}/mnist", train=False)
    sevens = official.data[official.targets == 7]
    split = tasks.splits["test"]
    torch.testing.assert_close(split.images[split.index[0, : split.counts[0]], 0], sevens)


def test_episode_shapes(tasks):
    episode = tasks.sample("train", 8, torch.Generator().manual_seed(0))
    assert episode.support_x.shape == (8, 3, 1, 28, 28)
    assert episode.query_x.shape == (8, 45, 1, 28, 28)
    assert episode.query_y.max() == 2


def test_overlapping_class_sets_are_rejected(data_config):
    with pytest.raises(UserError, match="must be disjoint digits"):
        MNIST(train_classes=[0, 1, 2], val_classes=[2, 3, 4], data=data_config)


def test_missing_files_are_a_clear_error(tmp_path):
    data = OmegaConf.create({"root": str(tmp_path), "download": False, "cache_dir": str(tmp_path)})
    with pytest.raises(UserError, match=r"MNIST missing or unreadable under .*data.download=true"):
        MNIST(data=data)


def test_each_rotation_of_a_digit_is_a_class_of_its_own(tasks, data_config):
    rotated = MNIST(rotations=[0, 90, 180, 270], data=data_config)
    for name in ("train", "val", "test"):
        plain, split = tasks.splits[name], rotated.splits[name]
        assert split.num_classes == 4 * plain.num_classes
        assert split.counts.tolist() == plain.counts.tolist() * 4
    # Class 4 + d of the training split is digit d turned by 90 degrees.
    plain, split = tasks.splits["train"], rotated.splits["train"]
    first = plain.images[plain.index[2, 0]]
    torch.testing.assert_close(split.images[split.index[4 + 2, 0]],
                               torch.rot90(first, 1, dims=(-2, -1)))
    with pytest.raises(UserError, match="task.rotations must be distinct multiples of 90"):
        MNIST(rotations=[0, 45], data=data_config)
