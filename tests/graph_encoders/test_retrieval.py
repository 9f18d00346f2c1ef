"""graph_encoders.retrieval: a recommender's top K of the whole catalog, consistent with full-ranking metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graph_encoders.base import DatasetSpec
from graph_encoders.batching import SequenceBatcher
from graph_encoders.evaluation import EvalConfig, evaluate_split
from graph_encoders.retrieval import retrieve
from graph_encoders.sasrec import SASRec, SASRecConfig

from .conftest import make_tiny_dataset


@pytest.fixture(scope="module")
def sasrec_and_batcher():
    dataset = make_tiny_dataset(n_items=60)
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(hidden_size=16, max_len=8), DatasetSpec.from_dataset(dataset))
    return model.eval(), SequenceBatcher(dataset, 8)


@pytest.mark.parametrize("k", [3, 10])
def test_top_k_excludes_history_and_agrees_with_full_ranking(sasrec_and_batcher, k):
    model, batcher = sasrec_and_batcher
    got = retrieve(model, batcher, "test", k, batch_size=7, progress=False)  # 7: several chunks
    users, positions = batcher.evaluation_rows("test")
    n = len(users)
    assert got.items.shape == got.scores.shape == (n, k) and got.k == k and got.model
    with torch.no_grad():
        all_scores = model.score_all(batcher.history_batch(users, positions)).numpy()
    seen = batcher.seen_items(users, positions)
    for row in range(n):
        items = got.items[row]
        assert len(set(items.tolist())) == k  # no item twice
        assert not set(items.tolist()) & set(seen[row].tolist())  # nothing the user already interacted with
        np.testing.assert_allclose(got.scores[row], all_scores[row, items], rtol=1e-6)
        assert (np.diff(got.scores[row]) <= 0).all()  # best first
        # nothing left out scores above the k-th retrieved item
        left_out = np.setdiff1d(np.arange(batcher.dataset.n_items), np.concatenate([items, seen[row]]))
        assert all_scores[row, left_out].max() <= got.scores[row, -1] + 1e-6
        assert (got.targets[row] in items) == bool(got.hit[row])
    # the target's catalog rank is the one behind evaluate_split's full/HR@K
    metrics = evaluate_split(model, batcher, "test", EvalConfig(protocols=[], full_ks=[1, k]), progress=False).metrics
    assert got.hit.mean() == pytest.approx(metrics[f"full/HR@{k}"])
    assert (got.target_rank == 1).mean() == pytest.approx(metrics["full/HR@1"])
    assert 0 < got.hit.sum() < n  # a random model: some targets retrieved, some not (the check can fail both ways)


def test_k_must_leave_room_in_the_catalog(sasrec_and_batcher):
    model, batcher = sasrec_and_batcher
    with pytest.raises(ValueError, match="k must be between 1 and the catalog size"):
        retrieve(model, batcher, "test", batcher.dataset.n_items, progress=False)
    with pytest.raises(ValueError, match="fewer than"):  # a long history leaves fewer than k unseen items
        retrieve(model, batcher, "test", batcher.dataset.n_items - 1, progress=False)
