"""Cold-start tasks from a table through the real console scripts: maml-train task=table, then
maml-eval on entities never seen in training."""

import csv
import json
import os
import random
import re

import pytest

from maml_cli.build import build
from maml_cli.errors import UserError
from maml_cli.schemas import check_values
from tests.helpers import assert_one_line_error, ok, run_cli
from tests.test_config import compose_train


def write_users(path, users=80, seed=0):
    """Each user rates with their own slope in x (uniform in [-2, 2]) and offset, plus an
    item effect shared by everyone. No input tells one user from another: only adapting to a
    user's own support rows can capture their slope, so a network trained on all users jointly
    learns the shared part (the items) and averages the slopes away."""
    rng = random.Random(seed)
    items = [rng.gauss(0, 0.5) for _ in range(20)]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["user", "item", "x", "genre", "rating"])
        for u in range(users):
            slope, offset = rng.uniform(-2, 2), rng.uniform(-1, 1)
            for _ in range(rng.randint(12, 30)):
                item, x = rng.randrange(20), rng.uniform(-1, 1)
                writer.writerow([f"user{u}", item, x, ["drama", "comedy"][item % 2],
                                 slope * x + offset + items[item] + rng.gauss(0, 0.05)])
    return path


TABLE = ["task=table", "task.group=user", "task.target=rating", "task.features=[x,item,genre]",
         "task.categorical=[item,genre]", "task.shots=5", "task.queries=5",
         "model=embedding_mlp", "inner.lr=0.1", "inner.eval_steps=5",
         "trainer.meta_batch_size=10", "trainer.iterations=300", "trainer.val_every=100",
         "trainer.val_tasks=50"]


def test_maml_beats_the_pretrained_baseline_on_cold_start_users(tmp_path):
    path = write_users(tmp_path / "ratings.csv")
    curves = {}
    for algorithm in ("maml", "pretrain"):
        ok(run_cli("maml-train", *TABLE, f"task.path={path}", f"algorithm={algorithm}",
                   f"hydra.run.dir={algorithm}", cwd=tmp_path))
        ok(run_cli("maml-eval", f"checkpoint={algorithm}", "eval.tasks=100", cwd=tmp_path))
        report = json.loads((tmp_path / algorithm / "checkpoints" / "eval.json").read_text())
        assert report["metric"] == "mse" and report["split"] == "test"
        curves[algorithm] = [r["mean"] for r in report["results"]]
        # MAE on the same tasks beside it: per task at most the root of its MSE, so on average
        # at most the root of the mean MSE.
        mae = [r["mean"] for r in report["extra_metrics"]["mae"]]
        assert len(mae) == 6 and all(0 < a <= b ** 0.5 for a, b in zip(mae, curves[algorithm]))
    split = json.loads((tmp_path / "ratings.csv.split.json").read_text())
    assert len(split["test"]) == 12 and not set(split["test"]) & set(split["train"])
    # Both adapt with the same 5 support rows and steps of 0.1; MAML's initialisation is the
    # one that adapts: after 1 and 5 steps its error is well below the pretrained network's.
    maml, pretrain = curves["maml"], curves["pretrain"]
    assert maml[1] < 0.8 * pretrain[1] and maml[5] < 0.6 * pretrain[5], curves
    assert maml[5] < 0.5 * maml[0], curves


def test_movielens_trains_and_reports_mse_mae_and_ndcg(tmp_path):
    from tests.tasks.test_movielens import write_100k

    write_100k(tmp_path / "data" / "movielens" / "ml-100k")
    env = {**os.environ, "MAML_DATA_ROOT": str(tmp_path / "data")}
    # Each user's query: all their ratings outside the support (padded to the widest).
    ok(run_cli("maml-train", "task=movielens", "task.queries=null", "model=embedding_mlp",
               "algorithm=anil",
               "trainer.iterations=20", "trainer.meta_batch_size=4", "trainer.val_every=10",
               "trainer.val_tasks=8", "inner.eval_steps=2", "hydra.run.dir=run", cwd=tmp_path,
               env=env))
    ok(run_cli("maml-eval", "checkpoint=run", "eval.tasks=12", cwd=tmp_path, env=env))
    report = json.loads((tmp_path / "run" / "checkpoints" / "eval.json").read_text())
    assert report["metric"] == "mse" and sorted(report["extra_metrics"]) == ["mae", "ndcg@3"]
    ndcg = [r["mean"] for r in report["extra_metrics"]["ndcg@3"]]
    assert len(ndcg) == 3 and all(0 < v <= 1 for v in ndcg)


def test_table_mistakes_are_one_line_errors_before_training(tmp_path):
    path = write_users(tmp_path / "ratings.csv", users=10)
    unknown = run_cli("maml-train", *TABLE, f"task.path={path}", "task.features=[x,age]",
                      "task.categorical=[]", cwd=tmp_path)
    assert_one_line_error(unknown, "no column 'age' in")
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.pt"))
    # The model that does not fit, and the other keys, through build() and the value rules.
    for overrides, message in [
            ([*TABLE, f"task.path={path}", "model=mlp"], "TableTasks has categorical inputs "
             "(task.categorical), which MLP would read as numbers: use model=embedding_mlp"),
            (["model=embedding_mlp"], "EmbeddingMLP is a model for table tasks (task=table); "
             "Sinusoid needs model=mlp"),
            (["task=table"], "task.features needs a value"),
            ([*TABLE, f"task.path={path}", "task.objective=ranking"],
             "task.objective must be one of regression, classification")]:
        with pytest.raises(UserError, match=re.escape(message)):
            cfg = compose_train(*overrides)
            check_values(cfg)
            build(cfg)
