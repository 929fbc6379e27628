"""MovieLens as per-user tasks (cold-start recommendation, as MeLU, Lee et al. KDD 2019): each
user is a task, a few of their ratings the support set and others the query set; the users of
the test split were never seen in training. Read from the files GroupLens distributes, under
<data.root>/movielens/<variant>/:

    ml-100k           u.data (user, item, rating, time; tabs), u.item (item | title | ... | 19
                      genre flags), u.user (user | age | gender | occupation | zip)
    ml-1m             ratings.dat (user::item::rating::time), movies.dat (item::title::genres
                      joined by |), users.dat (user::gender::age::occupation::zip)
    ml-latest-small   ratings.csv (userId,movieId,rating,timestamp), movies.csv
                      (movieId,title,genres joined by |)

Inputs: the user and item ids and the user's attributes where the files have them (gender,
occupation; age, numeric in ml-100k, a bracket code in ml-1m) as categories, and the item's
genres as 0/1 numbers. Target: the rating. Metrics: MSE, then MAE and nDCG@3 of the query items.
"""

from __future__ import annotations

import csv
import urllib.request
import zipfile
from pathlib import Path

from maml_cli.errors import UserError
from maml_cli.tasks.table import TableTasks, mae, ndcg

VARIANTS = ("ml-100k", "ml-1m", "ml-latest-small")
URL = "https://files.grouplens.org/datasets/movielens/{}.zip"
FILES = {"ml-100k": ("u.data", "u.item", "u.user"), "ml-1m": ("ratings.dat", "movies.dat",
                                                               "users.dat"),
         "ml-latest-small": ("ratings.csv", "movies.csv")}
# ml-100k's u.item genre flags, in file order.
GENRES_100K = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
               "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
               "Romance", "Sci-Fi", "Thriller", "War", "Western")


def _lines(path: Path, sep: str) -> list[list[str]]:
    # GroupLens's older files are Latin-1 (titles with accents).
    with path.open(encoding="latin-1", newline="") as f:
        if sep == ",":
            rows = list(csv.reader(f))[1:]  # a header row, quoted titles
        else:
            rows = [line.rstrip("\r\n").split(sep) for line in f if line.strip()]
    return rows


def _genre_flags(genres: list[str], names: list[str]) -> dict[str, float]:
    return {f"genre:{g}": float(g in genres) for g in names}


def read_movielens(folder: Path, variant: str) -> tuple[dict[str, list], list[str], list[str]]:
    """(columns, features, categorical) of one rating per row, the item's and the user's
    attributes joined on."""
    if variant == "ml-100k":
        ratings = [(u, i, r) for u, i, r, _ in _lines(folder / "u.data", "\t")]
        items = {row[0]: _genre_flags([g for g, flag in zip(GENRES_100K, row[5:24])
                                       if flag == "1"], list(GENRES_100K))
                 for row in _lines(folder / "u.item", "|")}
        users = {u: {"age": age, "gender": gender, "occupation": job}
                 for u, age, gender, job, _ in _lines(folder / "u.user", "|")}
        numeric_user, categorical_user = ["age"], ["gender", "occupation"]
    elif variant == "ml-1m":
        ratings = [(u, i, r) for u, i, r, _ in _lines(folder / "ratings.dat", "::")]
        movies = _lines(folder / "movies.dat", "::")
        names = sorted({g for row in movies for g in row[2].split("|")})
        items = {row[0]: _genre_flags(row[2].split("|"), names) for row in movies}
        users = {u: {"gender": gender, "age": age, "occupation": job}
                 for u, gender, age, job, _ in _lines(folder / "users.dat", "::")}
        numeric_user, categorical_user = [], ["gender", "age", "occupation"]
    else:
        ratings = [(u, i, r) for u, i, r, _ in _lines(folder / "ratings.csv", ",")]
        movies = _lines(folder / "movies.csv", ",")
        names = sorted({g for row in movies for g in row[2].split("|")} - {"(no genres listed)"})
        items = {row[0]: _genre_flags(row[2].split("|"), names) for row in movies}
        users, numeric_user, categorical_user = {}, [], []
    genre_columns = list(next(iter(items.values())))
    columns: dict[str, list] = {c: [] for c in ["user", "item", "rating", *genre_columns,
                                                *numeric_user, *categorical_user]}
    for user, item, rating in ratings:
        if item not in items or (users and user not in users):
            raise UserError(f"{folder}: a rating of item {item} by user {user}, who or which "
                            f"is not in the item or user file")
        for key, value in (("user", user), ("item", item), ("rating", rating),
                           *items[item].items(), *users.get(user, {}).items()):
            columns[key].append(value)
    features = [*genre_columns, *numeric_user, "user", "item", *categorical_user]
    return columns, features, ["user", "item", *categorical_user]


class MovieLens(TableTasks):
    """Each user a task (TableTasks with the columns above): `shots` of their ratings the
    support set, `queries` others (None: all the others, at most `max_queries`) the query set;
    the split file of users is written beside the ratings file."""

    def __init__(self, variant: str = "ml-100k", shots: int = 10, queries: int | None = 10,
                 max_queries: int = 100, split_file: str | None = None, device="cpu",
                 data=None):
        if variant not in VARIANTS:  # before any file is read
            raise UserError(f"task.variant must be one of {', '.join(VARIANTS)}")
        folder = Path(data.root).expanduser() / "movielens" / variant
        names = FILES[variant]
        if not all((folder / n).is_file() for n in names):
            if data.download:
                download(folder, variant)
            else:
                raise UserError(f"no MovieLens {variant} in {folder} (it needs "
                                f"{', '.join(names)}): data.download=true fetches "
                                f"{URL.format(variant)}, or unzip that file into {folder.parent}")
        self._columns, features, categorical = read_movielens(folder, variant)
        super().__init__(str(folder / names[0]), "user", "rating", features, categorical,
                         "regression", shots, queries, max_queries, split_file, device, data)
        self.extra_metrics = {"mae": mae, "ndcg@3": ndcg(3)}

    def read(self, wanted):
        return {c: self._columns[c] for c in wanted}


def download(folder: Path, variant: str) -> None:
    """GroupLens's zip of `variant`, unzipped into folder's parent (the zip holds folder)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    archive = folder.parent / f"{variant}.zip"
    try:
        urllib.request.urlretrieve(URL.format(variant), archive)
        with zipfile.ZipFile(archive) as z:
            z.extractall(folder.parent)
    except (OSError, zipfile.BadZipFile) as e:
        raise UserError(f"downloading {URL.format(variant)} failed ({e}); unzip it into "
                        f"{folder.parent} by hand") from None
    finally:
        archive.unlink(missing_ok=True)
