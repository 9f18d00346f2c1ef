"""Every loader on real files: ML-100k and Taobao (when LLMREC_DATA_DIR is set), the generic
formats, ML-1M's format on a hand-made folder, and the synthetic shop."""

from __future__ import annotations

import json
import time

import pandas as pd

from llmrec.data import load_data_config, prepare

from .conftest import random_log


def _config(tmp_path, *overrides):
    return load_data_config(None, [f"cache_dir={tmp_path / 'cache'}", "candidates=[]", *overrides])


def test_ml100k_counts_before_filtering(tmp_path, llmrec_data_dir):
    cfg = _config(tmp_path, "name=ml100k", "source=ml100k", f"path={llmrec_data_dir / 'ml-100k'}")
    ds = prepare(cfg)
    raw = ds.stats["raw"]
    assert (raw["users"], raw["items"], raw["interactions"]) == (943, 1682, 100000)
    assert raw["per_behavior"] == {"dislike": 17480, "neutral": 27145, "like": 55375}
    assert ds.stats["removed"]["duplicate_interactions"] == 0
    # 5-core on all behaviors removes 333 rarely rated movies; one user has fewer than 2 likes
    assert (ds.n_users, ds.n_items) == (942, 1349)
    assert ds.stats["samples"]["valid"] == ds.stats["samples"]["test"] == 942
    toy = ds.catalog[ds.catalog["item_id"] == "1"].iloc[0]
    assert toy["title"] == "Toy Story (1995)" and toy["category"] == "Animation|Children's|Comedy"
    assert toy["text"].startswith("Toy Story (1995). Genres: Animation, Children's, Comedy.")
    # latin-1 titles decode (u.item is ISO-8859-1)
    assert any("é" in t for t in ds.item_titles())
    # cache: the second prepare loads the folder
    start = time.perf_counter()
    again = prepare(cfg)
    assert time.perf_counter() - start < 2.0 and again.root == ds.root


def test_taobao_counts_before_filtering(tmp_path, llmrec_data_dir):
    cfg = _config(tmp_path, "name=taobao", "source=taobao", f"path={llmrec_data_dir / 'taobao-userbehavior-head'}",
                  "k_core=2")
    ds = prepare(cfg)
    raw = ds.stats["raw"]
    assert (raw["users"], raw["items"], raw["interactions"]) == (814, 55209, 84252)
    assert raw["per_behavior"] == {"pv": 75658, "fav": 2351, "cart": 4494, "buy": 1749}
    assert ds.behaviors == ["pv", "fav", "cart", "buy"] and ds.target_behavior == "buy"
    row = ds.catalog.iloc[0]
    assert row["text"] == f"category {row['category']}" and row["title"].startswith(f"item {row['item_id']} (category ")
    for seq in ds.sequences[:50]:
        assert seq.behaviors[seq.test_pos] == 3 and seq.behaviors[seq.valid_pos] == 3


def test_csv_parquet_and_jsonl_give_the_same_dataset(tmp_path):
    frame = pd.DataFrame(random_log(seed=5), columns=["user_id", "item_id", "behavior", "timestamp"])
    frame.to_csv(tmp_path / "log.csv", index=False)
    frame.to_parquet(tmp_path / "log.parquet", index=False)
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in frame.to_dict("records")) + "\n")
    results = []
    for fmt in ("csv", "parquet", "jsonl"):
        cfg = _config(tmp_path, "name=tiny", f"source={fmt}", f"path={tmp_path / f'log.{fmt}'}",
                      "behaviors=[view, cart, buy]", "target_behavior=buy", "k_core=2")
        ds = prepare(cfg)
        results.append((ds.user_ids, ds.item_ids, ds.samples["test"].to_list(), ds.samples["train"].to_list(),
                        ds.fingerprint))
    assert results[0][:4] == results[1][:4] == results[2][:4]
    assert len({r[4] for r in results}) == 3  # different input bytes -> different cache folders


def test_single_behavior_log_without_a_behavior_column(tmp_path):
    frame = pd.DataFrame(random_log(seed=6), columns=["user_id", "item_id", "behavior", "timestamp"])
    frame.drop(columns="behavior").to_csv(tmp_path / "log.csv", index=False)
    cfg = _config(tmp_path, "name=tiny", "source=csv", f"path={tmp_path / 'log.csv'}", "behaviors=[interact]",
                  "target_behavior=interact", "columns.behavior=null", "k_core=2")
    ds = prepare(cfg)
    assert ds.stats["raw"]["per_behavior"] == {"interact": len(frame)}


def test_ml1m_format(tmp_path):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    lines = [f"{u}::{i}::{1 + (u + i) % 5}::{1000 + 7 * i + u}" for u in range(1, 9) for i in range(1, 13)]
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n")
    movies = [f"{i}::Movie {i} é (1999)::Comedy|Drama" for i in range(1, 13)]
    (folder / "movies.dat").write_bytes(("\n".join(movies) + "\n").encode("latin-1"))
    ds = prepare(_config(tmp_path, "name=ml1m", "source=ml1m", f"path={folder}", "k_core=1"))
    assert ds.stats["raw"]["interactions"] == 96
    counts = ds.stats["raw"]["per_behavior"]
    assert counts["like"] == sum(int(line.split("::")[2]) >= 4 for line in lines)
    assert ds.catalog["title"].iloc[0] == "Movie 1 é (1999)" and ds.catalog["category"].iloc[0] == "Comedy|Drama"


def test_synthetic_shop_is_generated_into_the_cache(tmp_path):
    cfg = _config(tmp_path, "name=shop", "source=synthetic", "synthetic.n_users=30", "synthetic.n_items=24",
                  "synthetic.image_size=16")
    ds = prepare(cfg)
    assert ds.behaviors == ["view", "cart", "purchase"] and ds.n_users == 30
    shop_dirs = list((tmp_path / "cache").glob("synthetic-shop-*"))
    assert len(shop_dirs) == 1 and (shop_dirs[0] / "interactions.csv").is_file()
    assert all(str(p).startswith(str(shop_dirs[0])) for p in ds.catalog["image"])
    assert {"brand", "color", "material"} <= set(ds.catalog.columns)
    assert prepare(cfg).root == ds.root
