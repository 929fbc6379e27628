"""Per-entity tasks from a table (cold-start personalisation): each entity, the rows sharing a
value of the `group` column (a user, a patient, a device), is a task; `shots` of its rows are
the support set and `queries` others the query set. Entities are split into train / val / test
by a split file beside the table (<path>.split.json unless task.split_file says otherwise),
written once, seeded, the first time the table is used, so test entities are never seen in
training.

Inputs: the numeric `features`, standardised with the mean and deviation of the training
entities' rows, then the `categorical` ones as integer codes (1, 2, ... for the values the
training entities have, 0 for any other), which model=embedding_mlp embeds.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from maml_cli import files
from maml_cli.episode import Episode
from maml_cli.errors import UserError
from maml_cli.tasks.base import SPLITS, TaskFamily, random_split
from maml_cli.tasks.images import draw_rows, group_rows

OBJECTIVES = ("regression", "classification")
# The target of a padding row of a query (task.queries=null): none, in each objective's terms.
NO_TARGET = {"regression": math.nan, "classification": -100}
# The share of entities for validation and for test in a split file written here.
VAL_SHARE, TEST_SHARE = 0.15, 0.15

log = logging.getLogger("maml_cli")


@dataclass
class Entities:
    """A split's usable entities, on the device."""
    inputs: torch.Tensor  # [rows, features]
    targets: torch.Tensor  # [rows, 1] (regression) or [rows] (class indices)
    index: torch.Tensor  # [entities, most rows of an entity]: each entity's rows, padded
    counts: torch.Tensor  # [entities]: rows of each entity
    queries: int  # query rows of an episode's task (with task.queries=null: the widest's)


def read_columns(path: Path, wanted: Sequence[str]) -> dict[str, list]:
    """The `wanted` columns of a CSV file (as strings) or a Parquet file (as stored)."""
    if not path.is_file():
        raise UserError(f"task.path: no file {path}")
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError("reading Parquet needs pyarrow: pip install 'maml-cli[table]'") \
                from None
        try:
            table = pq.read_table(path)
        except Exception as e:
            raise UserError(f"cannot read {path} as Parquet: {e}") from None
        names = table.column_names
        _check_columns(path, names, wanted)
        return {c: table.column(c).to_pylist() for c in wanted}
    with path.open(newline="") as f:
        reader = csv.reader(f)
        names = next(reader, None)
        if names is None:
            raise UserError(f"{path} is empty: a CSV file needs a header row of column names")
        _check_columns(path, names, wanted)
        positions = [names.index(c) for c in wanted]
        columns: dict[str, list] = {c: [] for c in wanted}
        for line, row in enumerate(reader, start=2):
            if len(row) != len(names):
                raise UserError(f"{path}, line {line}: {len(row)} fields where the header has "
                                f"{len(names)}")
            for c, i in zip(wanted, positions):
                columns[c].append(row[i])
    return columns


def _check_columns(path: Path, names: Sequence[str], wanted: Sequence[str]) -> None:
    for column in wanted:
        if column not in names:
            raise UserError(f"no column {column!r} in {path} (its columns: {', '.join(names)})")


def numbers(values: list, column: str, key: str) -> torch.Tensor:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        bad = next(v for v in values if not _is_number(v))
        fix = ("list it in task.categorical to embed it" if key == "task.features" else
               "set task.objective=classification for a target of classes")
        raise UserError(f"{key}: column {column!r} is not numeric (it holds {bad!r}); "
                        f"{fix}") from None
    if not all(math.isfinite(v) for v in out):
        raise UserError(f"{key}: column {column!r} holds a value that is not finite")
    return torch.tensor(out, dtype=torch.float64)


def _is_number(value) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


