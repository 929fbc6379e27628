"""Bad input: one clear line on stderr, a non-zero exit, no traceback, nothing run."""

import pytest
import torch

from tests.helpers import run_cli

TRAIN_CASES = [
    (["task=nope"], "unknown task 'nope' (choose from: miniimagenet, mnist, omniglot, sinusoid)"),
    (["algorithm=maml,nope"], "unknown algorithm 'nope'"),
    (["inner.lr=-0.1"], "inner.lr must be > 0 (got -0.1)"),
    (["outer.lr=0"], "outer.lr must be > 0"),
    (["inner.steps=-1"], "inner.steps must be >= 0"),
    (["trainer.meta_batch_size=0"], "trainer.meta_batch_size must be >= 1"),
    pytest.param(["device=cuda"], "CUDA is not available", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="device=cuda must fail: needs a machine without CUDA")),
    (["trainer.iteratons=5"], "Key 'iteratons' not in 'TrainerConfig'"),
    (["inner.lr=abc"], "could not be converted to Float"),
    (["resume=does/not/exist.pt"], "checkpoint not found: does/not/exist.pt"),
]


def assert_one_line_error(proc, message, prog):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{prog}: error: ") and message in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("args, message", TRAIN_CASES)
def test_train_rejects_bad_input(tmp_path, args, message):
    proc = run_cli("maml-train", *args, "hydra.run.dir=run", cwd=tmp_path)
    assert_one_line_error(proc, message, "maml-train")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_diverging_run_stops_with_one_line_and_no_bad_checkpoint(tmp_path):
    proc = run_cli("maml-train", "inner.lr=1e8", "trainer.log_every=5", "trainer.val_every=0",
                   "trainer.checkpoint_every=5", "hydra.run.dir=run", cwd=tmp_path)
    assert_one_line_error(proc, "the meta-loss became NaN or infinite by iteration 5",
                          "maml-train")
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))


def test_eval_rejects_bad_checkpoints(tmp_path):
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    torch.save({"weights": torch.ones(1)}, tmp_path / "foreign.pt")
    cases = [
        ([], "checkpoint=<checkpoint file or run dir> is required"),
        (["checkpoint=missing.pt"], "checkpoint not found: missing.pt"),
        (["checkpoint=junk.pt"], "junk.pt is not a readable checkpoint"),
        (["checkpoint=foreign.pt"], "foreign.pt is not a maml-cli checkpoint"),
        (["checkpoint=."], "no checkpoint in ."),
    ]
    for args, message in cases:
        assert_one_line_error(run_cli("maml-eval", *args, cwd=tmp_path), message, "maml-eval")


def test_eval_refuses_to_swap_a_group_of_the_checkpoint(trained_run, tmp_path):
    proc = run_cli("maml-eval", f"checkpoint={trained_run}", "algorithm=fomaml", cwd=tmp_path)
    assert_one_line_error(proc, "algorithm= cannot change", "maml-eval")


def test_missing_datasets_are_one_line_errors(tmp_path):
    import os

    env = {**os.environ, "MAML_DATA_ROOT": str(tmp_path / "nowhere"),
           "MAML_CACHE_DIR": str(tmp_path / "cache")}
    for task, message in (("omniglot", "Omniglot not found under"),
                          ("mnist", "MNIST not found under"),
                          ("miniimagenet", "mini-ImageNet not found")):
        proc = run_cli("maml-train", f"task={task}", "model=conv4", "hydra.run.dir=run",
                       cwd=tmp_path, env=env)
        assert_one_line_error(proc, message, "maml-train")
