"""Per-entity tasks from a table (task=table), on small CSV and Parquet files written here."""

import csv
import json
import logging

import pytest
import torch

from maml_cli.errors import UserError
from maml_cli.tasks.table import TableTasks

COLUMNS = ["user", "item", "x", "genre", "rating"]


def write_table(path, users=20, rows_of=lambda u: 6 + u % 5, seed=0):
    """Entity u0, u1, ...: each row (user, item id, a number, a genre, a rating 1-5). A row's
    number encodes its user and position, so tests can read rows back from the inputs."""
    g = torch.Generator().manual_seed(seed)
    table = []
    for u in range(users):
        for r in range(rows_of(u)):
            item = int(torch.randint(30, (1,), generator=g))
            table.append([f"u{u}", item, 100 * u + r, ["drama", "comedy"][item % 2],
                          1 + (u + r) % 5])
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(table)
    return path


def tasks(path, **kwargs):
    args = dict(group="user", target="rating", features=["x", "item", "genre"],
                categorical=["item", "genre"], shots=2, queries=3) | kwargs
    return TableTasks(str(path), **args)


def test_entities_are_split_once_into_disjoint_seeded_splits(tmp_path):
    path = write_table(tmp_path / "ratings.csv")
    first = tasks(path)
    split_file = tmp_path / "ratings.csv.split.json"
    split = json.loads(split_file.read_text())
    assert sorted(split) == ["test", "train", "val"]
    names = [set(split[s]) for s in ("train", "val", "test")]
    assert sum(map(len, names)) == 20 and not (names[0] & names[1] or names[0] & names[2]
                                                or names[1] & names[2])
    assert (len(split["val"]), len(split["test"])) == (3, 3)  # 15% each
    # Seeded: the same entities split the same way for another copy of the table.
    (tmp_path / "copy.csv").write_bytes(path.read_bytes())
    tasks(tmp_path / "copy.csv")
    assert json.loads((tmp_path / "copy.csv.split.json").read_text()) == split
    # Written once: a second use reads it (an edited file is kept as it is).
    edited = split | {"val": split["val"][:2], "test": split["test"] + split["val"][2:]}
    split_file.write_text(json.dumps(edited))
    again = tasks(path)
    assert len(again.splits["val"].counts) == 2 and len(first.splits["val"].counts) == 3
    assert json.loads(split_file.read_text()) == edited


def test_an_episode_is_distinct_rows_of_one_entity_of_its_split(tmp_path):
    family = tasks(write_table(tmp_path / "ratings.csv"))
    split = json.loads((tmp_path / "ratings.csv.split.json").read_text())
    for name in ("train", "test"):
        episode = family.sample(name, 64, torch.Generator().manual_seed(1))
        assert episode.support_x.shape == (64, 2, 3) and episode.query_x.shape == (64, 3, 3)
        assert episode.support_y.shape == (64, 2, 1) and episode.query_y.dtype == torch.float32
        # The standardised number gives back 100 * user + row.
        x = torch.cat([episode.support_x, episode.query_x], 1)[..., 0].double()
        mean, std = family_stats(tmp_path / "ratings.csv", split["train"])
        raw = (x * std + mean).round().long()
        users = raw // 100
        assert (users == users[:, :1]).all()  # one entity per task
        assert all(len(set(r.tolist())) == 5 for r in raw)  # distinct rows
        assert {f"u{u}" for u in users[:, 0].tolist()} <= set(split[name])
        y = torch.cat([episode.support_y, episode.query_y], 1)[..., 0]
        assert torch.equal(y, (1 + (users + raw % 100) % 5).float())


def family_stats(path, train_users):
    with path.open() as f:
        values = [float(r["x"]) for r in csv.DictReader(f) if r["user"] in train_users]
    values = torch.tensor(values, dtype=torch.float64)
    return values.mean(), values.std(correction=0)


def test_categories_are_coded_from_the_training_entities_unseen_ones_zero(tmp_path):
    path = write_table(tmp_path / "ratings.csv")
    family = tasks(path)
    with path.open() as f:
        rows = list(csv.DictReader(f))
    split = json.loads((tmp_path / "ratings.csv.split.json").read_text())
    seen = {r["item"] for r in rows if r["user"] in split["train"]}
    assert family.categories == [len(seen) + 1, 3]  # items, genres: each + "unseen"
    codes = {s: family.splits[s].inputs[:, 1] for s in ("train", "test")}
    assert codes["train"].min() >= 1
    unseen_test = sum(r["item"] not in seen for r in rows if r["user"] in split["test"])
    assert int((codes["test"] == 0).sum()) == unseen_test


def test_classification_targets_are_class_indices(tmp_path):
    family = tasks(write_table(tmp_path / "ratings.csv"), objective="classification")
    assert family.num_outputs == 5 and family.metric_name == "accuracy"
    episode = family.sample("train", 8, torch.Generator().manual_seed(0))
    assert episode.support_y.dtype == torch.int64 and episode.support_y.shape == (8, 2)
    assert set(episode.query_y.flatten().tolist()) <= set(range(5))


