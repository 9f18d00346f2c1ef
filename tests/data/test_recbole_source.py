"""RecBole atomic files (``source: recbole``) on a hand-made ml-100k-like folder: prepared end to end,
behaviors from ratings / a behavior field / nothing, and typed headers that fail clearly."""

from __future__ import annotations

import re

import pytest

from llmrec.config import ConfigError
from llmrec.data import DataError, load_data_config, prepare

INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
ITEM_HEADER = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"
MOVIES = {  # item id -> (title tokens as RecBole writes them, year, genres)
    "1": ("Toy Story", "1995", "Animation Children's Comedy"),
    "2": ("GoldenEye", "1995", "Action Adventure Thriller"),
    "3": ('"Great Day in Harlem, A"', "1994", "Documentary"),
    "4": ("Amélie", "2001", "Comedy Romance"),
    "5": ("Heat", "1995", "Action Crime Thriller"),
    "6": ("Fargo", "1996", "Crime Drama Thriller"),
}
# (user, item, rating): every user rates 4-6 movies, at least two of them >= 4 (like)
RATINGS = [
    ("10", "1", 5), ("10", "2", 3), ("10", "3", 4), ("10", "4", 1), ("10", "5", 4),
    ("20", "2", 4), ("20", "3", 2), ("20", "4", 5), ("20", "6", 4), ("20", "1", 3),
    ("30", "1", 4), ("30", "5", 5), ("30", "6", 2), ("30", "3", 4),
    ("40", "4", 4), ("40", "5", 3), ("40", "6", 5), ("40", "2", 4), ("40", "1", 1), ("40", "3", 5),
]
LIKE = {1: "dislike", 2: "dislike", 3: "neutral", 4: "like", 5: "like"}


