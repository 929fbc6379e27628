"""Omniglot (Lake et al.), split like the MAML reference code: 1623 characters pooled,
1100 train / 100 validation / 423 test, with rotated copies as extra classes."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from maml_cli.errors import UserError
from maml_cli.tasks.base import SPLITS
from maml_cli.tasks.images import ImageTasks, cached, check_rotations, rotate_classes

PARTS = ("images_background", "images_evaluation")
DRAWINGS = 20
SPLIT_FILE = Path(__file__).parent / "splits" / "omniglot.json"
CACHE_FORMAT = "maml-cli-omniglot/1"
WHERE = ("Omniglot is read from <data.root>/omniglot/ (images_background.zip and "
         "images_evaluation.zip, or those folders extracted, or torchvision's omniglot-py/ "
         "layout); set data.root or MAML_DATA_ROOT, or add data.download=true to fetch it")


def _find(root: Path, part: str) -> Path | None:
    for base in (root / "omniglot", root / "omniglot" / "omniglot-py"):
        for candidate in (base / part, base / f"{part}.zip"):
            if candidate.exists():
                return candidate
    return None


def _pngs(source: Path) -> Iterator[tuple[str, bytes]]:
    """(path like 'images_background/<Alphabet>/characterNN/<file>.png', bytes), sorted."""
    if source.is_dir():
        for path in sorted(source.rglob("*.png")):
            yield f"{source.name}/{path.relative_to(source).as_posix()}", path.read_bytes()
        return
    with zipfile.ZipFile(source) as archive:
        for name in sorted(n for n in archive.namelist() if n.endswith(".png")):
            yield name, archive.read(name)


def download(root: Path) -> None:
    """Fetch both parts with torchvision (its URLs and md5 checks) into root/omniglot/."""
    from torchvision.datasets import Omniglot

    for background in (True, False):
        Omniglot(str(root / "omniglot"), background=background, download=True)


def find_sources(root: Path) -> dict[str, Path]:
    """Where each part of Omniglot is under root: a zip or an extracted folder."""
    sources = {part: _find(root, part) for part in PARTS}
    if None in sources.values():
        missing = ", ".join(part for part, s in sources.items() if s is None)
        raise UserError(f"Omniglot not found under {root / 'omniglot'} (missing {missing}). "
                        f"{WHERE}")
    return sources


def preprocess(sources: dict[str, Path], size: int) -> dict:
    """Every drawing resized to size x size (antialiased) and inverted so strokes are 255:
    {"characters": [paths], "images": uint8 [characters, 20, size, size]}."""
    drawings: dict[str, list[np.ndarray]] = {}
    for source in sources.values():
        try:
            for name, data in _pngs(source):
                image = Image.open(io.BytesIO(data)).convert("L")
                image = image.resize((size, size), Image.LANCZOS)
                drawings.setdefault(name.rsplit("/", 1)[0], []).append(255 - np.asarray(image))
        except (OSError, zipfile.BadZipFile, ValueError) as e:
            raise UserError(f"Omniglot file {source} is corrupt or unreadable ({e})") from None
    wrong = [c for c, d in drawings.items() if len(d) != DRAWINGS]
    if wrong:
        raise UserError(f"Omniglot is incomplete: {wrong[0]} has {len(drawings[wrong[0]])} "
                        f"drawings, not {DRAWINGS} ({len(wrong)} such characters)")
    characters = sorted(drawings)
    return {"characters": characters,
            "images": torch.from_numpy(np.stack([np.stack(drawings[c]) for c in characters]))}


class Omniglot(ImageTasks):
    def __init__(self, ways: int = 5, shots: int = 1, queries: int = 1,
                 eval_queries: int | None = None, eval_shots: int | None = None,
                 rotations: Sequence[int] = (0, 90, 180, 270),
                 image_size: int = 28, loss_scale: float = 1.0, device="cpu", data=None,
                 augment: Sequence[str] = ()):
        self.rotations, self.image_size = check_rotations(rotations), image_size
        super().__init__(ways, shots, queries, eval_queries, loss_scale, device, data, augment,
                         eval_shots)

    def load_splits(self):
        root = Path(self.data.root).expanduser()
        if self.data.download and None in (_find(root, p) for p in PARTS):
            download(root)
        sources = find_sources(root)
        dataset = cached(self.data.cache_dir, f"omniglot-{self.image_size}px", CACHE_FORMAT,
                         list(sources.values()), lambda: preprocess(sources, self.image_size))
        row = {c: i for i, c in enumerate(dataset["characters"])}
        split_characters = json.loads(SPLIT_FILE.read_text())
        missing = [c for s in SPLITS for c in split_characters[s] if c not in row]
        if missing:
            raise UserError(f"Omniglot under {root} lacks {len(missing)} characters of the split "
                            f"file, e.g. {missing[0]}")
        splits = {}
        for name in SPLITS:
            images = dataset["images"][[row[c] for c in split_characters[name]]]
            labels = torch.arange(images.shape[0]).repeat_interleave(DRAWINGS)
            splits[name] = rotate_classes(images.flatten(0, 1).unsqueeze(1), labels,
                                          self.rotations)
        return splits
