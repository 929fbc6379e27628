"""Image classification through the real console scripts, on the real Omniglot and MNIST, and on
an image folder the test writes."""

import json
import os

import torch

from tests.helpers import ok, run_cli
from tests.tasks.test_cifar import write_cifar100
from tests.tasks.test_folder import write_tree


def maml_eval(run_dir, cwd, env, *args):
    ok(run_cli("maml-eval", f"checkpoint={run_dir}/checkpoints/last.pt", *args, cwd=cwd, env=env))
    report = json.loads((run_dir / "checkpoints" / "eval.json").read_text())
    return {r["steps"]: r["mean"] for r in report["results"]}, report


def test_omniglot_5way_1shot_learns_well_above_chance(tmp_path, data_env):
    """A CI-sized MAML run (second order, 120 meta-iterations of 8 tasks). Its validation before
    training and after it ran on the same 50 tasks: the untrained network's baseline."""
    ok(run_cli("maml-train", "+experiment=omniglot_5w1s", "trainer.meta_batch_size=8",
               "trainer.val_every=120", "trainer.val_tasks=50", "inner.eval_steps=3",
               "trainer.iterations=120", "hydra.run.dir=trained", cwd=tmp_path, env=data_env))
    val = json.loads((tmp_path / "trained" / "metrics.json").read_text())
    assert val["val_accuracy_best"] > val["val_accuracy_untrained"] + 0.1, val
    trained, report = maml_eval(tmp_path / "trained", tmp_path, data_env, "eval.tasks=100")
    assert report["metric"] == "accuracy" and report["split"] == "test"
    assert [r["steps"] for r in report["results"]] == [0, 1, 2, 3]
    assert abs(trained[0] - 0.2) < 0.05  # before adaptation, labels are a coin toss
    assert trained[3] > 0.6, trained
    state = torch.load(tmp_path / "trained/checkpoints/last.pt", weights_only=True)
    assert state["model"]["14.weight"].shape == (5, 64)  # the head is sized to task.ways
    assert state["config"]["task"]["loss_scale"] == 5


def test_mnist_train_and_eval(tmp_path, data_env):
    ok(run_cli("maml-train", "+experiment=mnist_fomaml", "trainer.iterations=20",
               "trainer.val_every=10", "trainer.val_tasks=10", "hydra.run.dir=run",
               cwd=tmp_path, env=data_env))
    steps, report = maml_eval(tmp_path / "run", tmp_path, data_env, "eval.tasks=30",
                             "inner.eval_steps=2")
    assert report["tasks"] == 30 and set(steps) == {0, 1, 2}
    assert all(0 <= v <= 1 for v in steps.values())


def test_conv4_on_mnist_runs_both_engines(tmp_path, data_env):
    for engine in ("loop", "vmap"):
        ok(run_cli("maml-train", "task=mnist", "model=conv4", "model.filters=8",
                   f"engine={engine}", "trainer.iterations=3", "trainer.val_every=3",
                   "trainer.val_tasks=4", "inner.eval_steps=1", f"hydra.run.dir={engine}",
                   cwd=tmp_path, env=data_env))


def test_your_own_image_folder_trains_and_evaluates(tmp_path):
    tree = write_tree(tmp_path / "my images", layout="file", images=4, mode="RGB", suffix=".jpg")
    ok(run_cli("maml-train", "task=folder", f"task.path={tree}", "task.ways=3", "task.queries=2",
               "task.image_size=16", "model=conv4", "model.filters=8", "trainer.iterations=4",
               "trainer.meta_batch_size=2", "trainer.val_every=2", "trainer.val_tasks=4",
               "inner.eval_steps=2", "task.augment=[hflip,crop]", "hydra.run.dir=run",
               cwd=tmp_path, env={**os.environ, "MAML_CACHE_DIR": str(tmp_path / "cache")}))
    steps, report = maml_eval(tmp_path / "run", tmp_path, {**os.environ, "MAML_CACHE_DIR":
                                                           str(tmp_path / "cache")}, "eval.tasks=6")
    assert report["metric"] == "accuracy" and report["tasks"] == 6 and set(steps) == {0, 1, 2}
    state = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    assert state["config"]["task"]["path"] == str(tree)
    assert state["config"]["task"]["augment"] == ["hflip", "crop"]
    assert state["model"]["0.weight"].shape == (8, 3, 3, 3)  # colour, inferred
    assert len(list((tmp_path / "cache").glob("folder-16px-autoch-*.pt"))) == 1


def test_resnet12_trains_and_evaluates(tmp_path, data_env):
    """Under vmap; both engines' meta-gradients are checked in float64 (tests/algorithms)."""
    ok(run_cli("maml-train", "task=mnist", "model=resnet12", "model.channels=[4,4,4,8]",
               "engine=vmap", "trainer.iterations=2", "trainer.meta_batch_size=2",
               "trainer.val_every=2", "trainer.val_tasks=4", "inner.eval_steps=1",
               "hydra.run.dir=run", cwd=tmp_path, env=data_env))
    steps, report = maml_eval(tmp_path / "run", tmp_path, data_env, "eval.tasks=4")
    assert set(steps) == {0, 1} and report["tasks"] == 4
    state = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    assert state["model"]["3.conv3.weight"].shape == (8, 8, 3, 3)


def test_fc100_trains_and_evaluates_from_cifar100_files(tmp_path):
    env = {**os.environ, "MAML_DATA_ROOT": str(write_cifar100(tmp_path / "data"))}
    ok(run_cli("maml-train", "task=fc100", "task.queries=2", "model=conv4", "model.filters=8",
               "trainer.iterations=2", "trainer.meta_batch_size=2", "trainer.val_every=2",
               "trainer.val_tasks=4", "inner.eval_steps=1", "hydra.run.dir=run", cwd=tmp_path,
               env=env))
    steps, report = maml_eval(tmp_path / "run", tmp_path, env, "eval.tasks=4")
    assert set(steps) == {0, 1} and report["tasks"] == 4
