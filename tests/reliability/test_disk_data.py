"""Disk and data faults: clear one-line errors, nothing earlier lost."""

import os
import shutil

import pytest

from tests.helpers import assert_one_line_error, run_cli


def test_an_output_dir_that_cannot_be_created(tmp_path):
    (tmp_path / "a_file").write_text("")
    proc = run_cli("maml-train", "hydra.run.dir=a_file/run", cwd=tmp_path)
    assert_one_line_error(proc, "a_file/run: Not a directory")


def test_missing_datasets(tmp_path):
    env = {**os.environ, "MAML_DATA_ROOT": str(tmp_path / "nowhere"),
           "MAML_CACHE_DIR": str(tmp_path / "cache")}
    for task, message in (("omniglot", "Omniglot not found under"),
                          ("mnist", "MNIST missing or unreadable under"),
                          ("miniimagenet", "mini-ImageNet not found")):
        proc = run_cli("maml-train", f"task={task}", "model=conv4", "hydra.run.dir=run",
                       cwd=tmp_path, env=env)
        assert_one_line_error(proc, message)


MNIST_RAW = "mnist/MNIST/raw/"
MNIST_FILES = [f"{MNIST_RAW}{s}-{kind}-idx{n}-ubyte" for s in ("train", "t10k")
               for kind, n in (("images", 3), ("labels", 1))]


@pytest.mark.parametrize("files, damaged, message", [
    (["omniglot/images_background.zip", "omniglot/images_evaluation.zip"],
     "omniglot/images_background.zip", "is corrupt or unreadable"),
    (MNIST_FILES, MNIST_FILES[0], "MNIST missing or unreadable"),
])
def test_truncated_dataset_files(tmp_path, shared_data, files, damaged, message):
    root = tmp_path / "data"
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_data / name, root / name)
    (root / damaged).write_bytes((shared_data / damaged).read_bytes()[:5000])
    task = damaged.split("/")[0]
    env = {**os.environ, "MAML_DATA_ROOT": str(root), "MAML_CACHE_DIR": str(tmp_path / "c")}
    proc = run_cli("maml-train", f"task={task}", "model=conv4", "hydra.run.dir=run",
                   cwd=tmp_path, env=env)
    assert_one_line_error(proc, message)
    assert (shared_data / damaged).stat().st_size > 5000  # the real copy untouched
