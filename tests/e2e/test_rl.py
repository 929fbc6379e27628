"""Meta-RL through the real console scripts: maml-train on 2D navigation and the half cheetah,
maml-eval on their checkpoints, exact resume, and the one-line errors of a model that does not fit
the task."""

import json
import math
import os

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers import assert_one_line_error, ok, run_cli
from tests.reliability.test_resume import assert_same_state

# A CI-sized preset: short rollouts, few of them, few tasks.
TINY = ["+experiment=navigation2d_maml", "task.horizon=15", "task.shots=4", "task.queries=4",
        "trainer.meta_batch_size=3", "trainer.val_every=3", "trainer.val_tasks=4",
        "trainer.log_every=1", "device=cpu", "device.threads=1"]


def test_navigation_trains_evaluates_and_resumes_exactly(tmp_path):
    ok(run_cli("maml-train", *TINY, "trainer.iterations=6", "hydra.run.dir=full", cwd=tmp_path))
    ok(run_cli("maml-train", *TINY, "trainer.iterations=6", "trainer.stop_after=4",
               "hydra.run.dir=first", cwd=tmp_path))
    # device comes from each command, not the checkpoint: the same threads, the same sums.
    ok(run_cli("maml-train", "resume=first", "device=cpu", "device.threads=1",
               "hydra.run.dir=second", cwd=tmp_path))
    full = torch.load(tmp_path / "full/checkpoints/last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "second/checkpoints/last.pt", weights_only=True)
    assert_same_state({k: v for k, v in full.items() if k != "config"},
                      {k: v for k, v in resumed.items() if k != "config"})
    assert set(full["model"]) == {"log_std", "mean.1.weight", "mean.1.bias", "mean.3.weight",
                                  "mean.3.bias", "mean.5.weight", "mean.5.bias"}

    events = EventAccumulator(str(tmp_path / "full" / "tb"))
    events.Reload()
    # TensorBoard: returns before and after adaptation, TRPO's step, environment throughput.
    scalars = set(events.Tags()["scalars"])
    assert {"train/query_return_pre", "train/query_return_post", "outer/trpo_kl",
            "outer/trpo_line_search_steps", "perf/env_steps_per_s"} <= scalars
    kl = [e.value for e in events.Scalars("outer/trpo_kl")]
    assert all(0 <= v <= 0.01 + 1e-6 for v in kl), kl
    assert all(e.value > 0 for e in events.Scalars("perf/env_steps_per_s"))

    ok(run_cli("maml-eval", "checkpoint=full", "eval.tasks=6", cwd=tmp_path))
    report = json.loads((tmp_path / "full/checkpoints/eval.json").read_text())
    assert report["metric"] == "return" and [r["steps"] for r in report["results"]] == [0, 1, 2, 3]
    # Returns are minus distances summed over at most 15 steps from at most ~0.7 away.
    assert all(math.isfinite(r["mean"]) and -15 < r["mean"] <= 0 for r in report["results"])
    # The paper's navigation panel: paths before and after adaptation, with the goal.
    assert (tmp_path / "full/checkpoints/eval_paths.png").read_bytes()[:4] == b"\x89PNG"
    # A key of the checkpoint's own task, which the command's default task lacks: 5 steps now.
    ok(run_cli("maml-eval", "checkpoint=full", "eval.tasks=6", "task.horizon=5", cwd=tmp_path))
    report = json.loads((tmp_path / "full/checkpoints/eval.json").read_text())
    assert all(-5 < r["mean"] <= 0 for r in report["results"])


def test_half_cheetah_trains_and_evaluates_without_mujocos_model_warning(tmp_path):
    tiny = ["+experiment=halfcheetah_dir_maml", "task.horizon=10", "task.shots=3",
            "task.queries=3", "trainer.meta_batch_size=2", "trainer.iterations=2",
            "trainer.val_every=2", "trainer.val_tasks=2", "device=cpu", "device.threads=1"]
    trained = ok(run_cli("maml-train", *tiny, "hydra.run.dir=run", cwd=tmp_path))
    evaluated = ok(run_cli("maml-eval", "checkpoint=run", "eval.tasks=4", cwd=tmp_path))
    for result in (trained, evaluated):
        assert "settotalmass" not in result.stdout + result.stderr
    report = json.loads((tmp_path / "run/checkpoints/eval.json").read_text())
    assert [r["steps"] for r in report["results"]] == [0, 1, 2, 3]
    # 10 steps of at most a few metres per second each way, less the control cost.
    assert all(math.isfinite(r["mean"]) and abs(r["mean"]) < 100 for r in report["results"])


def test_without_the_rl_extra_a_locomotion_task_is_one_line_saying_how_to_install_it(tmp_path):
    # A gymnasium that cannot be imported shadows the installed one, as on a machine without it.
    shadow = tmp_path / "shadow" / "gymnasium"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ImportError(\"No module named 'gymnasium'\", name='gymnasium')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "shadow")}
    assert_one_line_error(run_cli("maml-train", "+experiment=halfcheetah_vel_maml", env=env,
                                  cwd=tmp_path),
                          "the locomotion tasks need the [rl] extra (gymnasium is not installed): "
                          "pip install 'maml-cli[rl]'")


def test_a_model_that_does_not_fit_the_task_is_one_line(tmp_path):
    assert_one_line_error(run_cli("maml-train", "task=navigation2d", cwd=tmp_path),
                          "Navigation2D is a reinforcement-learning task: it needs a policy "
                          "(model=gaussian_mlp), not MLP")
    assert_one_line_error(run_cli("maml-train", "model=gaussian_mlp", cwd=tmp_path),
                          "GaussianMLP is a policy, for reinforcement-learning tasks")
    assert_one_line_error(run_cli("maml-train", "outer=trpo", cwd=tmp_path),
                          "outer=trpo bounds the KL between policies: it needs an RL task")
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.pt"))