class TableTasks(TaskFamily):
    """Episodes gathered on the device: an entity per task, drawn uniformly from its split's
    entities that have at least shots + queries rows (the others are skipped, and counted in
    the log), then that many distinct rows of it."""

    def __init__(self, path: str, group: str, target: str, features: Sequence[str] = (),
                 categorical: Sequence[str] = (), objective: str = "regression", shots: int = 5,
                 queries: int | None = 10, max_queries: int = 100,
                 split_file: str | None = None, device="cpu", data=None):
        super().__init__(device, data)
        if objective not in OBJECTIVES:  # before any file is read
            raise UserError(f"task.objective must be one of {', '.join(OBJECTIVES)}")
        if not features:
            raise UserError("task.features: list the input columns")
        for column in categorical:
            if column not in features:
                raise UserError(f"task.categorical: {column!r} is not one of task.features")
        self.path, self.shots, self.queries = Path(path).expanduser(), shots, queries
        self.max_queries = max_queries
        self.objective = objective
        self.split_file = (Path(split_file).expanduser() if split_file
                           else self.path.with_name(self.path.name + ".split.json"))
        numeric = [c for c in features if c not in categorical]
        columns = self.read(list(dict.fromkeys([group, target, *features])))
        entities = [str(v) for v in columns[group]]
        split_of = self._entity_splits(sorted(set(entities)))
        rows = {s: [i for i, e in enumerate(entities) if split_of[e] == s] for s in SPLITS}

        train = torch.tensor(rows["train"], dtype=torch.long)
        inputs = []
        for column in numeric:
            x = numbers(columns[column], column, "task.features")
            mean, std = x[train].mean(), x[train].std(correction=0)
            inputs.append((x - mean) / (std if std > 0 else 1))
        self.categories = []  # codes per categorical column, 0 for unseen: embedding sizes
        for column in categorical:
            values = [str(v) for v in columns[column]]
            seen = sorted({values[i] for i in rows["train"]})
            vocabulary = {v: i + 1 for i, v in enumerate(seen)}
            inputs.append(torch.tensor([vocabulary.get(v, 0) for v in values],
                                       dtype=torch.float64))
            self.categories.append(len(vocabulary) + 1)
        x = torch.stack(inputs, 1).float()
        if objective == "regression":
            y = numbers(columns[target], target, "task.target").float()[:, None]
            self.num_outputs, self.metric_name, self.higher_is_better = 1, "mse", False
            self.extra_metrics = {"mae": mae}
        else:
            labels = [str(v) for v in columns[target]]
            # Numbers in numeric order (ratings 1..10), then any other values by name.
            classes = sorted(set(labels), key=lambda v: (not _is_number(v),
                                                         float(v) if _is_number(v) else 0, v))
            if len(classes) < 2:
                raise UserError(f"task.target: column {target!r} has one value; classification "
                                f"needs at least two")
            code = {v: i for i, v in enumerate(classes)}
            y = torch.tensor([code[v] for v in labels])
            self.num_outputs = len(classes)
            self.metric_name, self.higher_is_better = "accuracy", True
        self.input_shape = (x.shape[1],)
        self.splits = {s: self._usable(s, x, y, entities, rows[s]) for s in SPLITS}

    def read(self, wanted: list[str]) -> dict[str, list]:
        """The `wanted` columns of the table, each a list of its rows' values."""
        return read_columns(self.path, wanted)

    def _entity_splits(self, entities: list[str]) -> dict[str, str]:
        """{entity: split} from the split file, written first if there is none."""
        if not self.split_file.exists():
            split = random_split(entities, 0, VAL_SHARE, TEST_SHARE, "entities")
            try:
                files.write_json(self.split_file, split, indent=1)
            except OSError as e:
                raise UserError(f"cannot write the entity split {self.split_file}: {e} (set "
                                f"task.split_file to a writable place)") from None
            log.info("wrote the entity split %s: %s", self.split_file,
                     " / ".join(f"{len(split[s])} {s}" for s in SPLITS))
        try:
            split = json.loads(self.split_file.read_text())
            split_of = {str(e): s for s in SPLITS for e in split[s]}
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"{self.split_file} is not a split file (a JSON object with lists "
                            f"'train', 'val' and 'test' of entities)") from None
        unsplit = [e for e in entities if e not in split_of]
        if unsplit:
            raise UserError(f"{len(unsplit)} entities of {self.path} are in no split of "
                            f"{self.split_file} (first: {unsplit[0]!r}); delete that file to "
                            f"split them all again")
        return split_of

    def _usable(self, split: str, x, y, entities: list[str], rows: list[int]) -> Entities:
        """The split's rows grouped by entity, without the entities too short for an episode."""
        need = self.shots + (self.queries or 1)
        what = f"task.shots + {'task.queries' if self.queries else '1'} = {need}"
        index = {}
        for i in rows:
            index.setdefault(entities[i], []).append(i)
        kept = [e for e, members in sorted(index.items()) if len(members) >= need]
        if len(kept) < len(index):
            log.info("%s split: %d of %d entities have fewer than %s rows and are skipped",
                     split, len(index) - len(kept), len(index), what)
        if not kept:
            raise UserError(f"the {split} split has no entity with at least {what} rows "
                            f"({len(index)} entities, the largest with "
                            f"{max(map(len, index.values()), default=0)})")
        chosen = torch.tensor([i for e in kept for i in index[e]])
        rows, counts = group_rows(torch.tensor([n for n, e in enumerate(kept) for _ in index[e]]))
        queries = self.queries or min(self.max_queries, int(counts.max()) - self.shots)
        dev = self.device
        return Entities(x[chosen].to(dev), y[chosen].to(dev), rows.to(dev), counts.to(dev),
                        queries)

    def sample(self, split: str, num_tasks: int, generator: torch.Generator) -> Episode:
        s = self.splits[split]
        entity = torch.randint(len(s.counts), (num_tasks, 1), generator=generator,
                               device=self.device)
        width = self.shots + s.queries
        rows = draw_rows(s.index, s.counts, entity, width, generator)[:, 0]
        x, y = s.inputs[rows], s.targets[rows]  # [tasks, shots + queries, ...]
        # With task.queries=null a task's query is all its entity's other rows (at most
        # max_queries); past them, padding, whose target says "none" (NaN, or class -100).
        padding = torch.arange(width, device=self.device) >= s.counts[entity]
        y = y.masked_fill(padding[..., None] if y.dim() == 3 else padding,
                          NO_TARGET[self.objective])
        return Episode(x[:, :self.shots], y[:, :self.shots], x[:, self.shots:],
                       y[:, self.shots:])

    def loss(self, prediction, target):
        if self.objective == "regression":
            return mse(prediction, target)
        return F.cross_entropy(prediction, target, ignore_index=NO_TARGET["classification"])

    def metric(self, prediction, target):
        if self.objective == "regression":
            return mse(prediction, target)
        valid = target != NO_TARGET["classification"]
        return ((prediction.argmax(dim=-1) == target) & valid).sum() / valid.sum()


def _errors(prediction, target):
    """Prediction errors of the rows with a target, 0 at padding rows, and their count."""
    valid = ~target.isnan()
    return (prediction - target.nan_to_num()) * valid, valid.sum()


def mse(prediction, target):
    errors, count = _errors(prediction, target)
    return errors.square().sum() / count


def mae(prediction, target):
    errors, count = _errors(prediction, target)
    return errors.abs().sum() / count


def ndcg(k: int):
    """nDCG@k of a task's query items ranked by their predicted value, the gains their true
    values (ratings), so 1 when the top k predicted are the k best rated."""
    def fn(prediction, target):
        valid = ~target[..., 0].isnan()  # padding rows rank last and gain nothing
        predicted = prediction[..., 0].masked_fill(~valid, -torch.inf)
        relevance = target[..., 0].nan_to_num()
        top = min(k, relevance.shape[-1])
        discount = 1 / torch.log2(torch.arange(2, top + 2, device=relevance.device,
                                               dtype=relevance.dtype))
        ranked = relevance.gather(-1, predicted.argsort(descending=True)[..., :top])
        ideal = relevance.sort(descending=True).values[..., :top]
        return (ranked * discount).sum(-1) / (ideal * discount).sum(-1)
    return fn

