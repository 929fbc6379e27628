"""task=folder on image trees the tests write in the ImageFolder layout (PNG and JPEG files):
both split layouts, the split command, episodes, the cache, and every one-line error."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from maml_cli.errors import UserError
from maml_cli.tasks import folder
from maml_cli.tasks.folder import FolderTasks, write_split

SPLIT_CLASSES = {"train": 6, "val": 3, "test": 3}


def write_class(path, images, size=(20, 20), mode="L", suffix=".png", seed=0):
    """`images` images of one class: the class's own bright square on noise."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    corner = rng.integers(0, min(size) // 2, size=2)
    for i in range(images):
        pixels = rng.integers(0, 60, size=(size[1], size[0], 3 if mode == "RGB" else 1),
                              dtype=np.uint8)
        pixels[corner[1]:corner[1] + 6, corner[0]:corner[0] + 6] = 255
        Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode).save(
            path / f"img{i:03d}{suffix}")


def write_tree(root, layout="folders", images=5, **kwargs):
    seed = 0
    for split, classes in SPLIT_CLASSES.items():
        for c in range(classes):
            seed += 1
            where = root / split if layout == "folders" else root
            write_class(where / f"{split}_class{c}", images, seed=seed, **kwargs)
    if layout == "file":
        (root / "split.json").write_text(json.dumps(
            {s: [f"{s}_class{c}" for c in range(n)] for s, n in SPLIT_CLASSES.items()}))
    return root


def load(root, cache=None, **kwargs):
    data = OmegaConf.create({"root": "unused", "download": False,
                             "cache_dir": str(cache or root.parent / "cache")})
    options = {"ways": 3, "shots": 1, "queries": 2} | kwargs
    return FolderTasks(path=str(root), data=data, **options)


@pytest.mark.parametrize("layout", ["folders", "file"])
def test_either_layout_gives_disjoint_splits_of_their_classes(tmp_path, layout):
    tasks = load(write_tree(tmp_path / "tree", layout))
    for split, classes in SPLIT_CLASSES.items():
        s = tasks.splits[split]
        assert s.num_classes == classes and (s.counts == 5).all()
        assert s.images.shape == (classes * 5, 1, 20, 20) and s.images.dtype == torch.uint8
        assert tasks.class_names[split] == [f"{split}_class{c}" for c in range(classes)]
    assert tasks.input_shape == (1, 20, 20)
    episode = tasks.sample("val", 4, torch.Generator().manual_seed(0))
    assert episode.support_x.shape == (4, 3, 1, 20, 20)
    assert episode.query_x.shape == (4, 6, 1, 20, 20)
    assert episode.query_y[0].tolist() == [0, 1, 2, 0, 1, 2]
    # Each episode's label i is one class: its images share the class's bright square.
    x, y = episode.query_x[0, :, 0], episode.query_y[0]
    for label in range(3):
        bright = x[y == label] == 1.0
        assert bright.all(0).sum() == 36  # the 6x6 square, in every image of the class


def test_colour_is_inferred_and_sizes_are_resized_when_asked(tmp_path):
    root = tmp_path / "tree"
    write_tree(root, mode="RGB", suffix=".jpg")
    write_class(root / "train" / "big", 5, size=(30, 24), mode="RGB", suffix=".jpg", seed=99)
    with pytest.raises(UserError, match=r"the images differ in size \(.*big/img000.jpg is 30x24, "
                                        r".*train_class0/img000.jpg is 20x20\); set task.image"):
        load(root)
    tasks = load(root, image_size=16)
    assert tasks.input_shape == (3, 16, 16) and tasks.splits["train"].num_classes == 7
    assert load(root, image_size=16, channels=1).input_shape == (1, 16, 16)


def test_the_cache_is_reused_and_follows_a_changed_folder(tmp_path, monkeypatch):
    root = write_tree(tmp_path / "tree")
    first = load(root)
    monkeypatch.setattr(folder, "decode", lambda *args: pytest.fail("the cache was not used"))
    assert torch.equal(load(root).splits["test"].images, first.splits["test"].images)
    monkeypatch.undo()
    write_class(root / "test" / "test_class9", 5, seed=50)  # a class added
    assert load(root).splits["test"].num_classes == 4


def test_the_split_command_writes_a_seeded_split_once(tmp_path):
    root = tmp_path / "flat"
    for c in range(10):
        write_class(root / f"class{c}", 3, seed=c)
    done = subprocess.run([sys.executable, "-m", "maml_cli.tasks.folder", str(root),
                           "--seed", "3"], capture_output=True, text=True)
    assert done.returncode == 0 and "2 val / 2 test" in done.stdout
    split = json.loads((root / "split.json").read_text())
    assert {s: len(v) for s, v in split.items()} == {"train": 6, "val": 2, "test": 2}
    assert sorted(sum(split.values(), [])) == sorted(f"class{c}" for c in range(10))
    other = tmp_path / "again"
    for c in range(10):
        write_class(other / f"class{c}", 1, seed=c)
    assert json.loads(write_split(other, seed=3).read_text()) == split  # seeded
    again = subprocess.run([sys.executable, "-m", "maml_cli.tasks.folder", str(root)],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "exists already" in again.stderr
    tasks = load(root, ways=2, queries=2)
    assert tasks.splits["val"].num_classes == 2


def test_bad_trees_are_one_line_errors_naming_what_is_wrong(tmp_path):
    with pytest.raises(UserError, match=r"task.path=.*nowhere is not a folder"):
        load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no train/, val/ and test/ folders and no split file"):
        load(tmp_path / "empty")
    root = write_tree(tmp_path / "few", images=2)
    with pytest.raises(UserError, match=r"task.shots \+ queries = 3 but class 'train_class0' of "
                                        r"the train split has only 2 images"):
        load(root)
    with pytest.raises(UserError, match="task.ways=4 but the val split has only 3 classes"):
        load(write_tree(tmp_path / "narrow"), ways=4)
    root = write_tree(tmp_path / "broken")
    (root / "val" / "val_class1" / "img002.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(UserError, match=r"cannot read image .*val_class1/img002.png"):
        load(root)
    root = write_tree(tmp_path / "hollow")
    (root / "test" / "nothing").mkdir()
    with pytest.raises(UserError, match=r"class folder .*test/nothing has no images"):
        load(root)
    root = write_tree(tmp_path / "listed", layout="file")
    (root / "split.json").write_text(json.dumps({"train": ["train_class0", "ghost"],
                                                 "val": [], "test": []}))
    with pytest.raises(UserError, match=r"lists class 'ghost', which is not a folder"):
        load(root)
    (root / "split.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="is not a split file"):
        load(root)
