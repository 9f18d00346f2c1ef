"""Ranking metrics against hand-computed values, and the generative parsing rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llmrec.metrics import (
    candidate_ranking_metrics,
    exclusion_mask,
    first_line,
    full_ranking_metrics,
    generative_metrics,
    metrics_from_ranks,
    normalize_title,
    parse_generation,
    target_ranks,
)


# ----------------------------------------------------------------------------- ranking
def test_candidate_metrics_match_hand_computed_values():
    scores = np.array([
        [0.9, 0.1, 0.5, 0.3],  # target 0 -> rank 1
        [0.9, 0.1, 0.5, 0.3],  # target 2 -> rank 2
        [0.9, 0.1, 0.5, 0.3],  # target 1 -> rank 4
    ])
    target = np.array([0, 2, 1])
    assert target_ranks(scores, target).tolist() == [1, 2, 4]
    got = candidate_ranking_metrics(scores, target, ks=(1, 2, 4))
    assert got["HR@1"] == pytest.approx(1 / 3)
    assert got["HR@2"] == pytest.approx(2 / 3)
    assert got["HR@4"] == pytest.approx(1.0)
    assert got["NDCG@1"] == pytest.approx(1 / 3)
    assert got["NDCG@2"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    assert got["NDCG@4"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(5)) / 3)
    assert got["MRR@1"] == pytest.approx(1 / 3)
    assert got["MRR@2"] == pytest.approx((1 + 1 / 2) / 3)
    assert got["MRR@4"] == pytest.approx((1 + 1 / 2 + 1 / 4) / 3)


def test_ties_are_pessimistic():
    constant = np.zeros((5, 10))
    target = np.arange(5)
    assert target_ranks(constant, target).tolist() == [10] * 5
    got = candidate_ranking_metrics(constant, target, ks=(1, 5, 10))
    assert got["HR@1"] == 0.0 and got["HR@5"] == 0.0 and got["HR@10"] == 1.0
    # a tie with one other candidate pushes the target below it
    assert target_ranks(np.array([[0.5, 0.5, 0.1]]), np.array([0])).tolist() == [2]
    assert target_ranks(np.array([[0.5, 0.5, 0.1]]), np.array([1])).tolist() == [2]


def test_torch_and_half_precision_inputs_agree_with_numpy():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 10)).astype(np.float32)
    target = rng.integers(0, 10, size=50)
    expected = candidate_ranking_metrics(scores, target)
    assert candidate_ranking_metrics(torch.from_numpy(scores), torch.from_numpy(target)) == expected
    half = torch.from_numpy(scores).to(torch.bfloat16)
    ranks_half = target_ranks(half, target)
    assert ranks_half.tolist() == target_ranks(half.float().numpy(), target).tolist()


def test_ranking_input_errors_are_clear():
    with pytest.raises(ValueError, match="exceed the 4 candidates"):
        candidate_ranking_metrics(np.zeros((2, 4)), np.zeros(2, dtype=int), ks=(1, 5))
    with pytest.raises(ValueError, match="row 1 has target 7"):
        candidate_ranking_metrics(np.zeros((2, 4)), np.array([0, 7]), ks=(1,))
    with pytest.raises(ValueError, match="row 0 contains NaN"):
        candidate_ranking_metrics(np.array([[np.nan, 1.0]]), np.array([0]), ks=(1,))
    with pytest.raises(ValueError, match="expected shape \\[2\\]"):
        candidate_ranking_metrics(np.zeros((2, 4)), np.zeros(3, dtype=int), ks=(1,))
    with pytest.raises(ValueError, match="ranks >= 1"):
        metrics_from_ranks(np.array([0, 1]))


def test_full_ranking_with_exclusions():
    scores = np.array([
        [5.0, 4.0, 3.0, 2.0, 1.0],
        [5.0, 4.0, 3.0, 2.0, 1.0],
    ])
    targets = np.array([2, 4])
    assert full_ranking_metrics(scores, targets, ks=(1, 3))["HR@3"] == pytest.approx(0.5)
    # excluding the two items above the first target lifts it to rank 1
    as_lists = [np.array([0, 1]), np.array([], dtype=int)]
    got = full_ranking_metrics(scores, targets, exclude=as_lists, ks=(1, 3, 5))
    assert got["HR@1"] == pytest.approx(0.5) and got["MRR@5"] == pytest.approx((1 + 1 / 5) / 2)
    mask = np.zeros((2, 5), dtype=bool)
    mask[0, [0, 1]] = True
    assert full_ranking_metrics(torch.from_numpy(scores), torch.from_numpy(targets), exclude=torch.from_numpy(mask),
                                ks=(1, 3, 5)) == got
    # a row that lists its own target: the target still competes, other exclusions still apply
    own = [np.array([0, 1, 2]), np.array([4, 0])]
    assert target_ranks(scores, targets, exclusion_mask(own, scores.shape)).tolist() == [1, 4]


def test_full_ranking_matches_a_loop_on_a_realistic_size():
    rng = np.random.default_rng(1)
    n, n_items = 1000, 2000
    scores = rng.integers(0, 50, size=(n, n_items)).astype(np.float32)  # many ties
    targets = rng.integers(0, n_items, size=n)
    seen = [rng.choice(n_items, size=rng.integers(0, 30), replace=False) for _ in range(n)]
    got = full_ranking_metrics(scores, targets, exclude=seen, ks=(10, 50))
    ranks = []
    for row in range(n):
        keep = np.ones(n_items, dtype=bool)
        keep[seen[row]] = False
        keep[targets[row]] = True
        ranks.append(int((scores[row][keep] >= scores[row, targets[row]]).sum()))
    ranks = np.array(ranks)
    assert got["HR@50"] == pytest.approx(np.mean(ranks <= 50))
    assert got["NDCG@50"] == pytest.approx(np.mean(np.where(ranks <= 50, 1 / np.log2(ranks + 1), 0)))


def test_exclusion_errors_name_the_row():
    with pytest.raises(ValueError, match="row 1 lists item 9"):
        exclusion_mask([np.array([0]), np.array([9])], (2, 5))
    with pytest.raises(ValueError, match="one index array per score row"):
        exclusion_mask([np.array([0])], (2, 5))
    with pytest.raises(ValueError, match="must be bool"):
        exclusion_mask(np.zeros((2, 5), dtype=int), (2, 5))


# ----------------------------------------------------------------------------- generation
def test_normalize_title():
    assert normalize_title("  the MATRIX. ") == "the matrix"
    assert normalize_title('"Toy   Story (1995)".') == "toy story (1995)"
    assert normalize_title("(The Matrix") == "the matrix"
    assert normalize_title("Ｔｈｅ Matrix!!") == "the matrix"  # NFKC folds full-width letters
    assert normalize_title(" ... ") == ""


def test_first_line():
    assert first_line("The Matrix\nAlso: Alien") == "The Matrix"
    assert first_line("\n\n  The Matrix\r\nmore") == "The Matrix"
    assert first_line("") == ""


NESTED = ["Aliens", "Alien", "The Matrix", "Toy Story", "Toy Story 2"]


@pytest.mark.parametrize("output, expected", [
    ("Aliens", 0), ("Alien", 1), ("alien.", 1), ("  the MATRIX. ", 2),
    ("The answer is Aliens", 0), ("The answer is Alien.", 1),  # whole words: "Alien" is not inside "Aliens"
    ("I recommend Toy Story 2!", 4), ("Toy Story", 3),  # nested titles resolve to the longest
    ("The Matrix\nAliens would also be fine", 2),  # text after the newline is ignored
    ("Alien or Aliens", None), ("The Matrix and Toy Story", None),  # two candidates named
    ("Toy Story and Toy Story 2", None),  # the short one also occurs on its own
    ("", None), ("   \n", None), ("\nThe Matrix", 2), ("Blade Runner", None), ("Matrixes", None),
])
def test_parse_generation(output, expected):
    assert parse_generation(output, NESTED) == expected


def test_parse_generation_with_years_and_duplicates():
    movies = ["Alien (1979)", "Aliens (1986)", "Chasing Amy (1997)"]
    assert parse_generation("Alien (1979)", movies) == 0
    assert parse_generation("My pick: Aliens (1986).", movies) == 1
    assert parse_generation("Alien", movies) is None  # no candidate is named in full
    both = ["Alien", "Alien (1979)"]
    assert parse_generation("Alien (1979)", both) == 1
    assert parse_generation("alien", both) == 0
    # two candidates with the same title cannot be told apart: invalid
    assert parse_generation("Chasing Amy (1997)", movies + ["Chasing Amy (1997)"]) is None


def test_generative_metrics_counts():
    candidates = [NESTED] * 4
    generations = ["Aliens", "alien", "Alien or Aliens", "The Matrix\nToy Story"]
    targets = [0, 0, 0, 2]
    got = generative_metrics(generations, candidates, targets)
    assert got["n_total"] == 4 and got["n_valid"] == 3 and got["n_correct"] == 2
    assert got["HitRate@1"] == pytest.approx(2 / 4)
    assert got["HitRate@1_valid"] == pytest.approx(2 / 3)
    assert got["ValidRatio"] == pytest.approx(3 / 4)
    none_valid = generative_metrics(["", "??"], [NESTED, NESTED], [0, 1])
    assert none_valid["ValidRatio"] == 0.0 and none_valid["HitRate@1_valid"] == 0.0


def test_generative_metrics_input_errors():
    with pytest.raises(ValueError, match="one of each per row"):
        generative_metrics(["a"], [NESTED, NESTED], [0])
    with pytest.raises(ValueError, match="row 0 has target 9"):
        generative_metrics(["a"], [NESTED], [9])


# ---- noise: bootstrap intervals and paired comparisons ------------------------------------------------
def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_users():
    from llmrec.metrics import bootstrap_interval

    rng = np.random.default_rng(0)
    small, large = rng.random(50) < 0.6, rng.random(5000) < 0.6
    lo_s, hi_s = bootstrap_interval(small, 2000, seed=1)
    lo_l, hi_l = bootstrap_interval(large, 2000, seed=1)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 5  # ~ 1/sqrt(n): 10x the users, ~3x-10x narrower
    assert abs((hi_l - lo_l) - 2 * 1.96 * np.sqrt(0.24 / 5000)) < 0.005  # the normal approximation
    assert bootstrap_interval(small, 2000, seed=1) == (lo_s, hi_s)  # seeded
    with pytest.raises(ValueError, match="non-empty 1-D"):
        bootstrap_interval([], 10)


def test_paired_comparison_detects_a_real_gain_and_not_a_null_one():
    from llmrec.metrics import paired_comparison

    rng = np.random.default_rng(0)
    a = (rng.random(400) < 0.5).astype(float)
    better = np.maximum(a, rng.random(400) < 0.15)  # b = a plus hits on ~15% of a's misses
    gain = paired_comparison(a, better, 2000, seed=0)
    assert gain["difference"] == pytest.approx(better.mean() - a.mean())
    assert gain["ci_low"] > 0 and gain["p_value"] < 0.01 and gain["a_better"] == 0
    shuffled = paired_comparison(a, rng.permutation(a), 2000, seed=0)  # same rate, no real difference
    assert shuffled["ci_low"] < 0 < shuffled["ci_high"] and shuffled["p_value"] > 0.05
    with pytest.raises(ValueError, match="same users"):
        paired_comparison(a, a[:10])


def test_paired_cells_format_a_comparison_in_the_column_order():
    from llmrec.metrics import PAIRED_COLUMNS, paired_cells

    cells = paired_cells({"difference": 0.0167, "ci_low": -0.023, "ci_high": 0.06, "p_value": 0.5, "b_better": 22,
                          "a_better": 17})
    assert cells == "+0.017 | [-0.023, +0.060] | 0.5000 | 22 / 17"
    assert len(cells.split(" | ")) == len(PAIRED_COLUMNS.split(" | "))
