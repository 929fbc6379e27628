"""The MAML family through the real console scripts: maml-train with each algorithm, then
maml-eval on its checkpoint, rebuilt from the checkpoint alone."""

import json
import math

import pytest
import torch

from tests.helpers import assert_one_line_error, ok, run_cli

SHORT = ["trainer.iterations=40", "trainer.val_every=20", "trainer.val_tasks=10",
         "inner.eval_steps=3", "eval.tasks=20"]


def sweep_then_eval(tmp_path, env, *overrides, more_runs=()):
    """One maml-train sweep (plus `more_runs`, a single run each), then one maml-eval sweep over
    all their runs; {run dir: eval report}, sweep jobs first."""
    ok(run_cli("maml-train", "-m", *SHORT, *overrides, "hydra.sweep.dir=sweep", cwd=tmp_path,
               env=env))
    runs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.name.isdigit())
    for i, run in enumerate(more_runs):
        ok(run_cli("maml-train", *SHORT, *run, f"hydra.run.dir=run{i}", cwd=tmp_path, env=env))
        runs.append(tmp_path / f"run{i}")
    ok(run_cli("maml-eval", "-m", f"checkpoint={','.join(str(r) for r in runs)}",
               "eval.tasks=20", "hydra.sweep.dir=evals", cwd=tmp_path, env=env))
    return {run: json.loads((run / "checkpoints" / "eval.json").read_text()) for run in runs}


def test_every_gradient_algorithm_trains_and_evaluates_on_sinusoids(tmp_path):
    reports = sweep_then_eval(tmp_path, None, "algorithm=metasgd,anil,reptile,pretrain")
    for job, report in reports.items():
        state = torch.load(job / "checkpoints" / "last.pt", weights_only=True)
        curve = [r["mean"] for r in report["results"]]
        # Whether 40 iterations taught it anything is not the point here: that its test-time
        # adaptation runs and changes the predictions is.
        assert len(curve) == 4 and all(map(math.isfinite, curve)) and curve[3] != curve[0], \
            (state["config"]["algorithm"], curve)
    metasgd = torch.load(sorted(reports)[0] / "checkpoints" / "last.pt", weights_only=True)
    assert metasgd["config"]["algorithm"]["lr_mode"] == "per_parameter"
    rates = metasgd["algorithm"]
    assert set(rates) == {f"lr:{i}/{p}" for i in (1, 3, 5) for p in ("weight", "bias")}
    assert any(not torch.allclose(r, torch.full_like(r, 0.01)) for r in rates.values())

    # maml-eval adapts with the learned rates: the same checkpoint with its rates reset to
    # inner.lr adapts differently. Its figure also draws the pretrained baseline's curve beside
    # it (compare=), the MAML paper's comparison.
    metasgd_dir, pretrain_dir = sorted(reports)[0], sorted(reports)[3]
    assert reports[pretrain_dir]["label"].startswith("Pretrain")
    reset = metasgd | {"algorithm": {k: torch.full_like(r, 0.01) for k, r in rates.items()}}
    torch.save(reset, tmp_path / "reset.pt")
    ok(run_cli("maml-eval", f"checkpoint={tmp_path / 'reset.pt'}", "eval.tasks=20",
               "inner.eval_steps=3", f"compare=[{pretrain_dir}]", cwd=tmp_path))
    with_reset = json.loads((tmp_path / "eval.json").read_text())["results"]
    learned = reports[metasgd_dir]["results"]
    assert with_reset[0] == learned[0] and with_reset[3]["mean"] != learned[3]["mean"]
    assert (tmp_path / "eval_curve.png").read_bytes()[:4] == b"\x89PNG"
    missing = run_cli("maml-eval", f"checkpoint={metasgd_dir}", "compare=[nowhere]",
                      cwd=tmp_path)
    assert_one_line_error(missing, "compare: cannot read nowhere", prog="maml-eval")


def test_protonet_relationnet_and_the_mamlpp_preset_on_omniglot(tmp_path, data_env):
    reports = sweep_then_eval(
        tmp_path, data_env, "+experiment=mamlpp_omniglot_5w1s", "trainer.meta_batch_size=4",
        "inner.steps=2", "trainer.iterations=20", "trainer.val_every=10",
        more_runs=[["+experiment=omniglot_5w1s", "algorithm=protonet",
                    "trainer.meta_batch_size=4"],
                   ["+experiment=relationnet_omniglot_5w1s", "task.queries=5",
                    "trainer.iterations=20", "trainer.val_every=20",
                    "trainer.lr_decay_every=5"]])
    (mamlpp_dir, mamlpp), (_, protonet), (relationnet_dir, relationnet) = reports.items()
    for report in protonet, relationnet:
        accuracies = [r["mean"] for r in report["results"]]
        assert accuracies == [accuracies[0]] * 4 and accuracies[0] > 0.3  # no inner loop
    # The relation module is saved beside the model, and maml-eval used it; the outer rate
    # halved every 5 iterations: iteration 20's is 1e-3 / 2^3.
    state = torch.load(relationnet_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["algorithm"]["relation.compare.weight"].shape == (64, 128, 3, 3)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3 / 8)
    state = torch.load(mamlpp_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["config"]["algorithm"]["per_step_norm"]
    # Cosine annealing from 1e-3 towards min_lr 1e-5 over the 20 iterations: the last step's.
    assert 1e-5 < state["optimizer"]["param_groups"][0]["lr"] < 2e-5
    assert state["algorithm"]["lr:0/weight"].shape == (2,)  # a rate per step
    assert state["algorithm"]["norm:1/weight"].shape == (2, 64)  # norm weights per step
    assert len(mamlpp["results"]) == 4


def test_protonet_on_a_regression_task_is_a_one_line_error(tmp_path):
    proc = run_cli("maml-train", "algorithm=protonet", "trainer.iterations=1", cwd=tmp_path)
    assert_one_line_error(proc, "algorithm=protonet needs a classification task")
