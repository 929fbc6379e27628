"""Few-shot episodes from a folder of one's own images, in torchvision's ImageFolder layout (one
folder of images per class), decoded once and cached like the built-in datasets.

The classes are split into train / val / test either by three folders, <path>/train/<class>/,
<path>/val/<class>/ and <path>/test/<class>/, or by a split file listing the class folders of
<path> for each split (<path>/split.json unless task.split_file says otherwise), which

    python -m maml_cli.tasks.folder <path> [--seed 0] [--val 0.16] [--test 0.2]

writes once, seeded, to be kept beside the data as the Omniglot split is kept beside its code.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from maml_cli.errors import UserError
from maml_cli.tasks.base import SPLITS, random_split
from maml_cli.tasks.images import ImageTasks, cached

SPLIT_FILE = "split.json"
CACHE_FORMAT = "maml-cli-folder/1"
SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
HOW = (f"put the class folders in train/, val/ and test/ under task.path, or list them per "
       f"split in {SPLIT_FILE} (python -m maml_cli.tasks.folder <path> writes a seeded one)")


def class_folders(root: Path, split_file: Path) -> dict[str, list[Path]]:
    """The class folders of each split: root's train/, val/ and test/ folders, else the
    split file's lists of root's folders."""
    if all((root / split).is_dir() for split in SPLITS):
        return {split: sorted(p for p in (root / split).iterdir() if p.is_dir())
                for split in SPLITS}
    if not split_file.is_file():
        raise UserError(f"{root} has no train/, val/ and test/ folders and no split file "
                        f"{split_file}: {HOW}")
    try:
        listed = json.loads(split_file.read_text())
        assert isinstance(listed, dict) and set(listed) == set(SPLITS)
        assert all(isinstance(c, str) for split in SPLITS for c in listed[split])
    except (ValueError, AssertionError):
        raise UserError(f"{split_file} is not a split file: it must be a JSON object with the "
                        f"lists train, val and test of class folder names") from None
    every = [c for split in SPLITS for c in listed[split]]
    if len(set(every)) < len(every):
        twice = next(c for c in every if every.count(c) > 1)
        raise UserError(f"{split_file} lists class {twice!r} more than once")
    missing = [c for c in every if not (root / c).is_dir()]
    if missing:
        raise UserError(f"{split_file} lists class {missing[0]!r}, which is not a folder of "
                        f"{root} ({len(missing)} such)")
    return {split: [root / c for c in listed[split]] for split in SPLITS}


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())


def decode(classes: dict[str, list[Path]], size: int | None, channels: int | None) -> dict:
    """{split: uint8 images [N, C, H, W], split + "_labels": [N], "classes": {split: names}}.
    Channels default to 1 when every image is greyscale, else 3; without `size` every image
    must have the same size."""
    files = {split: [(label, path) for label, folder in enumerate(folders)
                     for path in images_in(folder)] for split, folders in classes.items()}
    for split, folders in classes.items():
        empty = set(range(len(folders))) - {label for label, _ in files[split]}
        if empty:
            raise UserError(f"class folder {folders[min(empty)]} has no images "
                            f"({', '.join(sorted(SUFFIXES))})")
    shapes = {}
    for _, path in (item for split in SPLITS for item in files[split]):
        try:
            with Image.open(path) as image:
                shapes[path] = (image.mode, image.size)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read image {path} ({type(e).__name__})") from None
    if channels is None:
        channels = 1 if all(mode in GREY_MODES for mode, _ in shapes.values()) else 3
    if size is None:
        sizes = {}
        for path, (_, wh) in shapes.items():
            sizes.setdefault(wh, path)
        if len(sizes) > 1:
            (a, first), (b, other) = list(sizes.items())[:2]
            raise UserError(f"the images differ in size ({first} is {a[0]}x{a[1]}, {other} is "
                            f"{b[0]}x{b[1]}); set task.image_size to resize them all")
    out: dict = {"classes": {split: [f.name for f in folders]
                             for split, folders in classes.items()}}
    for split in SPLITS:
        images = []
        for _, path in files[split]:
            try:
                with Image.open(path) as image:
                    image = image.convert("L" if channels == 1 else "RGB")
                    if size is not None and image.size != (size, size):
                        image = image.resize((size, size), Image.LANCZOS)
                    images.append(np.asarray(image).reshape(image.size[1], image.size[0], -1))
            except (OSError, ValueError) as e:
                raise UserError(f"cannot read image {path} ({type(e).__name__})") from None
        out[split] = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        out[f"{split}_labels"] = torch.tensor([label for label, _ in files[split]])
    return out


class FolderTasks(ImageTasks):
    """N-way K-shot classification over the classes of `path` (see the module's docstring).
    `image_size`: resize every image to this square size (null: keep the images' own size,
    which must then be the same for all); `channels`: 1 or 3 (null: 1 when every image is
    greyscale, else 3)."""

    cache_name = "folder"

    def __init__(self, path: str, ways: int = 5, shots: int = 1, queries: int = 15,
                 eval_queries: int | None = None, eval_shots: int | None = None,
                 image_size: int | None = None,
                 channels: int | None = None, split_file: str | None = None,
                 loss_scale: float = 1.0, device="cpu", data=None, augment: Sequence[str] = ()):
        self.path, self.image_size, self.channels = Path(path).expanduser(), image_size, channels
        self.split_file = (Path(split_file).expanduser() if split_file
                           else self.path / SPLIT_FILE)
        super().__init__(ways, shots, queries, eval_queries, loss_scale, device, data, augment,
                         eval_shots)

    def class_split(self) -> dict[str, list[Path]]:
        """The class folders of each split."""
        if not self.path.is_dir():
            raise UserError(f"task.path={self.path} is not a folder")
        return class_folders(self.path, self.split_file)

    def load_splits(self):
        classes = self.class_split()
        sources = [self.path] + ([self.split_file] if self.split_file.is_file()
                                 and not self.split_file.resolve().is_relative_to(
                                     self.path.resolve()) else [])
        name = f"{self.cache_name}-{self.image_size or 'native'}px-{self.channels or 'auto'}ch"
        dataset = cached(self.data.cache_dir, name, CACHE_FORMAT, sources,
                         lambda: decode(classes, self.image_size, self.channels))
        self.class_names = dataset["classes"]
        return {split: (dataset[split], dataset[f"{split}_labels"]) for split in SPLITS}

    def class_label(self, split: str, index: int) -> str:
        return f"class {self.class_names[split][index]!r}"


def write_split(root: Path, seed: int = 0, val: float = 0.16, test: float = 0.2) -> Path:
    """Split root's class folders at random (Python's random.Random(seed) on their sorted
    names) into train / val / test and write root/split.json; never over an existing one."""
    path = root / SPLIT_FILE
    if path.exists():
        raise UserError(f"{path} exists already; a split is written once (delete it to make "
                        "another)")
    names = [p.name for p in root.iterdir() if p.is_dir()]
    split = random_split(names, seed, val, test, "class folders")
    path.write_text(json.dumps(split, indent=1) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=write_split.__doc__.split(";")[0])
    parser.add_argument("path", type=Path, help="the folder of class folders")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val", type=float, default=0.16, help="share of classes (0.16)")
    parser.add_argument("--test", type=float, default=0.2, help="share of classes (0.2)")
    args = parser.parse_args()
    try:
        path = write_split(args.path.expanduser(), args.seed, args.val, args.test)
    except UserError as e:
        parser.exit(2, f"error: {e}\n")
    split = json.loads(path.read_text())
    print(f"wrote {path}: " + " / ".join(f"{len(split[s])} {s}" for s in SPLITS) + " classes")


if __name__ == "__main__":
    main()
