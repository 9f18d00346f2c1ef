"""bench/m3bsr_table2_check.py: its bounds accept every real one-target ranking and reject the paper's rows."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def check(bench_script):
    return bench_script("m3bsr_table2_check")


def metrics(ranks: np.ndarray) -> tuple[float, float, float, float]:
    """HR@10, NDCG@10, HR@20, NDCG@20 of 1-based target ranks, rounded as a paper prints them."""
    gain = 1.0 / np.log2(ranks + 1.0)
    values = ((ranks <= 10).mean(), np.where(ranks <= 10, gain, 0).mean(),
              (ranks <= 20).mean(), np.where(ranks <= 20, gain, 0).mean())
    return tuple(round(float(v), 4) for v in values)


@pytest.mark.parametrize("seed", range(20))
def test_real_rankings_pass_every_bound(check, seed):
    rng = np.random.default_rng(seed)
    skew = rng.uniform(0.2, 3.0)  # from near-uniform ranks to most targets near the top
    ranks = np.minimum(np.ceil(rng.pareto(skew, size=rng.integers(50, 3000)) * rng.uniform(1, 30)), 100) + 1
    assert check.consistent(*metrics(ranks), tol=1e-4, strict=True)


def test_the_paper_rows_fail_and_the_bounds_are_tight(check):
    # SASRec, Kuaishou as printed: NDCG@10 0.0083 is below 0.289 x HR@10 0.1001
    assert not check.consistent(0.1001, 0.0083, 0.1490, 0.0141, tol=1e-4, strict=False)
    # all targets at rank 11 meet the upper bound on NDCG@20 - NDCG@10 exactly, all at rank 20 the lower one
    assert check.consistent(*metrics(np.full(100, 11.0)), tol=1e-4)
    assert check.consistent(*metrics(np.full(100, 20.0)), tol=1e-4)
    assert not check.admissible(check.TABLE_2["GRU4Rec"], tol=1e-4, strict=False)
