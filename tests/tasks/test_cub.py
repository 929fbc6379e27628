"""CUB-200-2011 on a small copy the test writes in the original archive's layout (200 species
folders of JPEGs under CUB_200_2011/images/): the data itself is not here."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from maml_cli.errors import UserError
from maml_cli.tasks.cub import CUB


def write_cub(root, species=200, photos=3):
    """Photographs of assorted sizes; species i's have red = i (mod 256)."""
    images = root / "cub" / "CUB_200_2011" / "images"
    rng = np.random.default_rng(0)
    for i in range(species):
        folder = images / f"{i + 1:03d}.Species_{i + 1}"
        folder.mkdir(parents=True)
        for j in range(photos):
            h, w = rng.integers(20, 40, size=2)
            pixels = np.zeros((h, w, 3), np.uint8)
            pixels[..., 0] = i
            Image.fromarray(pixels).save(folder / f"Species_{i + 1}_{j:04d}.jpg", quality=95)
    return root


def data_at(root, download=False):
    return OmegaConf.create({"root": str(root), "download": download,
                             "cache_dir": str(root / "cache")})


def test_the_closer_look_split_of_the_sorted_species(tmp_path):
    tasks = CUB(ways=5, shots=1, queries=2, image_size=16, data=data_at(write_cub(tmp_path)))
    species = {name: [int(c.split(".")[0]) - 1 for c in tasks.class_names[name]]
               for name in ("train", "val", "test")}
    assert species["train"] == list(range(0, 200, 2))
    assert species["val"] == list(range(1, 200, 4)) and species["test"] == list(range(3, 200, 4))
    s = tasks.splits["test"]
    assert s.images.shape == (50 * 3, 3, 16, 16) and (s.counts == 3).all()
    # Each class's resized photographs keep their species' red (JPEG rounding aside).
    red = s.images[s.index[:, 0], 0].float().mean((1, 2))
    assert torch.allclose(red, torch.tensor(species["test"], dtype=torch.float), atol=3)
    assert tasks.sample("val", 2, torch.Generator().manual_seed(0)).query_x.shape == (
        2, 10, 3, 16, 16)


def test_missing_or_partial_data_says_where_to_get_it(tmp_path):
    with pytest.raises(UserError, match=r"CUB-200-2011 not found: no folder .*images.*"
                                        r"CUB_200_2011.tgz"):
        CUB(data=data_at(tmp_path))
    with pytest.raises(UserError, match="holds 12 species folders, not CUB-200-2011's 200"):
        CUB(data=data_at(write_cub(tmp_path / "partial", species=12)))
    with pytest.raises(UserError, match="has no download built in"):
        CUB(data=data_at(tmp_path, download=True))
