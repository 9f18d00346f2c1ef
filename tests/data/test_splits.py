"""Chronological order, tie-break, leave-one-out and sliding-window samples on a hand-made log."""

from __future__ import annotations

import numpy as np

from llmrec.data import prepare
from llmrec.data.ordering import sorted_ids

from .conftest import generic_config, write_log

# u2's rows are out of time order in the file; u1's B (buy) and C (view) share timestamp 20.
TINY = [
    ("u1", "A", "view", 10),
    ("u1", "B", "buy", 20),
    ("u1", "C", "view", 20),
    ("u1", "D", "buy", 30),
    ("u1", "E", "cart", 40),
    ("u1", "F", "buy", 50),
    ("u1", "G", "buy", 60),
    ("u2", "B", "buy", 300),
    ("u2", "A", "view", 100),
    ("u2", "C", "buy", 200),
    ("u3", "X", "buy", 5),  # validation target is u3's first event: empty validation history -> dropped
    ("u3", "Y", "buy", 6),
    ("u4", "A", "view", 1),  # a single target interaction -> dropped
    ("u4", "B", "buy", 2),
]
A, B, C, D, E, F, G = range(7)  # internal item indices: ids sorted (X, Y leave with u3)
VIEW, CART, BUY = range(3)


def _rows(dataset, split):
    return dataset.samples[split].to_list()


def test_sequences_tie_break_and_leave_one_out(tmp_path):
    log = write_log(tmp_path / "log.csv", TINY)
    ds = prepare(generic_config(tmp_path, log, "k_core=1", "max_history=2"))
    assert ds.user_ids == ["u1", "u2"] and ds.item_ids == list("ABCDEFG")
    u1, u2 = ds.sequences
    # equal timestamps keep the file order: B (row 2) before C (row 3)
    assert u1.items.tolist() == [A, B, C, D, E, F, G]
    assert u1.behaviors.tolist() == [VIEW, BUY, VIEW, BUY, CART, BUY, BUY]
    assert u1.timestamps.tolist() == [10, 20, 20, 30, 40, 50, 60]
    assert (u1.valid_pos, u1.test_pos) == (5, 6)
    assert u2.items.tolist() == [A, C, B] and (u2.valid_pos, u2.test_pos) == (1, 2)

    # train: every buy before the validation target with a non-empty history, newest 2 history events
    assert _rows(ds, "train") == [
        {"user": 0, "history_items": [A], "history_behaviors": [VIEW], "target": B, "target_behavior": BUY,
         "position": 1},
        {"user": 0, "history_items": [B, C], "history_behaviors": [BUY, VIEW], "target": D, "target_behavior": BUY,
         "position": 3},
    ]
    assert _rows(ds, "valid") == [
        {"user": 0, "history_items": [D, E], "history_behaviors": [BUY, CART], "target": F, "target_behavior": BUY,
         "position": 5},
        {"user": 1, "history_items": [A], "history_behaviors": [VIEW], "target": C, "target_behavior": BUY,
         "position": 1},
    ]
    assert _rows(ds, "test") == [
        {"user": 0, "history_items": [E, F], "history_behaviors": [CART, BUY], "target": G, "target_behavior": BUY,
         "position": 6},
        {"user": 1, "history_items": [A, C], "history_behaviors": [VIEW, BUY], "target": B, "target_behavior": BUY,
         "position": 2},
    ]
    removed = ds.stats["removed"]
    assert removed["users_empty_valid_history"] == 1 and removed["users_few_targets"] == 1
    assert ds.stats["raw"]["users"] == 4 and ds.stats["filtered"]["users"] == 2
    assert ds.stats["samples"] == {"train": 2, "valid": 2, "test": 2}
    assert ds.catalog["item_id"].tolist() == list("ABCDEFG")
    assert ds.catalog["title"].tolist() == [f"item {i}" for i in "ABCDEFG"]


def test_full_history_when_max_history_is_large(tmp_path):
    log = write_log(tmp_path / "log.csv", TINY)
    ds = prepare(generic_config(tmp_path, log, "k_core=1", "max_history=50"))
    test_u1 = _rows(ds, "test")[0]
    assert test_u1["history_items"] == [A, B, C, D, E, F]
    # the history never reaches the target itself or anything after it
    for row in _rows(ds, "train") + _rows(ds, "valid"):
        seq = ds.sequences[row["user"]]
        assert row["history_items"] == seq.items[: row["position"]].tolist()
        assert row["target"] == seq.items[row["position"]]
        assert row["position"] < seq.valid_pos or row in _rows(ds, "valid")


def test_ids_sort_numerically_when_all_are_integers():
    assert sorted_ids(np.array(["10", "9", "100", "9"])).tolist() == ["9", "10", "100"]
    assert sorted_ids(np.array(["b10", "b9", "a"])).tolist() == ["a", "b10", "b9"]
    assert sorted_ids(np.array(["10", "x", "9"])).tolist() == ["10", "9", "x"]
