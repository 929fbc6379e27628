"""Hydra's own launchers and sweepers through the real maml-train: joblib in parallel,
submitit's local executor, the SLURM preset's composition, Optuna; and maml-sweep-summary."""

import csv
import json
import os

import torch
import yaml

from tests.helpers import assert_one_line_error, ok, run_cli

SHORT = ["trainer.iterations=20", "trainer.val_every=10", "trainer.val_tasks=10"]


def finished_jobs(sweep):
    return {int(p.parent.name): json.loads(p.read_text()) for p in sweep.glob("*/status.json")}


def test_parallel_joblib_sweep_splits_the_cores_and_is_summarised(tmp_path):
    ok(run_cli("maml-train", "-m", "hydra/launcher=parallel", "seed=0,1", *SHORT,
               "hydra.sweep.dir=sweep", cwd=tmp_path))
    sweep = tmp_path / "sweep"
    assert {j: s["status"] for j, s in finished_jobs(sweep).items()} == {
        0: "completed", 1: "completed"}
    for job in (0, 1):  # each job got its share of the cores, not all of them
        state = torch.load(sweep / str(job) / "checkpoints/last.pt", weights_only=True)
        assert state["config"]["device"]["threads"] >= 1 and state["config"]["seed"] == job
    out = ok(run_cli("maml-sweep-summary", str(sweep), "--sort", "val_mse_best", "--csv",
                     "table.csv", cwd=tmp_path)).stdout
    assert "seed=0" in out and "seed=1" in out
    with open(tmp_path / "table.csv") as f:
        rows = list(csv.DictReader(f))
    best = [float(r["val_mse_best"]) for r in rows]
    assert best == sorted(best) and {r["job"] for r in rows} == {"0", "1"}
    assert all(float(r["iterations"]) == 20 and r["status"] == "completed" for r in rows)
    assert_one_line_error(run_cli("maml-sweep-summary", str(sweep), "--sort", "nope",
                                  cwd=tmp_path), "cannot sort by 'nope'", "maml-sweep-summary")


def test_submitit_local_executor_runs_the_sweep(tmp_path):
    ok(run_cli("maml-train", "-m", "hydra/launcher=submitit_local", "seed=0,1", *SHORT,
               "hydra.sweep.dir=sweep", cwd=tmp_path))
    jobs = finished_jobs(tmp_path / "sweep")
    assert {j: s["status"] for j, s in jobs.items()} == {0: "completed", 1: "completed"}
    assert all((tmp_path / "sweep" / str(j) / "checkpoints" / "best.pt").is_file() for j in jobs)


def test_slurm_preset_composes_with_the_usual_keys(tmp_path):
    out = ok(run_cli("maml-train", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                     "--cfg", "hydra", cwd=tmp_path)).stdout
    launcher = yaml.safe_load(out)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["partition"] == "gpu" and launcher["gpus_per_node"] == 1
    assert {"timeout_min", "mem_gb", "cpus_per_task"} <= set(launcher)


def test_slurm_sweep_without_slurm_fails_in_one_line_before_any_work(tmp_path):
    no_srun = dict(os.environ, PATH=str(tmp_path / "empty"))
    proc = run_cli("maml-train", "-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                   "seed=0,1", "hydra.sweep.dir=sweep", cwd=tmp_path, env=no_srun)
    assert_one_line_error(proc, "srun is not on PATH")
    assert not (tmp_path / "sweep").exists()


def test_optuna_search_keeps_the_best_trial(tmp_path):
    ok(run_cli("maml-train", "-m", "hparams_search=sinusoid_optuna", "hydra.sweeper.n_trials=3",
               *SHORT, "hydra.sweep.dir=sweep", cwd=tmp_path))
    jobs = finished_jobs(tmp_path / "sweep")
    assert len(jobs) == 3 and all(s["status"] == "completed" for s in jobs.values())
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert best["best_value"] == min(s["result"] for s in jobs.values())
    assert set(best["best_params"]) == {"inner.lr", "outer.lr", "inner.steps"}
