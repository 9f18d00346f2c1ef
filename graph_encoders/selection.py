"""Item-structure pieces shared by the multimodal seed models (MDSRec now; M³BSR and BivRec next).

* :func:`relaxed_selection`: a softmax over ``(logits + noise) / τ`` with **Gumbel** noise
  ``-log(-log δ)`` (Gumbel-Softmax, Jang et al. 2016) or **logistic** noise
  ``log δ - log(1 - δ)`` (MDSRec Eq. 19 as printed), ``δ ~ U(0, 1)``; ``noise=None`` is the
  deterministic softmax the callers use at inference.
* :func:`kmeans`: Lloyd's k-means on a feature matrix with k-means++ seeding from a seeded
  ``torch.Generator`` (same seed, same input: same clusters); :func:`cluster_mean_matrix`
  turns the assignment into the ``[k, n]`` matrix whose product with an item table gives
  the cluster means.
* :func:`co_occurrence`: the item co-occurrence matrix of a set of sequences, each user
  adding ``1 / distance`` (or ``1``) per item pair (MDSRec Eq. 1-2), as a sparse tensor;
  :func:`row_normalize` divides every row by its sum.
* :func:`knn_graph`: the row-normalised top-``H`` cosine-similarity graph of a feature
  matrix, with self-loops (MDSRec Eq. 4-5).

Sparse matrices are ``torch.sparse_coo_tensor`` (coalesced, float32); they are products'
left operands (``torch.sparse.mm``) and never enter a state dict.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

Noise = Literal["gumbel", "logistic"]


# ---- relaxed selection -----------------------------------------------------------------
def selection_noise(shape: Sequence[int], kind: Noise, like: torch.Tensor,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Gumbel ``-log(-log δ)`` or logistic ``log δ - log(1 - δ)`` noise, ``δ ~ U(0, 1)``."""
    eps = torch.finfo(like.dtype).tiny
    delta = torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype).clamp(eps, 1.0 - 1e-7)
    if kind == "gumbel":
        return -torch.log(-torch.log(delta))
    if kind == "logistic":
        return torch.log(delta) - torch.log1p(-delta)
    raise ValueError(f"noise must be 'gumbel' or 'logistic', got {kind!r}")


