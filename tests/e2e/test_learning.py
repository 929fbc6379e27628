"""MAML learns sinusoids: after a short meta-training, adaptation beats both the un-adapted
meta-parameters and an untrained network adapted the same way."""

import json

from tests.helpers import ok, run_cli


def test_maml_learns_to_adapt_on_sinusoids(tmp_path):
    # Validation before training and after it, on the same 300 tasks: the untrained network
    # adapted the same way is its first row.
    ok(run_cli("maml-train", "trainer.iterations=1500", "trainer.val_every=1500",
               "trainer.val_tasks=300", "hydra.run.dir=trained", cwd=tmp_path))
    val = json.loads((tmp_path / "trained" / "metrics.json").read_text())
    ok(run_cli("maml-eval", "checkpoint=trained/checkpoints/last.pt", "eval.tasks=300",
               cwd=tmp_path))
    results = json.loads((tmp_path / "trained/checkpoints/eval.json").read_text())["results"]
    trained = {r["steps"]: r["mean"] for r in results}
    assert trained[10] < 0.3 * trained[0], trained
    assert val["val_mse_best"] < 0.3 * val["val_mse_untrained"], val
    assert trained[1] < trained[0]
