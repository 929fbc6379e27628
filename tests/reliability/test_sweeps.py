"""A sweep with failing jobs: the others run to the end and keep their results, each failed
job's run dir says why, the summary lists every job, and the exit code is non-zero."""

import csv
import json
import shutil

import torch

from tests.helpers import assert_one_line_error, run_cli


def test_failed_jobs_are_recorded_and_do_not_lose_the_others(tmp_path):
    # Job 1 fails validation before training, job 2 diverges during training.
    proc = run_cli("maml-train", "-m", "inner.lr=0.01,-1,1e8,0.02", "trainer.iterations=6",
                   "trainer.val_every=3", "trainer.val_tasks=5", "hydra.sweep.dir=sweep",
                   cwd=tmp_path)
    # Hydra names each failed job on stderr; the last line is ours, and no traceback.
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr.splitlines()[-1].startswith(
        "maml-train: error: 2 sweep job(s) failed, first job 1 (inner.lr=-1 ")
    sweep = tmp_path / "sweep"
    status = {int(p.parent.name): json.loads(p.read_text()) for p in sweep.glob("*/status.json")}
    assert {j: s["status"] for j, s in status.items()} == {
        0: "completed", 1: "failed", 2: "failed", 3: "completed"}
    assert status[1]["error"] == "inner.lr must be > 0 (got -1.0)"
    assert "NaN or infinite at iteration 1" in status[2]["error"]
    for job in (0, 3):
        state = torch.load(sweep / str(job) / "checkpoints" / "last.pt", weights_only=True)
        assert state["iteration"] == 6 and status[job]["result"] == state["best"]
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["job"], r["status"]) for r in rows] == [
        ("0", "completed"), ("1", "failed"), ("2", "failed"), ("3", "completed")]
    assert rows[1]["overrides"].startswith("inner.lr=-1") and rows[1]["error"]


def test_a_sweep_without_failures_exits_zero_with_its_summary(tmp_path):
    proc = run_cli("maml-train", "-m", "seed=0,1", "trainer.iterations=3", "trainer.val_every=0",
                   "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "sweep" / "summary.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["completed", "completed"]


def test_a_failing_maml_eval_sweep_job_fails_the_command(trained_run, tmp_path):
    shutil.copy(trained_run / "checkpoints" / "last.pt", tmp_path / "last.pt")
    proc = run_cli("maml-eval", "-m", "checkpoint=last.pt,nope.pt", "eval.tasks=10",
                   "inner.eval_steps=1", cwd=tmp_path)
    assert (tmp_path / "eval.json").is_file()  # the good job finished
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr.splitlines()[-1] == "maml-eval: error: checkpoint not found: nope.pt"


def test_a_sweep_whose_job_cannot_be_composed_is_one_line(tmp_path):
    """maml's algorithm.lr_mode does not exist for protonet: Hydra fails composing a job before
    any job ran, and that error is the one line (there is no job status to summarise)."""
    proc = run_cli("maml-train", "-m", "algorithm=maml,protonet", "algorithm.lr_mode=fixed",
                   "trainer.iterations=1", "trainer.val_every=0", cwd=tmp_path)
    assert_one_line_error(proc, "Key 'lr_mode' not in")