def write_recbole(folder, inter_header=INTER_HEADER, rows=None, item_file=True):
    """``folder/<folder.name>.inter`` (+ ``.item``) in RecBole's atomic format."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = rows if rows is not None else [
        f"{u}\t{i}\t{float(r)}\t{881250949.0 + 60 * n}" for n, (u, i, r) in enumerate(RATINGS)
    ]
    (folder / f"{folder.name}.inter").write_text("\n".join([inter_header, *rows]) + "\n", encoding="utf-8")
    if item_file:
        lines = [ITEM_HEADER] + [f"{i}\t{t}\t{y}\t{g}" for i, (t, y, g) in MOVIES.items()]
        (folder / f"{folder.name}.item").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def recbole_config(tmp_path, path, *overrides):
    base = [
        "name=mini", "source=recbole", f"path={path}", f"cache_dir={tmp_path / 'cache'}", "candidates=[]",
        "behaviors=[dislike, neutral, like]", "target_behavior=like", "k_core=1",
        "columns={behavior: null, rating: rating}", f"rating_behaviors={LIKE}",
        "item_columns={title: movie_title, category: class}",
    ]
    return load_data_config(None, [*base, *overrides])


def test_ml100k_like_folder_prepares_end_to_end(tmp_path):
    folder = write_recbole(tmp_path / "mini")
    ds = prepare(recbole_config(tmp_path, folder))
    raw = ds.stats["raw"]
    assert (raw["users"], raw["items"], raw["interactions"]) == (4, 6, len(RATINGS))
    assert raw["per_behavior"] == {
        name: sum(LIKE[r] == name for _, _, r in RATINGS) for name in ("dislike", "neutral", "like")
    }
    assert ds.user_ids == ["10", "20", "30", "40"] and ds.item_ids == ["1", "2", "3", "4", "5", "6"]
    titles = dict(zip(ds.item_ids, ds.item_titles(), strict=True))
    assert titles == {"1": "Toy Story", "2": "GoldenEye", "3": '"Great Day in Harlem, A"', "4": "Amélie",
                      "5": "Heat", "6": "Fargo"}
    assert ds.catalog.set_index("item_id").loc["1", "category"] == "Animation|Children's|Comedy"
    # user 10: ratings in file order, timestamps from the float field
    first = ds.sequences[0]
    assert first.items.tolist() == [0, 1, 2, 3, 4]
    assert first.timestamps.tolist() == [881250949 + 60 * n for n in range(5)]
    assert [ds.behaviors[b] for b in first.behaviors] == ["like", "neutral", "like", "dislike", "like"]
    assert (ds.item_ids[first.items[first.valid_pos]], ds.item_ids[first.items[first.test_pos]]) == ("3", "5")
    assert ds.samples["test"].num_rows == 4


def test_path_may_be_the_inter_file(tmp_path):
    folder = write_recbole(tmp_path / "mini")
    by_folder = prepare(recbole_config(tmp_path, folder))
    by_file = prepare(recbole_config(tmp_path, folder / "mini.inter"))
    assert by_file.fingerprint == by_folder.fingerprint and by_file.item_titles() == by_folder.item_titles()


def test_behavior_field_and_single_behavior_logs(tmp_path):
    actions = ["view", "buy", "view", "buy", "buy"] * 4
    rows = [f"{u}\t{i}\t{a}\t{100 + n}" for n, ((u, i, _), a) in enumerate(zip(RATINGS, actions, strict=True))]
    folder = write_recbole(tmp_path / "acts", "user_id:token\titem_id:token\taction:token\ttimestamp:float", rows)
    cfg = recbole_config(tmp_path, folder, "behaviors=[view, buy]", "target_behavior=buy", "rating_behaviors=null",
                         "columns={behavior: action}")
    assert prepare(cfg).stats["raw"]["per_behavior"] == {"view": 8, "buy": 12}
    # no behavior field and no rating: every row is the target behavior
    cfg = recbole_config(tmp_path, folder, "behaviors=[interact]", "target_behavior=interact", "rating_behaviors=null",
                         "columns={behavior: null}")
    assert prepare(cfg).stats["raw"]["per_behavior"] == {"interact": len(RATINGS)}


def test_without_an_item_file_titles_are_the_ids(tmp_path):
    folder = write_recbole(tmp_path / "mini", item_file=False)
    ds = prepare(recbole_config(tmp_path, folder))
    assert ds.item_titles()[:2] == ["item 1", "item 2"]


@pytest.mark.parametrize("header, problem", [
    ("user_id\titem_id\trating\ttimestamp", "header column 1 'user_id' has no type"),
    ("user_id:token\titem_id:token\trating:int\ttimestamp:float",
     "header column 3 'rating:int' has the unknown type 'int'"),
    ("196\t242\t3\t881250949", "header column 1 '196' has no type"),  # no header line at all
    ("user_id:token\titem_id:token\trating:float\trating:float",
     "header column 4 rating:float: the field appears twice"),
])
def test_bad_headers_name_the_file_and_the_column(tmp_path, header, problem):
    folder = write_recbole(tmp_path / "mini", header)
    with pytest.raises(DataError, match=re.escape(f"{folder / 'mini.inter'}: {problem}")):
        prepare(recbole_config(tmp_path, folder))


def test_unknown_item_field_type_names_the_item_file(tmp_path):
    folder = write_recbole(tmp_path / "mini")
    item = folder / "mini.item"
    item.write_text(item.read_text().replace("release_year:token", "release_year:date"))
    with pytest.raises(DataError, match=re.escape(f"{item}: header column 3 'release_year:date' has the unknown type")):
        prepare(recbole_config(tmp_path, folder))


def test_missing_field_names_its_config_key(tmp_path):
    folder = write_recbole(tmp_path / "mini")
    with pytest.raises(DataError, match=r"missing column 'title' \(config key item_columns.title\)"):
        prepare(recbole_config(tmp_path, folder, "item_columns.title=title"))


def test_folder_without_its_inter_file(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(DataError, match=re.escape(f"{folder}: expected the RecBole file empty.inter")):
        prepare(recbole_config(tmp_path, folder))


def test_items_path_is_not_a_recbole_key(tmp_path):
    message = "items_path: only used by the generic sources ['csv', 'parquet', 'jsonl'], not 'recbole'"
    with pytest.raises(ConfigError, match=re.escape(message)):
        recbole_config(tmp_path, tmp_path, f"items_path={tmp_path / 'x.item'}")
