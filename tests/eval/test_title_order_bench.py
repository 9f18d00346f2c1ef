"""bench/title_order.py: the two title orders are compared only on the same users, targets and candidate items,
and the pick shares count the top-ranked candidate's category."""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="module")
def title_order(bench_script):
    return bench_script("title_order")


def write(path, rows):
    """A mode=rank predictions file: ``rows`` of (user, candidate item ids, target index, scores)."""
    lines = []
    for row, (user, items, target, scores) in enumerate(rows):
        candidates = [{"item_id": item, "title": f"title {item}"} for item in items]
        lines.append(json.dumps({"user": user, "split": "test", "row": row, "task": "easy", "paraphrase": 0,
                                 "candidates": candidates, "target_index": target, "target": candidates[target],
                                 "scores": scores, "ranked_index": int(np.argmax(scores))}))
    path.write_text("\n".join(lines) + "\n")
    return path


ROWS = [("u1", ["a", "b", "c"], 0, [0.0, 1.0, -1.0]), ("u2", ["c", "a", "b"], 2, [0.0, -1.0, 2.0])]


def test_orders_must_share_users_targets_and_candidates(title_order, tmp_path):
    brand = title_order.aligned_key(write(tmp_path / "brand.jsonl", ROWS))
    same = title_order.aligned_key(write(tmp_path / "same.jsonl", [(u, i, t, [1.0, 0.0, 0.0]) for u, i, t, _ in ROWS]))
    assert title_order.check_aligned({"brand": brand, "category": same}) == brand  # scores may differ
    other = title_order.aligned_key(write(tmp_path / "other.jsonl", [ROWS[0], ("u2", ["c", "a", "d"], 2, [0, 0, 1])]))
    with pytest.raises(SystemExit, match="test row 1"):
        title_order.check_aligned({"brand": brand, "category": other})
    with pytest.raises(SystemExit, match="1 vs 2 users"):
        title_order.check_aligned({"brand": brand, "category": brand[:1]})
    assert title_order.check_aligned({}) is None


def test_pick_shares_count_the_top_candidates_category(title_order, tmp_path):
    catalog = pd.DataFrame({"item_id": ["a", "b", "c", "d"], "category": ["cap", "cap", "socks", "cap"]})
    dataset = SimpleNamespace(catalog=catalog)
    session = np.array([[0, 0, 1], [1, 0, 0]])  # user 1's session is socks (c), user 2's socks (c, first)
    shares = title_order.pick_shares(write(tmp_path / "p.jsonl", ROWS), dataset, session)
    # user 1 picks b (cap; target a is cap; session socks), user 2 picks b (cap; target b): 2/2 and 0/2
    assert shares == {"pick_in_target_category": 1.0, "pick_in_session_category": 0.0}


def test_comparisons_pair_each_model_across_orders_and_neighbouring_rows(title_order):
    pairs = title_order.comparisons()
    assert ("+ behavior tokens (brand-first)", "+ behavior tokens (category-first)") in pairs
    assert ("+ behavior tokens (category-first)", "+ item tokens (AMSA) (category-first)") in pairs
    assert ("text-only LLM (category-first)", "full TMF (AMSA + CMA) (category-first)") in pairs
    assert not any("brand" in a and "category" in b and a.split(" (")[0] != b.split(" (")[0] for a, b in pairs)
    assert len(pairs) == len(set(pairs)) == 4 + 2 * (3 + 1)


def test_uniform_pick_within_the_session_category(title_order):
    session = np.array([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 0]])
    target = np.array([0, 1, 3, 3])  # in a 2-way tie; outside the category; no category; outside a 3-way tie
    assert title_order.random_in_session_category(session, target).tolist() == [0.5, 0.0, 0.25, 0.0]
    assert title_order.several_in_session_category(session).tolist() == [True, False, False, True]


def test_by_user_type_counts_only_users_with_several_candidates_of_the_session_category(title_order):
    hits = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    several = np.array([True, True, True, False, True])
    kinds = np.array(["textual", "textual", "visual", "visual", "popularity"])
    assert title_order.by_user_type(hits, several, kinds) == {"all": 0.5, "popularity": 0.0, "textual": 0.5,
                                                              "visual": 1.0}
