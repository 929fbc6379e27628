"""CUB-200-2011 (Wah et al. 2011): 200 bird species, 11,788 photographs, with the class split of
Chen et al. 2019 ("A Closer Look at Few-shot Classification", its write_CUB_filelist.py): the
species folders sorted by name, the even-numbered 100 for training, those numbered 1 mod 4 (50)
for validation and 3 mod 4 (50) for test."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from maml_cli.errors import UserError
from maml_cli.tasks.folder import FolderTasks

WHERE = ("CUB-200-2011 is read from <data.root>/cub/CUB_200_2011/images/<species>/*.jpg, the "
         "layout of its original archive CUB_200_2011.tgz (from "
         "https://www.vision.caltech.edu/datasets/cub_200_2011/, extracted under "
         "<data.root>/cub/); set data.root or MAML_DATA_ROOT")


class CUB(FolderTasks):
    """N-way K-shot classification of bird species, every photograph resized to `image_size`
    (84, as for mini-ImageNet), in colour."""

    cache_name = "cub"

    def __init__(self, ways: int = 5, shots: int = 1, queries: int = 15,
                 eval_queries: int | None = None, eval_shots: int | None = None,
                 image_size: int = 84,
                 loss_scale: float = 1.0, device="cpu", data=None, augment: Sequence[str] = ()):
        if data.download:
            raise UserError("CUB-200-2011 has no download built in. " + WHERE)
        root = Path(data.root).expanduser() / "cub" / "CUB_200_2011" / "images"
        super().__init__(str(root), ways, shots, queries, eval_queries, eval_shots, image_size, 3,
                         None, loss_scale, device, data, augment)

    def class_split(self):
        if not self.path.is_dir():
            raise UserError(f"CUB-200-2011 not found: no folder {self.path}. {WHERE}")
        species = sorted(p for p in self.path.iterdir() if p.is_dir())
        if len(species) != 200:
            raise UserError(f"{self.path} holds {len(species)} species folders, not "
                            f"CUB-200-2011's 200. {WHERE}")
        return {"train": species[0::2], "val": species[1::4], "test": species[3::4]}