def test_parquet_gives_the_csv_tables_episodes(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    path = write_table(tmp_path / "ratings.csv")
    with path.open() as f:
        rows = list(csv.DictReader(f))
    types = {"user": str, "item": int, "x": float, "genre": str, "rating": int}
    pq.write_table(pa.table({c: [types[c](r[c]) for r in rows] for c in COLUMNS}),
                   tmp_path / "ratings.parquet")
    csv_family = tasks(path)
    (tmp_path / "ratings.parquet.split.json").write_text(
        (tmp_path / "ratings.csv.split.json").read_text())
    a = csv_family.sample("train", 16, torch.Generator().manual_seed(2))
    b = tasks(tmp_path / "ratings.parquet").sample("train", 16, torch.Generator().manual_seed(2))
    for x, y in zip(a.tensors(), b.tensors()):
        assert torch.equal(x, y)


def test_short_entities_are_skipped_and_counted(tmp_path, caplog):
    path = write_table(tmp_path / "ratings.csv", rows_of=lambda u: 3 if u % 2 else 8)
    with caplog.at_level(logging.INFO, logger="maml_cli"):
        family = tasks(path)
    split = json.loads((tmp_path / "ratings.csv.split.json").read_text())
    short = sum(int(u[1:]) % 2 for u in split["train"])
    assert len(family.splits["train"].counts) == len(split["train"]) - short
    assert f"train split: {short} of {len(split['train'])} entities have fewer than" in caplog.text


@pytest.mark.parametrize("kwargs, message", [
    ({"features": ["x", "age"], "categorical": []},
     r"no column 'age' in .*ratings.csv \(its columns: user, item"),
    ({"target": "score"}, "no column 'score'"),
    ({"categorical": ["item"]}, "task.features: column 'genre' is not numeric \\(it holds "
                                "'(drama|comedy)'\\); list it in task.categorical"),
    ({"categorical": ["item", "user"]}, "task.categorical: 'user' is not one of task.features"),
    ({"target": "genre"}, "task.target: column 'genre' is not numeric \\(it holds "
                          "'(drama|comedy)'\\); set task.objective=classification"),
    ({"objective": "ranking"}, "task.objective must be one of regression, classification"),
    ({"shots": 10, "queries": 10}, "the train split has no entity with at least task.shots \\+ "
                                   "task.queries = 20 rows"),
    ({"features": []}, "task.features: list the input columns"),
])
def test_bad_tables_are_one_line_errors(tmp_path, kwargs, message):
    path = write_table(tmp_path / "ratings.csv")
    with pytest.raises(UserError, match=message):
        tasks(path, **kwargs)


def test_a_missing_file_and_an_entity_outside_the_split_are_errors(tmp_path):
    with pytest.raises(UserError, match="task.path: no file .*nowhere.csv"):
        tasks(tmp_path / "nowhere.csv")
    path = write_table(tmp_path / "ratings.csv", users=10)
    tasks(path)
    write_table(path, users=12)  # two new users since the split was written
    with pytest.raises(UserError, match="2 entities of .* are in no split of .*split.json "
                                        "\\(first: 'u10'\\); delete that file"):
        tasks(path)
    (tmp_path / "ratings.csv.split.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="is not a split file"):
        tasks(path)


@pytest.mark.parametrize("objective", ["regression", "classification"])
def test_a_null_query_count_takes_all_the_other_rows_padded_and_ignored(tmp_path, objective):
    path = write_table(tmp_path / "ratings.csv", users=30, rows_of=lambda u: 4 + u % 7)
    family = tasks(path, queries=None, max_queries=5, objective=objective)
    split = json.loads((tmp_path / "ratings.csv.split.json").read_text())
    episode = family.sample("train", 200, torch.Generator().manual_seed(0))
    assert episode.query_x.shape[:2] == (200, 5)  # capped: the longest train entity has 10
    mean, std = family_stats(path, split["train"])
    raw = lambda x: (x[..., 0].double() * std + mean).round().long()  # noqa: E731
    support, query = raw(episode.support_x), raw(episode.query_x)
    regression = objective == "regression"
    has_target = (~episode.query_y[..., 0].isnan()) if regression else episode.query_y >= 0
    for t in range(200):
        user, rows = int(support[t, 0]) // 100, 4 + int(support[t, 0]) // 100 % 7
        real = query[t][has_target[t]]
        # Every other row of the entity, up to the cap; the rest of the query is padding.
        assert len(real) == min(rows - 2, 5) and set((real // 100).tolist()) == {user}
        assert not set(real.tolist()) & set(support[t].tolist())
    assert (~has_target).any() and has_target.all(1).any()
    # Padding takes no part in the loss or the metrics: the same as on the real rows alone.
    torch.manual_seed(0)
    prediction = torch.randn(5, family.num_outputs)
    y, keep = episode.query_y[0], has_target[0]
    for fn in (family.loss, family.metric):
        torch.testing.assert_close(fn(prediction, y), fn(prediction[keep], y[keep]))
    if regression:
        assert family.metrics(prediction, y).isfinite().all()
