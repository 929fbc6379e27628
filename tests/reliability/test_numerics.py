"""NaN or inf in the meta-loss or meta-gradient: stop at that iteration keeping the last good
checkpoint, or (trainer.nan_policy=skip) drop the meta-batch and count it in TensorBoard."""

import math

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers import assert_one_line_error, ok, run_cli, with_fault

RUN = ["trainer.iterations=12", "trainer.val_every=0", "trainer.log_every=4",
       "trainer.checkpoint_every=2", "hydra.run.dir=run"]


def test_a_nan_stops_the_run_at_its_iteration_keeping_the_last_good_checkpoint(tmp_path):
    proc = with_fault("nan-at:5,9", *RUN, cwd=tmp_path)
    assert proc.returncode == 2
    assert_one_line_error(proc, "the meta-loss or its gradient was NaN or infinite at "
                                "iteration 5 (learning rate too large?")
    assert "trainer.nan_policy=skip would skip" in proc.stderr
    folder = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["iter_0000002.pt", "iter_0000004.pt",
                                                        "last.pt"]
    state = torch.load(folder / "last.pt", weights_only=True)
    assert state["iteration"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_skip_policy_drops_bad_meta_batches_and_counts_them(tmp_path):
    ok(with_fault("nan-at:5,9", *RUN, "trainer.nan_policy=skip", cwd=tmp_path))
    state = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    assert state["iteration"] == 12 and state["skipped"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    skipped = {e.step: e.value for e in events.Scalars("train/skipped_meta_batches")}
    assert skipped == {4: 0, 8: 1, 12: 2}
    assert all(math.isfinite(e.value) for e in events.Scalars("train/query_loss_post"))


def test_skip_policy_still_stops_a_run_that_only_makes_nans(tmp_path):
    proc = run_cli("maml-train", "inner.lr=1e8", "trainer.iterations=50", "trainer.val_every=0",
                   "trainer.checkpoint_every=30", "trainer.nan_policy=skip", "hydra.run.dir=run",
                   cwd=tmp_path)
    assert_one_line_error(proc, "NaN or infinite at iteration 20 and the 19 before it")
    assert not (tmp_path / "run" / "checkpoints").exists()
