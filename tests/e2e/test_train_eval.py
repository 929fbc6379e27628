"""maml-train and maml-eval as a user runs them: real console scripts in subprocesses."""

import json
import math

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers import ok, run_cli


def test_run_dir_layout_and_checkpoints(trained_run):
    assert (trained_run / ".hydra" / "config.yaml").is_file()
    assert (trained_run / "maml-train.log").read_text().count("val mse") >= 4
    names = sorted(p.name for p in (trained_run / "checkpoints").iterdir())
    assert names == ["best.pt", "iter_0000030.pt", "iter_0000060.pt", "last.pt"]
    state = torch.load(trained_run / "checkpoints" / "last.pt", weights_only=True)
    assert state["iteration"] == 60 and state["version"] == "0.1.0"
    assert state["config"]["trainer"]["iterations"] == 60
    assert {"model", "optimizer", "rng", "best"} <= set(state)
    assert set(state["model"]) == {f"{i}.{p}" for i in (1, 3, 5) for p in ("weight", "bias")}
    assert state["optimizer"]["state"]  # Adam moments are there to resume from


def test_tensorboard_events_read_by_tensorboard(trained_run):
    events = EventAccumulator(str(trained_run / "tb"))
    events.Reload()
    tags = events.Tags()
    for tag in ("train/query_loss_pre", "train/query_loss_post", "val/mse", "val/mse_pre",
                "perf/tasks_per_s", "lr/outer", "lr/inner"):
        assert tag in tags["scalars"], tag
    assert [e.step for e in events.Scalars("train/query_loss_post")] == [10, 20, 30, 40, 50, 60]
    assert [e.step for e in events.Scalars("val/mse")] == [0, 20, 40, 60]
    assert all(e.value > 0 for e in events.Scalars("perf/tasks_per_s"))
    assert "val/fit" in tags["images"]
    assert "hparams" in events.PluginTagToContent("hparams") or events.PluginTagToContent("hparams")


def test_eval_reports_every_step_with_ci_and_is_reproducible(trained_run, tmp_path):
    proc = ok(run_cli("maml-eval", f"checkpoint={trained_run}", "eval.tasks=40",
                      "inner.eval_steps=3", cwd=tmp_path))
    assert "mse (mean ± 95% CI)" in proc.stdout
    report = json.loads((trained_run / "checkpoints" / "eval.json").read_text())
    assert report["checkpoint"].endswith("best.pt") and report["tasks"] == 40
    assert [r["steps"] for r in report["results"]] == [0, 1, 2, 3]
    assert all(math.isfinite(r["mean"]) and r["ci95"] > 0 for r in report["results"])
    assert (trained_run / "checkpoints" / "eval_fit.png").read_bytes()[:4] == b"\x89PNG"
    assert report.pop("tasks_per_s") > 0  # the one number that is the machine's, not the run's
    # The device group describes this machine, so it may differ from the training run's.
    ok(run_cli("maml-eval", f"checkpoint={trained_run}/checkpoints/best.pt", "eval.tasks=40",
               "inner.eval_steps=3", "device=cpu", cwd=tmp_path))
    again = json.loads((trained_run / "checkpoints" / "eval.json").read_text())
    assert again.pop("tasks_per_s") > 0 and again == report


def test_multirun_makes_one_run_dir_per_job(tmp_path):
    ok(run_cli("maml-train", "-m", "algorithm=maml,fomaml", "inner.lr=0.001,0.01",
               "trainer.iterations=5", "trainer.val_every=5", "trainer.val_tasks=5",
               cwd=tmp_path))
    jobs = sorted(p for p in (tmp_path / "outputs" / "multirun").glob("*/*/*") if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    seen = set()
    for job in jobs:
        assert list((job / "tb").glob("events.out.tfevents.*"))
        state = torch.load(job / "checkpoints" / "last.pt", weights_only=True)
        seen.add((state["config"]["algorithm"]["first_order"], state["config"]["inner"]["lr"]))
    assert seen == {(f, lr) for f in (False, True) for lr in (0.001, 0.01)}


def test_module_entry_points_and_help_show_the_keys(tmp_path):
    import subprocess
    import sys

    helped = subprocess.run([sys.executable, "-m", "maml_cli.train", "--help"], cwd=tmp_path,
                            capture_output=True, text=True, check=True).stdout
    job = ok(run_cli("maml-train", "--cfg", "job", cwd=tmp_path)).stdout
    for text in (helped, job):
        for key in ("seed:", "iterations:", "meta_batch_size:", "val_every:",
                    "checkpoint_every:", "lr:", "steps:", "eval_steps:", "resume:", "tasks:"):
            assert key in text, key
    assert ("task: cifar_fs, cub, fc100, folder, halfcheetah_dir, halfcheetah_vel, miniimagenet, "
            "mnist, movielens, navigation2d, omniglot, sinusoid, table, tiered_imagenet") in helped
    assert ("algorithm: anil, fomaml, maml, metasgd, pretrain, protonet, relationnet, "
            "reptile") in helped
    assert "inner: adam, sgd" in helped
    eval_help = subprocess.run([sys.executable, "-m", "maml_cli.eval", "--help"], cwd=tmp_path,
                               capture_output=True, text=True, check=True).stdout
    assert "checkpoint:" in eval_help and "tasks:" in eval_help
    # Only the groups a user chooses from: no structured-config registrations (schema/...).
    for text in (helped, eval_help):
        assert "schema" not in text
        assert "model: conv4, embedding_mlp, gaussian_mlp, mlp, resnet12" in text


def test_shell_completion_offers_only_the_groups_a_user_chooses_from(tmp_path):
    import os

    env = {**os.environ, "COMP_LINE": "maml-train ", "COMP_POINT": "11"}
    offered = ok(run_cli("maml-train", "-sc", "query=bash", cwd=tmp_path, env=env)).stdout.split()
    assert {"task=", "model=", "algorithm=", "inner=", "outer=", "trainer."} <= set(offered)
    assert not [o for o in offered if "schema" in o]