def relaxed_selection(logits: torch.Tensor, temperature: float = 1.0, noise: Noise | None = "gumbel",
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """``softmax((logits + noise) / temperature)`` over the last axis; ``noise=None``: no noise."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if noise is not None:
        logits = logits + selection_noise(logits.shape, noise, logits, generator)
    return torch.softmax(logits / temperature, dim=-1)


# ---- k-means --------------------------------------------------------------------------
def kmeans(features: torch.Tensor, k: int, seed: int = 0, iterations: int = 100,
           tolerance: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means (squared Euclidean) with k-means++ seeding; returns ``(assignment [n], centroids [k, d])``.

    Deterministic for a given ``seed``. An empty cluster is re-seeded with the point farthest
    from its centroid. Stops after ``iterations`` rounds or when no centroid moves more than
    ``tolerance`` (squared distance).
    """
    x = features.detach().double()
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means: k must be in 1..{n} (the number of points), got {k}")
    generator = torch.Generator().manual_seed(seed)
    centroids = x[torch.randint(n, (1,), generator=generator)]
    closest = torch.cdist(x, centroids).square().squeeze(1)
    for _ in range(1, k):  # k-means++: the next centre drawn proportional to the squared distance
        weights = closest if closest.sum() > 0 else torch.ones_like(closest)
        pick = torch.multinomial(weights, 1, generator=generator)
        centroids = torch.cat([centroids, x[pick]])
        closest = torch.minimum(closest, (x - x[pick]).square().sum(1))
    assignment = torch.zeros(n, dtype=torch.long)
    for _ in range(iterations):
        distances = torch.cdist(x, centroids).square()
        assignment = distances.argmin(1)
        counts = torch.bincount(assignment, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, x)
        updated = sums / counts.clamp(min=1)[:, None].to(x.dtype)
        own = distances.gather(1, assignment[:, None]).squeeze(1)
        for empty in torch.nonzero(counts == 0).flatten().tolist():
            far = int(own.argmax())
            updated[empty] = x[far]
            own[far] = -1.0
        shift = (updated - centroids).square().sum(1).max()
        centroids = updated
        if shift <= tolerance:
            break
    assignment = torch.cdist(x, centroids).argmin(1)
    return assignment, centroids.to(features.dtype)


def cluster_mean_matrix(assignment: torch.Tensor, k: int) -> torch.Tensor:
    """``[k, n]`` dense: row ``c`` holds ``1 / |cluster c|`` at its members (so ``C @ table`` = cluster means)."""
    n = assignment.shape[0]
    matrix = torch.zeros(k, n)
    matrix[assignment, torch.arange(n)] = 1.0
    return matrix / matrix.sum(1, keepdim=True).clamp(min=1.0)


# ---- co-occurrence ---------------------------------------------------------------------
def co_occurrence(sequences: Iterable[np.ndarray], n_items: int, distance_weighted: bool = True,
                  flush_pairs: int = 4_000_000) -> torch.Tensor:
    """Symmetric sparse ``[n_items, n_items]`` co-occurrence ``O = Σ_u O^u`` (MDSRec Eq. 1-2).

    Per user and item pair ``(i, j)``, ``i ≠ j``, both in the sequence: ``O^u_ij = 1 / D_ij``
    where ``D_ij`` is their positional distance (``distance_weighted=False``: ``1``, the
    paper's "w/o DIS"). An item that occurs several times counts once per user, at its
    nearest occurrence to the other item (Eq. 1 gives one value per user and pair). The
    diagonal is zero. Pass only interactions the model may see (the training part).
    """
    found_keys: list[np.ndarray] = []
    found_values: list[np.ndarray] = []
    pending = 0
    merged_keys, merged_values = np.empty(0, np.int64), np.empty(0, np.float64)

    def merge() -> None:
        nonlocal merged_keys, merged_values, pending
        keys = np.concatenate([merged_keys, *found_keys])
        unique, inverse = np.unique(keys, return_inverse=True)
        merged_values = np.bincount(inverse, weights=np.concatenate([merged_values, *found_values]))
        merged_keys = unique
        found_keys.clear()
        found_values.clear()
        pending = 0

    for sequence in sequences:
        items = np.asarray(sequence, dtype=np.int64)
        if len(items) < 2:
            continue
        if items.min() < 0 or items.max() >= n_items:
            raise ValueError(f"co_occurrence: item index out of range 0..{n_items - 1}")
        first, second = np.triu_indices(len(items), 1)
        a, b = items[first], items[second]
        weight = 1.0 / (second - first) if distance_weighted else np.ones(len(first))
        keep = a != b
        low, high = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
        keys, weight = low * n_items + high, weight[keep]
        if not len(keys):  # one item repeated (Taobao has such users): no pair
            continue
        if len(np.unique(items)) < len(items):  # repeats: keep each pair's nearest occurrence
            order = np.lexsort((-weight, keys))
            keys, weight = keys[order], weight[order]
            head = np.r_[True, keys[1:] != keys[:-1]]
            keys, weight = keys[head], weight[head]
        found_keys.append(keys)
        found_values.append(weight)
        pending += len(keys)
        if pending >= flush_pairs:
            merge()
    merge()
    rows, cols = merged_keys // n_items, merged_keys % n_items
    index = torch.from_numpy(np.stack([np.r_[rows, cols], np.r_[cols, rows]]))
    values = torch.from_numpy(np.r_[merged_values, merged_values]).float()
    return torch.sparse_coo_tensor(index, values, (n_items, n_items), check_invariants=True).coalesce()


def row_normalize(matrix: torch.Tensor) -> torch.Tensor:
    """Sparse ``matrix`` with every row divided by its sum (all-zero rows stay zero)."""
    matrix = matrix.coalesce()
    rows = matrix.indices()[0]
    sums = torch.zeros(matrix.shape[0], dtype=matrix.dtype).index_add_(0, rows, matrix.values())
    values = matrix.values() / sums[rows].clamp(min=torch.finfo(matrix.dtype).tiny)
    return torch.sparse_coo_tensor(matrix.indices(), values, matrix.shape, check_invariants=True).coalesce()


# ---- kNN graph -------------------------------------------------------------------------
def knn_graph(features: torch.Tensor, top_h: int, chunk: int = 1024) -> torch.Tensor:
    """Row-normalised top-``H`` cosine graph with self-loops, sparse ``[n, n]`` (MDSRec Eq. 4-5).

    Row ``i`` has weight ``1 / (H + 1)`` at item ``i`` itself and at its ``H`` most
    cosine-similar other items (ties broken by ``torch.topk``). ``H`` is capped at ``n - 1``;
    ``H = 0`` gives the identity.
    """
    n = features.shape[0]
    h = min(top_h, n - 1)
    if h < 0:
        raise ValueError(f"top_h must be >= 0, got {top_h}")
    unit = F.normalize(features.detach().float(), dim=1)
    neighbours = []
    for start in range(0, n, chunk):
        similarity = unit[start : start + chunk] @ unit.T
        rows = torch.arange(start, min(start + chunk, n))
        similarity[rows - start, rows] = -torch.inf  # the item itself is added as a self-loop below
        neighbours.append(similarity.topk(h, dim=1, sorted=True).indices if h else similarity[:, :0].long())
    cols = torch.cat([torch.arange(n)[:, None], torch.cat(neighbours)], dim=1)
    rows = torch.arange(n)[:, None].expand_as(cols)
    index = torch.stack([rows.reshape(-1), cols.reshape(-1)])
    values = torch.full((index.shape[1],), 1.0 / (h + 1))
    return torch.sparse_coo_tensor(index, values, (n, n), check_invariants=True).coalesce()
