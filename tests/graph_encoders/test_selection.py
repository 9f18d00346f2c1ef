"""graph_encoders/selection.py: relaxed selection, k-means, co-occurrence, kNN graph (values checked by hand)."""

import math

import numpy as np
import pytest
import torch

from graph_encoders.selection import (
    cluster_mean_matrix,
    co_occurrence,
    kmeans,
    knn_graph,
    relaxed_selection,
    row_normalize,
    selection_noise,
)


# ---- relaxed selection -----------------------------------------------------------------
def test_no_noise_is_the_tempered_softmax():
    logits = torch.tensor([[1.0, 2.0, 0.5]])
    assert torch.allclose(relaxed_selection(logits, 0.5, None), torch.softmax(logits / 0.5, -1))


@pytest.mark.parametrize("kind, mean, variance", [
    ("gumbel", 0.5772156649, math.pi**2 / 6),  # standard Gumbel
    ("logistic", 0.0, math.pi**2 / 3),  # standard logistic: log δ - log(1 - δ)
])
def test_noise_has_the_distribution_it_names(kind, mean, variance):
    sample = selection_noise((200_000,), kind, torch.zeros(1), torch.Generator().manual_seed(0))
    assert abs(sample.mean().item() - mean) < 0.02
    assert abs(sample.var().item() - variance) < 0.05 * variance


def test_noisy_selection_sums_to_one_and_varies():
    logits = torch.zeros(4, 5)
    first = relaxed_selection(logits, 1.0, "logistic", torch.Generator().manual_seed(1))
    second = relaxed_selection(logits, 1.0, "logistic", torch.Generator().manual_seed(2))
    assert torch.allclose(first.sum(-1), torch.ones(4))
    assert not torch.allclose(first, second)
    with pytest.raises(ValueError, match="noise"):
        relaxed_selection(logits, 1.0, "uniform")


# ---- k-means ---------------------------------------------------------------------------
def _blobs(seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = torch.arange(3).repeat_interleave(20)
    return centres[labels] + 0.3 * torch.randn(60, 2, generator=g), labels


def test_kmeans_recovers_separated_clusters():
    points, labels = _blobs()
    assignment, centroids = kmeans(points, 3, seed=0)
    # same partition up to renaming: each true cluster maps to exactly one found cluster
    pairs = {(int(a), int(b)) for a, b in zip(labels, assignment, strict=True)}
    assert len(pairs) == 3 and len({b for _, b in pairs}) == 3
    for c in range(3):
        assert torch.allclose(centroids[c], points[assignment == c].mean(0), atol=1e-5)


def test_kmeans_is_deterministic_per_seed():
    points = torch.randn(200, 8, generator=torch.Generator().manual_seed(3))
    first, _ = kmeans(points, 7, seed=5)
    again, _ = kmeans(points, 7, seed=5)
    assert torch.equal(first, again)
    assert len(torch.unique(first)) == 7  # no empty cluster
    with pytest.raises(ValueError, match="k must be"):
        kmeans(points, 201)


def test_cluster_mean_matrix_gives_means():
    assignment = torch.tensor([0, 1, 0, 2, 0])
    table = torch.arange(10.0).view(5, 2)
    means = cluster_mean_matrix(assignment, 3) @ table
    assert torch.allclose(means, torch.stack([table[[0, 2, 4]].mean(0), table[1], table[3]]))


# ---- co-occurrence ---------------------------------------------------------------------
def test_co_occurrence_is_one_over_distance_summed_over_users():
    sequences = [np.array([0, 1, 2]), np.array([2, 0]), np.array([3])]
    dense = co_occurrence(sequences, 4).to_dense()
    expected = torch.zeros(4, 4)
    expected[0, 1] = 1.0  # user 0: distance 1
    expected[1, 2] = 1.0  # user 0: distance 1
    expected[0, 2] = 0.5 + 1.0  # user 0: distance 2; user 1: distance 1
    expected = expected + expected.T
    assert torch.allclose(dense, expected)
    counts = co_occurrence(sequences, 4, distance_weighted=False).to_dense()
    assert counts[0, 2] == 2.0 and counts[0, 1] == 1.0 and counts[3].sum() == 0


def test_co_occurrence_counts_a_repeated_item_once_per_user_at_its_nearest_occurrence():
    dense = co_occurrence([np.array([0, 1, 0, 5])], 6, flush_pairs=1).to_dense()
    assert dense[0, 1] == 1.0 and dense[1, 0] == 1.0  # nearest 0-1 distance is 1, counted once
    assert dense[0, 5] == 1.0  # positions 2 and 3
    assert dense[0, 0] == 0.0  # no self co-occurrence
    assert dense[1, 5] == 0.5


def test_co_occurrence_of_a_user_who_repeats_one_item_is_empty():
    # the Taobao head has users whose training part is one item bought twice; this crashed MDSRec's graph build
    dense = co_occurrence([np.array([4, 4]), np.array([1, 1, 1]), np.array([0, 2])], 5).to_dense()
    expected = torch.zeros(5, 5)
    expected[0, 2] = expected[2, 0] = 1.0
    assert torch.equal(dense, expected)
    assert co_occurrence([np.array([3, 3])], 5)._nnz() == 0


def test_row_normalize():
    matrix = torch.tensor([[0.0, 3.0, 1.0], [0.0, 0.0, 0.0], [2.0, 0.0, 0.0]]).to_sparse()
    dense = row_normalize(matrix).to_dense()
    assert torch.allclose(dense, torch.tensor([[0.0, 0.75, 0.25], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))


# ---- kNN graph -------------------------------------------------------------------------
def test_knn_graph_keeps_the_most_similar_items_and_a_self_loop():
    features = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [1.0, 0.05]])
    dense = knn_graph(features, top_h=2).to_dense()
    assert torch.allclose(dense.sum(1), torch.ones(5))
    assert (dense.diagonal() == 1 / 3).all()
    assert torch.equal(dense[0] > 0, torch.tensor([True, True, False, False, True]))
    assert torch.equal(dense[2] > 0, torch.tensor([False, True, True, True, False]))
    assert torch.equal(knn_graph(features, top_h=0).to_dense(), torch.eye(5))
