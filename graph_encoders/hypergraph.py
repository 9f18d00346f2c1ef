"""Per-sequence item hypergraphs and hypergraph convolution (MBHT §3.2, Yang et al. KDD 2022).

MBHT's second view encodes each user's sequence as a small hypergraph whose nodes are
the sequence positions (left-padded ``[B, L]`` batches, see :mod:`graph_encoders.base`):

* **item-wise semantic hyperedges** (§3.2.1 "item-wise semantic dependency"): one per
  distinct item ``v`` in the sequence, joining every position that holds ``v`` with every
  position holding one of the ``top_k`` distinct items most similar to ``v``. Similarity
  is the learnable multi-channel weighted cosine of §3.2.1 ("metric learning",
  ``ψ(v, v') = 1/M Σ_m cos(w_m ⊙ e_v, w_m ⊙ e_v')``); a neighbour's membership weight is
  that similarity (floored at ``min_weight``), so the metric receives gradients, as in the
  official code. The item's own positions have weight 1.
* **multi-behavior hyperedges** (§3.2.1 "item-wise multi-behavior dependency"): one per
  item that occurs under at least two different behavior types in the sequence, joining
  all of its positions (weight 1).

Positions that are padding or currently ``[MASK]``-ed are not nodes (a masked item must not
be visible through its hyperedges). Hyperedges are indexed by the position of the item's
first occurrence: column ``c`` of the incidence matrix is the semantic hyperedge of the item
first seen at position ``c`` and column ``L + c`` its multi-behavior hyperedge; all other
columns are empty. Everything is vectorised over the batch (no Python loop per sequence).

The convolution is the HGNN rule used by MBHT (§3.2.2),
``X^{l+1} = D_v^{-1} H D_e^{-1} H^T X^l Θ^l`` with weighted incidence ``H`` and identity
hyperedge weights, no non-linearity, two layers, output the mean of the two layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def same_item_matrix(items: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
    """``[B, L, L]`` bool, True where positions ``i`` and ``j`` are nodes holding the same item."""
    same = items[:, :, None] == items[:, None, :]
    return same & node_mask[:, :, None] & node_mask[:, None, :]


def first_occurrences(same: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` bool: node positions that hold the first occurrence of their item."""
    length = same.shape[-1]
    earlier = torch.ones(length, length, dtype=torch.bool, device=same.device).tril(-1)
    is_node = same.diagonal(dim1=1, dim2=2)
    return is_node & ~(same & earlier).any(-1)


def build_incidence(
    items: torch.Tensor, behaviors: torch.Tensor, node_mask: torch.Tensor, similarity: torch.Tensor,
    top_k: int, min_weight: float = 0.01,
) -> torch.Tensor:
    """Weighted incidence matrix ``[B, L, 2L]`` of the semantic + multi-behavior hyperedges.

    ``items`` / ``behaviors`` ``[B, L]`` (any integer ids), ``node_mask`` ``[B, L]`` (True at
    positions that are nodes), ``similarity`` ``[B, L, L]`` pairwise item similarity of the
    positions (only rows/columns of first occurrences are read). See the module docstring.
    """
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    b, length = items.shape
    same = same_item_matrix(items, node_mask)
    first = first_occurrences(same)
    # owner[b, i, c]: node i holds the item first seen at position c
    owner = (same & first[:, None, :]).to(similarity.dtype)

    # semantic hyperedges: top_k other distinct items per distinct item
    neighbours = torch.zeros(b, length, length, dtype=similarity.dtype, device=similarity.device)
    k = min(top_k, length - 1)
    if k > 0:
        candidate = first[:, None, :] & first[:, :, None]
        candidate &= ~torch.eye(length, dtype=torch.bool, device=items.device)
        scores = similarity.masked_fill(~candidate, float("-inf"))
        values, index = scores.topk(k, dim=-1)
        chosen = torch.isfinite(values)
        weights = torch.where(chosen, values.clamp(min=min_weight), torch.zeros_like(values))
        neighbours = neighbours.scatter(-1, index, weights)
    semantic = owner + owner @ neighbours.transpose(1, 2)

    # multi-behavior hyperedges: items seen under >= 2 distinct behaviors
    n_kinds = int(behaviors.max().item()) + 1 if behaviors.numel() else 1
    kinds = F.one_hot(behaviors.clamp(min=0), n_kinds).to(similarity.dtype)
    seen_kinds = (owner.transpose(1, 2) @ kinds) > 0  # [B, L(c), n_kinds]
    multi = first & (seen_kinds.sum(-1) >= 2)
    multi_behavior = owner * multi[:, None, :].to(owner.dtype)
    return torch.cat([semantic, multi_behavior], dim=-1)


class MultiChannelCosine(nn.Module):
    """``ψ(x_i, x_j) = 1/M Σ_m cos(w_m ⊙ x_i, w_m ⊙ x_j)``: learnable metric of MBHT §3.2.1."""

    def __init__(self, hidden_size: int, channels: int) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.weight = nn.Parameter(torch.empty(channels, hidden_size))
        nn.init.normal_(self.weight, mean=1.0, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, L, d]`` -> ``[B, L, L]``."""
        views = F.normalize(x[:, None] * self.weight[None, :, None], dim=-1)  # [B, M, L, d]
        return (views @ views.transpose(-1, -2)).mean(1)


class HypergraphConvolution(nn.Module):
    """One HGNN layer ``D_v^{-1} H D_e^{-1} H^T (X Θ + b)`` (nodes without edges get 0)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor, incidence: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, L, d]``, ``incidence`` ``[B, L, E]``."""
        x = self.linear(x)
        edge_degree = incidence.sum(1, keepdim=True)  # [B, 1, E]
        node_degree = incidence.sum(2, keepdim=True)  # [B, L, 1]
        inv_edge = torch.where(edge_degree > 0, 1.0 / edge_degree.clamp(min=1e-12), torch.zeros_like(edge_degree))
        inv_node = torch.where(node_degree > 0, 1.0 / node_degree.clamp(min=1e-12), torch.zeros_like(node_degree))
        edges = (incidence * inv_edge).transpose(1, 2) @ x  # [B, E, d]: mean of member nodes
        return inv_node * (incidence @ edges)


class HypergraphEncoder(nn.Module):
    """Two hypergraph convolutions; output the mean of both layers (official MBHT code)."""

    def __init__(self, hidden_size: int, dropout: float, num_layers: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(HypergraphConvolution(hidden_size) for _ in range(num_layers))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, incidence: torch.Tensor) -> torch.Tensor:
        outputs = []
        for layer in self.layers:
            x = self.dropout(layer(x, incidence))
            outputs.append(x)
        return torch.stack(outputs).mean(0)


def window_readout(values: torch.Tensor, node_mask: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Mean of ``values`` ``[B, L, d]`` over node positions in ``[i - before, i + after]``, ``j != i``.

    Used for ``[MASK]`` positions, which are not hypergraph nodes: their hypergraph view is
    read out from the neighbouring positions (official MBHT code; a window with no node
    gives 0).
    """
    length = values.shape[1]
    offset = torch.arange(length, device=values.device)
    delta = offset[None, :] - offset[:, None]  # j - i
    band = (delta >= -before) & (delta <= after) & (delta != 0)
    weights = band[None].to(values.dtype) * node_mask[:, None, :].to(values.dtype)  # [B, L, L]
    counts = weights.sum(-1, keepdim=True)
    return (weights @ values) / counts.clamp(min=1.0)
