"""task=movielens on small copies written here in each of GroupLens's three file layouts."""

import io
import urllib.request
import zipfile

import pytest
import torch

from maml_cli.errors import UserError
from maml_cli.tasks.base import DataPlace
from maml_cli.tasks.movielens import GENRES_100K, MovieLens
from maml_cli.tasks.table import ndcg

USERS, ITEMS = 24, 40


def ratings(seed=0):
    """(user, item, rating) triples: every user rates 20 to 30 distinct items."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for u in range(1, USERS + 1):
        count = 20 + int(torch.randint(11, (1,), generator=g))
        for i in (torch.randperm(ITEMS, generator=g)[:count] + 1).tolist():
            out.append((u, i, 1 + int(torch.randint(5, (1,), generator=g))))
    return out


def write_100k(folder):
    folder.mkdir(parents=True)
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t88125{u}\n" for u, i, r in ratings()))
    (folder / "u.item").write_text("".join(
        f"{i}|Film {i} (1995)|01-Jan-1995||http://x|" + "|".join(
            "1" if g % 4 == i % 4 else "0" for g in range(19)) + "\n"
        for i in range(1, ITEMS + 1)), encoding="latin-1")
    (folder / "u.user").write_text("".join(
        f"{u}|{20 + u}|{'MF'[u % 2]}|{['writer', 'student', 'other'][u % 3]}|8570{u}\n"
        for u in range(1, USERS + 1)))


def write_1m(folder):
    folder.mkdir(parents=True)
    (folder / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::97830{u}\n"
                                                for u, i, r in ratings()))
    (folder / "movies.dat").write_text("".join(
        f"{i}::Café {i} (1999)::{['Comedy', 'Drama|Romance', 'Action|Sci-Fi|War'][i % 3]}\n"
        for i in range(1, ITEMS + 1)), encoding="latin-1")
    (folder / "users.dat").write_text("".join(
        f"{u}::{'MF'[u % 2]}::{[1, 18, 25][u % 3]}::{u % 7}::4806{u}\n"
        for u in range(1, USERS + 1)))


def write_latest_small(folder):
    folder.mkdir(parents=True)
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(
        f"{u},{i},{r - 0.5},96498{u}\n" for u, i, r in ratings()))
    (folder / "movies.csv").write_text("movieId,title,genres\n" + "".join(
        f'{i},"Film, The {i} (2001)",{["Comedy", "Drama|Thriller", "(no genres listed)"][i % 3]}\n'
        for i in range(1, ITEMS + 1)))


LAYOUTS = {"ml-100k": (write_100k, 19 + 1, ["user", "item", "gender", "occupation"]),
           "ml-1m": (write_1m, 6, ["user", "item", "gender", "age", "occupation"]),
           "ml-latest-small": (write_latest_small, 3, ["user", "item"])}


def place(root, download=False):
    return DataPlace(str(root), download, str(root / "cache"))


@pytest.mark.parametrize("variant", LAYOUTS)
def test_each_layout_gives_per_user_tasks_with_genres_and_user_attributes(tmp_path, variant):
    write, numeric, categorical = LAYOUTS[variant]
    write(tmp_path / "movielens" / variant)
    family = MovieLens(variant, shots=4, queries=6, data=place(tmp_path))
    # Inputs: the genre flags (and ml-100k's age) as numbers, then the categories.
    assert family.input_shape == (numeric + len(categorical),)
    assert len(family.categories) == len(categorical)
    assert family.metric_names == ["mse", "mae", "ndcg@3"]
    split = (tmp_path / "movielens" / variant).glob("*.split.json")
    assert len(list(split)) == 1  # beside the ratings file
    episode = family.sample("test", 8, torch.Generator().manual_seed(0))
    assert episode.support_x.shape == (8, 4, numeric + len(categorical))
    assert episode.query_y.shape == (8, 6, 1)
    low = 0.5 if variant == "ml-latest-small" else 1
    assert episode.query_y.min() >= low and episode.query_y.max() <= 5
    # Test users were never seen in training: their user-id code is the unseen one, 0.
    user_code = episode.support_x[..., numeric + categorical.index("user")]
    assert (user_code == 0).all()
    train = family.sample("train", 8, torch.Generator().manual_seed(0))
    assert (train.support_x[..., numeric + categorical.index("user")] >= 1).all()
    metrics = family.metrics(episode.query_y[0], episode.query_y[0])
    assert metrics.tolist() == [0.0, 0.0, 1.0]  # perfect predictions: no error, ideal ranking


def test_ndcg_ranks_by_prediction_with_the_true_ratings_as_gains():
    truth = torch.tensor([[5.0], [1.0], [4.0], [2.0]])
    discount = 1 / torch.log2(torch.tensor([2.0, 3.0, 4.0]))
    ideal = (torch.tensor([5.0, 4.0, 2.0]) * discount).sum()
    reversed_order = torch.tensor([[1.0], [4.0], [2.0], [3.0]])  # ranks: 1, 2, 4 by prediction
    got = ndcg(3)(reversed_order, truth)
    assert got == pytest.approx(float((torch.tensor([1.0, 2.0, 4.0]) * discount).sum() / ideal))
    assert ndcg(3)(truth, truth) == pytest.approx(1.0)


def test_a_missing_dataset_names_its_folder_and_how_to_get_it(tmp_path):
    with pytest.raises(UserError, match=r"no MovieLens ml-1m in .*movielens/ml-1m \(it needs "
                                        r"ratings.dat, movies.dat, users.dat\): "
                                        r"data.download=true fetches https://files.grouplens.org"
                                        r"/datasets/movielens/ml-1m.zip"):
        MovieLens("ml-1m", data=place(tmp_path))
    with pytest.raises(UserError, match="task.variant must be one of"):
        MovieLens("ml-20m", data=place(tmp_path))


def test_download_unzips_grouplens_archive_into_the_data_root(tmp_path, monkeypatch):
    source = tmp_path / "source"
    write_100k(source / "ml-100k")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        for path in (source / "ml-100k").iterdir():
            z.write(path, f"ml-100k/{path.name}")
    fetched = []

    def fake_urlretrieve(url, to):  # no network here: the archive GroupLens would send
        fetched.append(url)
        to.write_bytes(archive.getvalue())

    monkeypatch.setattr(urllib.request, "urlretrieve", fake_urlretrieve)
    root = tmp_path / "data"
    family = MovieLens("ml-100k", shots=4, queries=6, data=place(root, download=True))
    assert fetched == ["https://files.grouplens.org/datasets/movielens/ml-100k.zip"]
    assert (root / "movielens" / "ml-100k" / "u.data").is_file()
    assert not (root / "movielens" / "ml-100k.zip").exists()
    assert family.input_shape == (20 + 4,)


def test_genres_are_read_from_each_layouts_own_encoding(tmp_path):
    write_100k(tmp_path / "movielens" / "ml-100k")
    write_1m(tmp_path / "movielens" / "ml-1m")
    a = MovieLens("ml-100k", shots=4, queries=6, data=place(tmp_path))
    b = MovieLens("ml-1m", shots=4, queries=6, data=place(tmp_path))
    assert len(GENRES_100K) == 19 and a.input_shape[0] == 19 + 1 + 4
    assert b.input_shape[0] == 6 + 5  # Action, Comedy, Drama, Romance, Sci-Fi, War


def test_ndcg_and_mae_skip_the_padding_of_a_null_query_count(tmp_path):
    write_100k(tmp_path / "movielens" / "ml-100k")
    family = MovieLens("ml-100k", shots=5, queries=None, max_queries=25, data=place(tmp_path))
    episode = family.sample("train", 16, torch.Generator().manual_seed(0))
    y = episode.query_y
    assert y.shape == (16, 25, 1) and y.isnan().any()  # users rate 20 to 30: 15 to 25 others
    for t in range(16):
        keep = ~y[t, :, 0].isnan()
        perfect = family.metrics(y[t].nan_to_num(), y[t])
        torch.testing.assert_close(perfect, torch.tensor([0.0, 0.0, 1.0]))
        guess = torch.linspace(5, 1, 25)[:, None]
        torch.testing.assert_close(family.metrics(guess, y[t]),
                                   family.metrics(guess[keep], y[t][keep]))
