"""``source: samples``: pre-split rows prepare as given; frozen candidates; bad rows fail naming file and row."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmrec.config import ConfigError
from llmrec.data import DataError, load_candidates, load_data_config, prepare

ITEMS = [f"i{k}" for k in range(12)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_catalog(path: Path, ids=ITEMS) -> Path:
    pd.DataFrame({"item_id": ids, "title": [f"Title {i}" for i in ids]}).to_csv(path, index=False)
    return path


def sample_rows() -> list[dict]:
    return [
        {"split": "train", "user": "a", "history": ["i1", "i2"], "target": "i3"},
        {"split": "train", "user": "a", "history": ["i1", "i2", "i3"], "target": "i4"},
        {"split": "valid", "user": "a", "history": ["i2", "i3", "i4"], "target": "i5",
         "candidates": ["i9", "i5", "i0"]},
        {"split": "test", "user": "b", "history": ["i7", "i8"], "target": "i9", "candidates": ["i9", "i1", "i2"]},
        {"split": "test", "user": "a", "history": ["i4", "i5"], "target": "i6", "candidates": ["i0", "i11", "i6"]},
    ]


def config(tmp_path: Path, samples: Path, *overrides: str, catalog: Path | None = None):
    base = ["name=pre", "source=samples", f"path={samples}", f"cache_dir={tmp_path / 'cache'}", "candidates=[]"]
    if catalog is not None:
        base.append(f"items_path={catalog}")
    return load_data_config(None, [*base, *overrides])


def test_jsonl_rows_prepare_as_given(tmp_path):
    samples = write_jsonl(tmp_path / "rows.jsonl", sample_rows())
    ds = prepare(config(tmp_path, samples, catalog=write_catalog(tmp_path / "items.csv")))
    assert ds.item_ids == sorted(ITEMS)  # every catalog item is an item (ids that are not integers: sorted as text)
    idx = {raw: k for k, raw in enumerate(ds.item_ids)}
    assert ds.n_items == 12 and ds.stats["catalog"]["catalog_items_in_no_row"] == 1  # i10
    assert {s: len(t) for s, t in ds.samples.items()} == {"train": 2, "valid": 1, "test": 2}
    test = ds.samples["test"].to_list()
    assert [r["history_items"] for r in test] == [[idx["i7"], idx["i8"]], [idx["i4"], idx["i5"]]]  # file order
    assert [r["target"] for r in test] == [idx["i9"], idx["i6"]] and [r["position"] for r in test] == [2, 2]
    assert [ds.user_ids[r["user"]] for r in test] == ["b", "a"]  # the user column, one pseudo-sequence per row
    seq = ds.sequences[test[0]["user"]]
    assert seq.items.tolist() == [idx["i7"], idx["i8"], idx["i9"]] and (seq.valid_pos, seq.test_pos) == (0, 2)
    assert ds.stats["presplit"]["candidates_from_file"] == {"valid": 3, "test": 3}
    # the file's candidates, in the file's order, under the default key of their split
    cands = load_candidates(ds, "test", "uniform", 3, 0)
    assert cands.items.tolist() == [[idx[i] for i in r["candidates"]] for r in sample_rows()[3:]]
    assert cands.target_index.tolist() == [0, 2]


def test_parquet_rows_sampled_candidates_exclude_the_row(tmp_path):
    rows = [{"split": s, "history": [f"i{(k + j) % 12}" for j in range(3)], "target": f"i{(k + 3) % 12}",
             "history_behaviors": ["view", "buy", "view"], "history_timestamps": [10, 20, 30]}
            for k, s in enumerate(["train"] * 6 + ["valid"] * 3 + ["test"] * 3)]
    path = tmp_path / "rows.parquet"
    pd.DataFrame(rows).to_parquet(path)
    cfg = config(tmp_path, path, "behaviors=[view, buy]", "target_behavior=buy",
                 "candidates=[{splits: [test], sampler: uniform, size: 8, seed: 0}]")
    ds = prepare(cfg)
    assert ds.samples["train"][0]["history_behaviors"] == [0, 1, 0] and ds.samples["train"][0]["target_behavior"] == 1
    assert ds.sequences[0].timestamps.tolist() == [10, 20, 30, 30]
    assert ds.n_items == 12 and ds.item_titles()[0] == "item i0"  # no catalog: the ids seen
    cands = load_candidates(ds, "test", "uniform", 8, 0)
    for row, items in zip(ds.samples["test"].to_list(), cands.items, strict=True):
        assert set(items) & set(row["history_items"]) == set()  # negatives: outside the row's history and target
        assert list(items).count(row["target"]) == 1
    again = prepare(cfg)  # cache hit, same frozen set
    assert again.root == ds.root and np.array_equal(load_candidates(again, "test", "uniform", 8, 0).items, cands.items)


def test_max_history_keeps_the_newest_and_counts(tmp_path):
    rows = [{"split": "test", "history": ["i1", "i2", "i3", "i4"], "target": "i5"},
            {"split": "train", "history": ["i1"], "target": "i2"}]
    ds = prepare(config(tmp_path, write_jsonl(tmp_path / "r.jsonl", rows), "max_history=2"))
    row = ds.samples["test"][0]
    assert [ds.item_ids[i] for i in row["history_items"]] == ["i3", "i4"] and row["position"] == 4
    assert ds.stats["presplit"]["histories_truncated_to_max_history"] == {"train": 0, "valid": 0, "test": 1}
    assert ds.user_ids == ["train-0", "test-0"]  # no user column: <split>-<row>


def test_candidate_size_must_match_the_configured_key(tmp_path):
    samples = write_jsonl(tmp_path / "rows.jsonl", sample_rows())
    cfg = config(tmp_path, samples, "candidates=[{splits: [test], sampler: uniform, size: 5, seed: 0}]",
                 catalog=write_catalog(tmp_path / "items.csv"))
    with pytest.raises(ConfigError, match=r"candidates\[0\]: size 5 for split 'test'.*lists of 3"):
        prepare(cfg)


@pytest.mark.parametrize("change, message", [
    ({"split": "dev"},
     r"rows.jsonl: line 2: unknown split 'dev' \(1 rows.*expected one of \['train', 'valid', 'test'\]"),
    ({"history": []}, r"rows.jsonl: line 2: empty history"),
    ({"target": "i99"}, r"rows.jsonl: line 2: item 'i99' is not in the item catalog .*1 references to 1 unknown ids"),
    ({"history": ["i1", "zz"]}, r"rows.jsonl: line 2 `history` 'zz'"),
])
def test_bad_rows_name_file_and_line(tmp_path, change, message):
    rows = sample_rows()
    rows[1] = {**rows[1], **change}
    samples = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(DataError, match=message):
        prepare(config(tmp_path, samples, catalog=write_catalog(tmp_path / "items.csv")))


@pytest.mark.parametrize("candidates, message", [
    (["i0", "i1", "i2"], r"line 4: the candidates .* hold the target 'i9' 0 times"),
    (["i9", "i1"], r"line 4: 2 candidates, but .*line 5 has 3|line 5: 3 candidates, but .*line 4 has 2"),
    (["i9", "i1", "i1"], r"line 4: the candidates repeat an item"),
    (None, r"line 4: no `candidates` although other test rows have them"),
])
def test_bad_candidates_fail(tmp_path, candidates, message):
    rows = sample_rows()
    rows[3] = {**rows[3], "candidates": candidates}
    samples = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(DataError, match=message):
        prepare(config(tmp_path, samples, catalog=write_catalog(tmp_path / "items.csv")))


def test_unknown_behavior_and_columns_fail(tmp_path):
    rows = [{"split": "test", "history": ["i1", "i2"], "history_behaviors": ["interaction"], "target": "i3"}]
    with pytest.raises(DataError, match=r"line 1: `history_behaviors` has 1 entries but `history` has 2"):
        prepare(config(tmp_path, write_jsonl(tmp_path / "m.jsonl", rows)))
    rows = [{"split": "test", "history": ["i1"], "history_behaviors": ["click"], "target": "i2"}]
    with pytest.raises(DataError, match=r"line 1: unknown behavior 'click' in `history_behaviors`.*behavior_map"):
        prepare(config(tmp_path, write_jsonl(tmp_path / "a.jsonl", rows)))
    rows = [{"split": "test", "history": ["i1"], "target": "i2", "rating": 5}]
    with pytest.raises(DataError, match=r"b.jsonl: unknown columns \['rating'\]"):
        prepare(config(tmp_path, write_jsonl(tmp_path / "b.jsonl", rows)))
    with pytest.raises(DataError, match=r"c.jsonl: missing column 'target'"):
        prepare(config(tmp_path, write_jsonl(tmp_path / "c.jsonl", [{"split": "test", "history": ["i1"]}])))
    with pytest.raises(ConfigError, match="columns: only used by"):
        config(tmp_path, tmp_path / "a.jsonl", "columns={user: u}")
