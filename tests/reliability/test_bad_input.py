"""Bad input: one clear line on stderr, a non-zero exit, no traceback, nothing run."""

import os

import pytest
import torch

from tests.helpers import assert_one_line_error, run_cli

TRAIN_CASES = [
    (["task=nope"],
     "unknown task 'nope' (choose from: cifar_fs, cub, fc100, folder, halfcheetah_dir, "
     "halfcheetah_vel, miniimagenet, mnist, movielens, navigation2d, omniglot, sinusoid, table, "
     "tiered_imagenet)"),
    (["algorithm=maml,nope"], "unknown algorithm 'nope'"),
    (["inner.lr=-0.1"], "inner.lr must be > 0 (got -0.1)"),
    (["outer.lr=0"], "outer.lr must be > 0"),
    (["inner.steps=-1"], "inner.steps must be >= 0"),
    (["trainer.meta_batch_size=0"], "trainer.meta_batch_size must be >= 1"),
    (["task.shots=0"], "task.shots must be >= 1 (got 0)"),
    (["trainer.nan_policy=ignore"], "trainer.nan_policy must be stop or skip (got 'ignore')"),
    (["device=tpu"], "unknown device 'tpu' (choose from: auto, cpu, cuda, mps)"),
    pytest.param(["device=cuda"], "CUDA is not available", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="device=cuda must fail: needs a machine without CUDA")),
    (["trainer.iteratons=5"], "Key 'iteratons' not in 'TrainerConfig'"),
    (["inner.lr=abc"], "could not be converted to Float"),
    (["task.shots=abc"], "task.shots=abc Value 'abc' of type 'str' could not be converted"),
    (["outer.betaz=1"], "Key 'betaz' not in 'AdamConfig'"),
    (["resume=does/not/exist.pt"], "checkpoint not found: does/not/exist.pt"),
    (["model=conv4"], "Conv4 is a model for image tasks (task=cifar_fs, cub, fc100, folder, "
     "miniimagenet, mnist, omniglot, tiered_imagenet), and Sinusoid's inputs are not images "
     "(shape [1]): use model=mlp"),
    (["task=folder", "model=conv4"], "task.path needs a value: add task.path=... to the "
     "command"),
    (["task=navigation2d", "model=conv4"], "and Navigation2D's inputs are not images (shape "
     "[2]): use model=gaussian_mlp"),
]


@pytest.mark.parametrize("args, message", TRAIN_CASES)
def test_train_rejects_bad_input(tmp_path, args, message):
    proc = run_cli("maml-train", *args, "hydra.run.dir=run", cwd=tmp_path)
    assert_one_line_error(proc, message, "maml-train")
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("task, ways, classes", [("mnist", 4, 3), ("omniglot", 401, 400)])
def test_more_ways_than_a_split_has_classes(tmp_path, data_env, task, ways, classes):
    proc = run_cli("maml-train", f"task={task}", "model=conv4", f"task.ways={ways}",
                   "hydra.run.dir=run", cwd=tmp_path, env=data_env)
    assert_one_line_error(proc, f"task.ways={ways} but the val split has only {classes} classes")


def test_non_transductive_evaluation_needs_an_inner_loop(tmp_path, data_env):
    proc = run_cli("maml-train", "task=mnist", "model=conv4", "algorithm=protonet",
                   "eval.transductive=false", "hydra.run.dir=run", cwd=tmp_path, env=data_env)
    assert_one_line_error(proc, "eval.transductive=false predicts each query image")


def test_eval_needs_a_checkpoint_that_exists(tmp_path):
    cases = [
        ([], "checkpoint=<checkpoint file or run dir> is required"),
        (["checkpoint=missing.pt"], "checkpoint not found: missing.pt"),
        (["checkpoint=."], "no checkpoint in ."),
    ]
    for args, message in cases:
        assert_one_line_error(run_cli("maml-eval", *args, cwd=tmp_path), message, "maml-eval")


def test_eval_refuses_to_swap_a_group_of_the_checkpoint(trained_run, tmp_path):
    proc = run_cli("maml-eval", f"checkpoint={trained_run}", "algorithm=fomaml", cwd=tmp_path)
    assert_one_line_error(proc, "algorithm=fomaml would change algorithm.first_order from the "
                                "checkpoint's False to True", "maml-eval")


def test_a_failed_compile_is_one_line_naming_the_way_out(tmp_path):
    """trainer.compile on a machine whose C++ compiler is missing (inductor needs one on CPU)."""
    env = {**os.environ, "CXX": str(tmp_path / "no-such-g++"),
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}  # no cached kernels to reuse
    proc = run_cli("maml-train", "trainer.compile=true", "trainer.iterations=1",
                   "trainer.val_every=0", "hydra.run.dir=run", cwd=tmp_path, env=env)
    assert_one_line_error(proc, "compiling the meta-batch (trainer.compile) failed: "
                                "InvalidCxxCompiler", "maml-train")
    assert "run with trainer.compile=false" in proc.stderr
    assert not list((tmp_path / "run" / "checkpoints").glob("*.pt"))
