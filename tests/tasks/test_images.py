"""The episode sampler shared by every image family, on small generated splits."""

import pytest
import torch

from maml_cli.errors import UserError
from maml_cli.tasks.images import ImageTasks


class Generated(ImageTasks):
    """Classes of different sizes; each image's pixels encode its own row number."""

    sizes = [7, 5, 9, 6, 8, 5]

    def load_splits(self):
        labels = torch.cat([torch.full((n,), c * 10) for c, n in enumerate(self.sizes)])
        rows = torch.arange(len(labels))
        images = torch.stack([rows % 256, rows // 256]).T.to(torch.uint8)[:, None, :, None]
        return {s: (images.expand(-1, 1, 2, 3).clone(), labels) for s in ("train", "val", "test")}


def class_of(tasks, split, rows):
    """The class position of each image row, read back from the split's index."""
    owner = torch.full((len(tasks.splits[split].images),), -1)
    s = tasks.splits[split]
    for c in range(s.num_classes):
        owner[s.index[c, : s.counts[c]]] = c
    return owner[rows]


def test_rows_are_distinct_images_of_distinct_classes():
    tasks = Generated(ways=3, shots=2, queries=3)
    rows = tasks.sample_rows("train", 200, torch.Generator().manual_seed(0))
    assert rows.shape == (200, 3, 5)
    classes = class_of(tasks, "train", rows)
    assert (classes == classes[..., :1]).all()  # one class per row of the task
    assert all(len(set(classes[t, :, 0].tolist())) == 3 for t in range(200))
    flat = rows.flatten(1)
    assert all(len(set(flat[t].tolist())) == flat.shape[1] for t in range(200))  # no repeats
    # Every class, and every image of the smallest classes, gets drawn.
    assert set(classes.flatten().tolist()) == set(range(6))


def test_episode_shapes_labels_and_per_task_label_shuffle():
    tasks = Generated(ways=3, shots=2, queries=3, eval_queries=1)
    generator = torch.Generator().manual_seed(1)
    episode = tasks.sample("train", 50, generator)
    assert episode.support_x.shape == (50, 6, 1, 2, 3) and episode.query_x.shape == (50, 9, 1, 2, 3)
    assert episode.support_x.dtype == torch.float32 and episode.support_x.max() <= 1
    for y, per_class in ((episode.support_y, 2), (episode.query_y, 3)):
        # One image of every class at a time, so a minibatch of any 3 in a row is balanced.
        assert torch.equal(y, torch.arange(3).repeat(per_class).expand(50, -1))
    # Support and query never share an image (pixels encode the row).
    def rows(x):
        pixels = (x[:, 0, :, 0] * 255).round().long()
        return set((pixels[:, 0] + 256 * pixels[:, 1]).tolist())

    for t in range(50):
        assert not rows(episode.support_x[t]) & rows(episode.query_x[t])
    assert tasks.sample("val", 4, generator).query_x.shape[1] == 3  # eval_queries per class
    # The class behind label 0 changes from task to task.
    first = class_of(tasks, "train", tasks.sample_rows("train", 100, generator)[:, 0, 0])
    assert len(set(first.tolist())) > 3


def test_validation_and_test_tasks_take_eval_shots_and_eval_queries():
    tasks = Generated(ways=3, shots=4, queries=1, eval_shots=1, eval_queries=2)
    generator = torch.Generator().manual_seed(2)
    train = tasks.sample("train", 5, generator)
    assert (train.support_x.shape[1], train.query_x.shape[1]) == (12, 3)
    for split in ("val", "test"):
        episode = tasks.sample(split, 5, generator)
        assert (episode.support_x.shape[1], episode.query_x.shape[1]) == (3, 6)
        assert torch.equal(episode.support_y, torch.arange(3).expand(5, -1))
        assert torch.equal(episode.query_y, torch.arange(3).repeat(2).expand(5, -1))
        assert tasks.sample_rows(split, 5, generator).shape == (5, 3, 3)
    same = Generated(ways=3, shots=4, queries=1)  # null: as in training
    assert same.sample("val", 2, generator).support_x.shape[1] == 12


def test_sampling_depends_only_on_the_generator():
    tasks = Generated(ways=2, shots=1, queries=1)
    a = tasks.sample_rows("test", 10, torch.Generator().manual_seed(5))
    b = tasks.sample_rows("test", 10, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_loss_scale_and_accuracy():
    tasks = Generated(ways=2, shots=1, queries=1, loss_scale=2.0)
    logits, target = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
    torch.testing.assert_close(tasks.loss(logits, target),
                               2 * torch.nn.functional.cross_entropy(logits, target))
    assert tasks.metric(logits, target).item() == 0.5


@pytest.mark.parametrize("kwargs, message", [
    ({"ways": 7, "shots": 1, "queries": 1}, "task.ways=7 but the train split has only 6"),
    ({"ways": 2, "shots": 3, "queries": 3}, "task.shots + queries = 6 but a class"),
    ({"ways": 2, "shots": 1, "queries": 1, "eval_shots": 5},
     "task.eval_shots + eval_queries = 6 but a class of the val split"),
])
def test_impossible_episodes_are_clear_errors(kwargs, message):
    with pytest.raises(UserError, match=message.replace("+", r"\+")):
        Generated(**kwargs)


class Gradients(ImageTasks):
    """Six classes of four 8x8 images, every pixel distinct (a ramp plus the image's row)."""

    def load_splits(self):
        ramp = torch.arange(64).view(1, 1, 8, 8)
        images = (ramp + 3 * torch.arange(24).view(-1, 1, 1, 1)).to(torch.uint8)
        labels = torch.arange(24) // 4
        return {s: (images.clone(), labels) for s in ("train", "val", "test")}


def unaugmented(tasks, split, seed):
    """The episode's images as drawn without transforms (the same rows, same generator state)."""
    rows = tasks.sample_rows(split, 64, torch.Generator().manual_seed(seed))
    return tasks.splits[split].images[rows].float().div(255).flatten(0, 2)


def test_training_images_are_mirrored_or_shifted_and_evaluation_ones_never():
    seed = 3
    for transforms in (["hflip"], ["crop"], ["hflip", "crop"]):
        tasks = Gradients(ways=3, shots=1, queries=2, augment=transforms)
        plain = unaugmented(tasks, "train", seed)
        episode = tasks.sample("train", 64, torch.Generator().manual_seed(seed))
        # The sampler's layout: [tasks, ways, shots + queries] before support and query split.
        x = torch.cat([episode.support_x.view(64, 1, 3, 1, 8, 8),
                       episode.query_x.view(64, 2, 3, 1, 8, 8)], 1).transpose(1, 2)
        got = x.flatten(0, 2)
        candidates = [plain, plain.flip(-1)] if transforms == ["hflip"] else []
        if "crop" in transforms:  # a shift of up to 1 pixel (8 // 8), zeros where uncovered
            bases = [plain, plain.flip(-1)] if "hflip" in transforms else [plain]
            padded = [torch.nn.functional.pad(b, (1, 1, 1, 1)) for b in bases]
            candidates = [p[..., dy:dy + 8, dx:dx + 8] for p in padded
                          for dy in range(3) for dx in range(3)]
        matches = torch.stack([(got == c).flatten(1).all(1) for c in candidates])
        assert matches.any(0).all(), transforms  # each image is one of its allowed transforms
        assert (matches.float().mean(1) < 0.9).all()  # and no one transform is always drawn
        for split in ("val", "test"):
            val = tasks.sample(split, 64, torch.Generator().manual_seed(seed))
            assert torch.equal(val.support_x.view(64, 3, 1, 8, 8).flatten(0, 1),
                               unaugmented(tasks, split, seed)[::3][:192])
