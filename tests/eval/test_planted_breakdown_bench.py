"""bench/planted_breakdown.py: a results table's rows broken down by the shop's planted user types, on the real
(tiny) synthetic shop and its frozen candidates; rows here are constructed per-user ranks, not trained models."""

import numpy as np
import pytest

from llmrec.data.candidates import load_candidates


@pytest.fixture(scope="module")
def breakdown(bench_script):
    return bench_script("planted_breakdown")


def test_rows_are_split_by_planted_type_and_ablations_paired_within_each(breakdown, shop):
    cands = load_candidates(shop, "test", sampler="uniform", size=5, seed=0)
    rule_rows = breakdown.rule_rows
    _, _, truth, kinds = rule_rows(shop, "test", np.asarray(cands.items), np.asarray(cands.target_index))
    kinds = np.asarray(kinds)
    assert truth is not None and len(kinds) == len(cands.target_index)
    visual = kinds == "visual"
    table = {"split": "test", "n_candidates": 5, "candidate_file": str(cands.path), "rows": {
        "full TMF (AMSA + CMA)": {"target_ranks": [1] * len(kinds)},  # right for everyone
        "full TMF, trained without image": {"target_ranks": np.where(visual, 2, 1).tolist()},  # loses visual users
        "no ranks": {"HR@1": 0.5}}}
    results = breakdown.planted_breakdown(table, shop)
    several = results["group_sizes"]["all"]
    assert several == sum(results["group_sizes"][k] for k in results["group_sizes"] if k != "all") > 0
    rows = results["rows"]
    assert rows["full TMF (AMSA + CMA)"] == dict.fromkeys(results["group_sizes"], 1.0)
    without = rows["full TMF, trained without image"]
    assert all(without[k] == (0.0 if k == "visual" else 1.0) for k in results["group_sizes"] if k != "all")
    assert results["left_out"] == ["no ranks"]
    by_group = {p["group"]: p["comparison"] for p in results["paired"]}
    assert set(by_group) == set(results["group_sizes"])
    assert by_group["visual"]["difference"] == -1.0 and by_group["visual"]["b_better"] == 0  # the tiny shop has one
    assert all(by_group[k]["difference"] == 0.0 for k in by_group if k not in ("all", "visual"))


def test_other_candidates_or_user_counts_stop_the_script(breakdown, shop):
    cands = load_candidates(shop, "test", sampler="uniform", size=5, seed=0)
    table = {"split": "test", "n_candidates": 5, "candidate_file": "x/test-uniform-n10-seed0.arrow",
             "rows": {"full TMF (AMSA + CMA)": {"target_ranks": [1]}}}
    with pytest.raises(SystemExit, match="candidates"):
        breakdown.planted_breakdown(table, shop)
    table["candidate_file"] = str(cands.path)
    with pytest.raises(SystemExit, match="another number of users"):
        breakdown.planted_breakdown(table, shop)
