"""N-way K-shot image classification from device-resident uint8 image tensors."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from maml_cli import files
from maml_cli.episode import Episode
from maml_cli.errors import UserError
from maml_cli.tasks.base import TaskFamily


@dataclass
class Split:
    images: torch.Tensor  # [N, C, H, W] uint8, on the device
    index: torch.Tensor  # [classes, most images of a class]: image rows of each class, padded
    counts: torch.Tensor  # [classes]: images of each class

    @property
    def num_classes(self) -> int:
        return self.counts.numel()


def fingerprint(sources: Sequence[Path]) -> tuple[str, str]:
    """(where, what) of a dataset's source files: a hash of their resolved paths, and a hash of
    the relative name, size and modification time of every file in them. Any change, move or
    replacement of the source changes one of them; no file is read."""
    where, what = hashlib.sha256(), hashlib.sha256()
    for source in sources:
        source = source.resolve()
        where.update(f"{source}\n".encode())
        for path in sorted(source.rglob("*")) if source.is_dir() else [source]:
            if path.is_file():
                stat = path.stat()
                what.update(f"{source}/{path.relative_to(source)}\0{stat.st_size}\0"
                            f"{stat.st_mtime_ns}\n".encode())
    return where.hexdigest()[:16], what.hexdigest()


def cached(cache_dir: Path, name: str, format_tag: str, sources: Sequence[Path],
           build: Callable[[], dict]) -> dict:
    """A preprocessed dataset from its cache file if that is intact and was made from these
    sources as they are now; else build() it and cache it atomically. Each source location has
    its own file, <cache_dir>/<name>-<hash of where>.pt, which a changed source overwrites.
    Preprocessing decodes every image once; later runs load one tensor file."""
    where, what = fingerprint(sources)
    path = Path(cache_dir).expanduser() / f"{name}-{where}.pt"
    if path.is_file():
        try:
            data = torch.load(path, weights_only=True)
            if data.get("format") == format_tag and data.get("source") == what:
                return data
        except Exception:  # a damaged cache is rebuilt, never trusted
            pass
    data = {"format": format_tag, "source": what, **build()}
    try:
        files.atomic_write(path, lambda f: torch.save(data, f))
    except OSError as e:
        raise UserError(f"cannot write the dataset cache {path}: {e} "
                        "(set data.cache_dir to a writable folder)") from None
    return data


def check_rotations(rotations: Sequence[int]) -> list[int]:
    if not rotations or any(r % 90 for r in rotations) or len(set(rotations)) < len(rotations):
        raise UserError(f"task.rotations must be distinct multiples of 90 (got {rotations})")
    return list(rotations)


def rotate_classes(images: torch.Tensor, labels: torch.Tensor,
                   rotations: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each rotation of each class becomes a class of its own (images [N, C, H, W])."""
    offset = int(labels.max()) + 1
    return (torch.cat([torch.rot90(images, r // 90, dims=(-2, -1)) for r in rotations]),
            torch.cat([labels + i * offset for i in range(len(rotations))]))


AUGMENTS = ("hflip", "crop")


def augment(images: torch.Tensor, transforms: Sequence[str],
            generator: torch.Generator) -> torch.Tensor:
    """Class-preserving random transforms of images [N, C, H, W], each image drawn on its own:
    hflip mirrors it left to right with probability 1/2; crop shifts it by up to 1/8 of its size
    in each direction, the uncovered border zero (a random crop of the zero-padded image, as
    torchvision's RandomCrop(size, padding) does)."""
    n, channels, height, width = images.shape
    dev = images.device
    if "hflip" in transforms:
        flip = torch.rand(n, generator=generator, device=dev) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    if "crop" in transforms:
        pad = max(1, min(height, width) // 8)
        padded = F.pad(images, (pad, pad, pad, pad))
        dy, dx = torch.randint(0, 2 * pad + 1, (2, n, 1), generator=generator, device=dev)
        rows = (dy + torch.arange(height, device=dev))[:, None, :, None]
        cols = (dx + torch.arange(width, device=dev))[:, None, None, :]
        images = padded[torch.arange(n, device=dev)[:, None, None, None],
                        torch.arange(channels, device=dev)[None, :, None, None], rows, cols]
    return images


def group_rows(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, counts) of the rows of each label value, in the labels' sorted order (any label
    values; groups may have different sizes): index [groups, most rows of a group] holds each
    group's row numbers, padded with 0 past its count."""
    order = torch.argsort(labels, stable=True)
    _, counts = torch.unique_consecutive(labels[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    column = torch.arange(int(counts.max()))
    valid = column[None] < counts[:, None]
    index = torch.where(valid, order[(starts[:, None] + column[None]).clamp(max=len(order) - 1)], 0)
    return index, counts


def make_split(images: torch.Tensor, labels: torch.Tensor, device) -> Split:
    """The images grouped by label, on the device."""
    index, counts = group_rows(labels)
    return Split(images.to(device), index.to(device), counts.to(device))


def draw_rows(index: torch.Tensor, counts: torch.Tensor, groups: torch.Tensor, count: int,
              generator: torch.Generator) -> torch.Tensor:
    """`count` distinct rows of each group (class, entity) of `groups`, from group_rows' index
    and counts: [*groups.shape, count]. Random keys, with padding slots pushed past every real
    row, then the first `count` positions: a draw without replacement inside each group."""
    width, dev = index.shape[1], index.device
    keys = torch.rand(*groups.shape, width, generator=generator, device=dev)
    padding = torch.arange(width, device=dev) >= counts[groups][..., None]
    picks = keys.masked_fill(padding, 2.0).argsort(dim=-1)[..., :count]
    return index[groups[..., None], picks]


class ImageTasks(TaskFamily):
    """Episodes are gathered on the device: classes without replacement per task, then images
    without replacement per class; a class's label is its position among the task's classes,
    so labels are shuffled per task. Training episodes' images go through the `augment`
    transforms (AUGMENTS), validation and test ones never. Subclasses provide the splits
    (`load_splits`)."""

    metric_name = "accuracy"
    higher_is_better = True

    def __init__(self, ways: int = 5, shots: int = 1, queries: int = 15,
                 eval_queries: int | None = None, loss_scale: float = 1.0,
                 device: torch.device | str = "cpu", data=None, augment: Sequence[str] = (),
                 eval_shots: int | None = None):
        super().__init__(device, data)
        self.ways, self.shots, self.queries = ways, shots, queries
        self.augment = list(augment)
        self.eval_shots = shots if eval_shots is None else eval_shots
        self.eval_queries = queries if eval_queries is None else eval_queries
        self.loss_scale = loss_scale
        self.splits = {name: make_split(*data_, self.device)
                       for name, data_ in self.load_splits().items()}
        first = next(iter(self.splits.values())).images
        self.input_shape, self.num_outputs = tuple(first.shape[1:]), ways
        for name, split in self.splits.items():
            self._check(name, split)

    def load_splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{split: (uint8 images [N, C, H, W], integer labels [N])} for every split."""
        raise NotImplementedError

    def _check(self, name: str, split: Split) -> None:
        if split.num_classes < self.ways:
            raise UserError(f"task.ways={self.ways} but the {name} split has only "
                            f"{split.num_classes} classes")
        need = sum(self.per_class(name))
        smallest = int(split.counts.argmin())
        if int(split.counts[smallest]) < need:
            sizes = "task.shots + queries" if name == "train" else "task.eval_shots + eval_queries"
            raise UserError(f"{sizes} = {need} but {self.class_label(name, smallest)} "
                            f"of the {name} split has only {int(split.counts[smallest])} images")

    def per_class(self, split: str) -> tuple[int, int]:
        """(support, query) images per class of the split's tasks: validation and test take
        eval_shots and eval_queries."""
        return ((self.shots, self.queries) if split == "train"
                else (self.eval_shots, self.eval_queries))

    def class_label(self, split: str, index: int) -> str:
        """How errors name class `index` (its label) of a split."""
        return "a class"

    def sample_rows(self, split: str, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        """Image rows [T, ways, shots + queries] of the split's image tensor: row [t, c] holds
        distinct images of one class, and the classes of a task are distinct."""
        s = self.splits[split]
        per_class, dev = sum(self.per_class(split)), self.device
        classes = torch.rand(num_tasks, s.num_classes, generator=generator, device=dev)
        classes = classes.argsort(dim=1)[:, : self.ways]  # [T, ways]
        return draw_rows(s.index, s.counts, classes, per_class, generator)

    def sample(self, split: str, num_tasks: int, generator: torch.Generator) -> Episode:
        rows = self.sample_rows(split, num_tasks, generator)
        x = self.splits[split].images[rows].float().div_(255)  # [T, ways, per_class, C, H, W]
        if self.augment and split == "train":
            x = augment(x.flatten(0, 2), self.augment, generator).view_as(x)
        y = torch.arange(self.ways, device=self.device).view(1, -1, 1).expand_as(rows)

        def take(part):
            # One image of every class, then the next: any consecutive slice (an inner
            # minibatch) is as balanced as it can be.
            return (x[:, :, part].transpose(1, 2).flatten(1, 2),
                    y[:, :, part].transpose(1, 2).flatten(1, 2))

        shots = self.per_class(split)[0]
        return Episode(*take(slice(0, shots)), *take(slice(shots, None)))

    def loss(self, prediction, target):
        return F.cross_entropy(prediction, target) * self.loss_scale

    def metric(self, prediction, target):
        return (prediction.argmax(dim=-1) == target).float().mean()

