"""MAML learns sinusoids: after a short meta-training, adaptation beats both the un-adapted
meta-parameters and an untrained network adapted the same way."""

import json

from tests.helpers import ok, run_cli


def maml_eval(run_dir, cwd):
    ok(run_cli("maml-eval", f"checkpoint={run_dir}/checkpoints/last.pt", "eval.tasks=300",
               cwd=cwd))
    results = json.loads((run_dir / "checkpoints" / "eval.json").read_text())["results"]
    return {r["steps"]: r["mean"] for r in results}


def test_maml_learns_to_adapt_on_sinusoids(tmp_path):
    ok(run_cli("maml-train", "trainer.iterations=1500", "trainer.val_every=0",
               "hydra.run.dir=trained", cwd=tmp_path))
    ok(run_cli("maml-train", "trainer.iterations=0", "trainer.val_every=0",
               "hydra.run.dir=untrained", cwd=tmp_path))
    trained = maml_eval(tmp_path / "trained", tmp_path)
    untrained = maml_eval(tmp_path / "untrained", tmp_path)
    assert trained[10] < 0.3 * trained[0], trained
    assert trained[10] < 0.3 * untrained[10], (trained, untrained)
    assert trained[1] < trained[0]
