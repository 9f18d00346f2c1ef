"""Interest-structure layers: Gaussian attention and cluster attention (BivRec; reusable by other models).

* :class:`GaussianAttention`: multi-head attention whose weights are the standard
  ``softmax(QK^T / sqrt(d))`` multiplied by a Gaussian of the positional distance,
  ``G_ij = exp(-D_ij^2 / σ^2)`` normalised over ``j``, and renormalised (BivRec Eq. 4-6).
  ``σ = softplus(ρ)`` is trainable, one per layer. Because ``G`` only rescales row ``i`` by a
  constant, ``softmax(S) ⊙ G`` renormalised equals ``softmax(S - D^2 / σ^2)``: the Gaussian is
  an additive bias of the attention logits (computed that way: one fused, stable softmax;
  :func:`gaussian_attention_weights` is the printed product form, for tests and inspection).
* :class:`GaussianAttentionBlock`: pre-norm ``x + Drop(GaussAttn(LN(x)))`` then
  ``x + Drop(FFN(LN(x)))`` (the feed-forward of :mod:`graph_encoders.layers`).
* :func:`top_f_mask` / :func:`straight_through_top_f`: the hard top-``F`` filter along the
  last axis (BivRec Eq. 8) and its straight-through form ``filter(A) + A - sg(A)`` (Eq. 10):
  the forward value is the hard 0/1 filter, the gradient is the soft one's.
* :class:`ClusterAttention`: ``K`` learnable interest tokens ``c_k`` (truncated-normal init);
  every input token ``x_j`` is assigned to interests by a (Gumbel-)softmax **over the
  interests** of ``W_q c_k · W_k x_j / sqrt(d)`` (Eq. 7, 9; noise from
  :func:`graph_encoders.selection.relaxed_selection`), hard top-``F`` with the straight-through
  estimator (Eq. 8, 10), and ``v_k = c_k + W_a Σ_j Â_kj W_v x_j`` (Eq. 11-12). Since an
  assignment is a softmax over interests, a token's assignment does not depend on the other
  tokens, so the interests of every prefix of a sequence (``visible`` ``[B, P, N]``: the tokens
  each of ``P`` query positions may see) are masked sums of one assignment: this is how a
  causal model gets per-position interests in one pass.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from graph_encoders.layers import PointwiseFeedForward
from graph_encoders.selection import relaxed_selection

Pooling = Literal["sum", "mean"]


def inverse_softplus(value: float) -> float:
    """``ρ`` with ``softplus(ρ) = value`` (``value > 0``)."""
    if value <= 0:
        raise ValueError(f"softplus is positive; cannot invert {value}")
    return value + math.log(-math.expm1(-value))


def gaussian_logit_bias(positions: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``-D_ij^2 / σ^2`` ``[B, 1, N, N]`` from token positions ``[B, N]`` (``D_ij = |p_i - p_j|``)."""
    distance = positions[:, :, None] - positions[:, None, :]
    return (-distance.square() / sigma.square())[:, None]


def gaussian_attention_weights(scores: torch.Tensor, positions: torch.Tensor, sigma: torch.Tensor,
                               mask: torch.Tensor) -> torch.Tensor:
    """The printed form of Eq. 5-6: ``softmax(scores) ⊙ G``, renormalised over the allowed keys.

    ``scores`` ``[B, h, N, N]`` (already divided by ``sqrt(d)``), ``positions`` ``[B, N]``, ``mask``
    ``[B, 1, N, N]`` bool. Equal to the attention of :class:`GaussianAttention` (tested).
    """
    neg = torch.finfo(scores.dtype).min
    standard = torch.softmax(scores.masked_fill(~mask, neg), dim=-1)
    gaussian = torch.softmax(gaussian_logit_bias(positions, sigma).masked_fill(~mask, neg), dim=-1)  # Eq. 5
    product = standard * gaussian  # Eq. 6
    return product / product.sum(-1, keepdim=True)


class GaussianAttention(nn.Module):
    """Multi-head Gaussian attention (BivRec Eq. 4-6); one trainable ``σ = softplus(ρ)`` shared by the heads."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float, sigma_init: float) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.query = nn.Linear(hidden_size, hidden_size)  # W_q (Eq. 4)
        self.key = nn.Linear(hidden_size, hidden_size)  # W_k
        self.value = nn.Linear(hidden_size, hidden_size)
        self.output = nn.Linear(hidden_size, hidden_size)
        self.sigma_raw = nn.Parameter(torch.tensor(inverse_softplus(sigma_init)))  # ρ, σ = softplus(ρ)
        self.dropout = dropout

    @property
    def sigma(self) -> torch.Tensor:
        return F.softplus(self.sigma_raw)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, N, d]``, token ``positions`` ``[B, N]``, ``mask`` ``[B, 1, N, N]`` bool (True = may attend)."""
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        bias = gaussian_logit_bias(positions.to(x.dtype), self.sigma)  # log G up to a per-row constant
        bias = bias.masked_fill(~mask, float("-inf"))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                             dropout_p=self.dropout if self.training else 0.0)
        b, _, n, _ = out.shape
        return self.output(out.transpose(1, 2).reshape(b, n, -1))


class GaussianAttentionBlock(nn.Module):
    """Pre-norm Gaussian attention + feed-forward, each with residual and dropout (one interaction layer)."""

    def __init__(self, hidden_size: int, num_heads: int, inner_size: int, dropout: float, sigma_init: float) -> None:
        super().__init__()
        self.attention = GaussianAttention(hidden_size, num_heads, dropout, sigma_init)
        self.feed_forward = PointwiseFeedForward(hidden_size, inner_size, dropout, "gelu")
        self.norm_attention = nn.LayerNorm(hidden_size, eps=1e-8)
        self.norm_feed_forward = nn.LayerNorm(hidden_size, eps=1e-8)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.norm_attention(x), positions, mask))
        return x + self.dropout(self.feed_forward(self.norm_feed_forward(x)))


def top_f_mask(weights: torch.Tensor, f: int) -> torch.Tensor:
    """Hard filter (Eq. 8): 1 at the ``f`` largest entries of the last axis, 0 elsewhere (same dtype)."""
    if not 1 <= f <= weights.shape[-1]:
        raise ValueError(f"top-F needs 1 <= F <= {weights.shape[-1]}, got {f}")
    index = weights.topk(f, dim=-1).indices
    return torch.zeros_like(weights).scatter_(-1, index, 1.0)


def straight_through_top_f(soft: torch.Tensor, f: int) -> torch.Tensor:
    """``filter(A) + A - sg(A)`` (Eq. 10): forward = hard top-``f`` filter, backward = gradient of ``A``."""
    return top_f_mask(soft.detach(), f) + (soft - soft.detach())  # parenthesised: the forward is exactly 0/1


class ClusterAttention(nn.Module):
    """``K`` interest tokens that collect the input tokens assigned to them (BivRec Eq. 7-12).

    ``noise`` ``"gumbel"`` (Eq. 9) or ``None`` (plain softmax, the paper's "sh" ablation) applies in
    training mode only; ``hard=False`` keeps the soft assignment (the "ss" ablation).
    ``pooling="sum"`` is Eq. 12 as printed; ``"mean"`` divides interest ``k``'s sum by the number of
    tokens it received (GroupViT's normalisation). Input tokens pass a LayerNorm first. ``c_k`` is drawn
    from a normal truncated at two ``init_std`` (§2.4.2: "initialized by truncated distribution", no scale).
    """

    def __init__(self, hidden_size: int, n_interests: int, top_f: int, temperature: float,
                 noise: Literal["gumbel"] | None = "gumbel", hard: bool = True, pooling: Pooling = "sum",
                 init_std: float = 0.02) -> None:
        super().__init__()
        if not 1 <= top_f <= n_interests:
            raise ValueError(f"top_f must be in 1..{n_interests}, got {top_f}")
        if pooling not in ("sum", "mean"):
            raise ValueError(f"pooling must be 'sum' or 'mean', got {pooling!r}")
        if init_std <= 0:
            raise ValueError(f"init_std must be positive, got {init_std}")
        self.interests = nn.Parameter(nn.init.trunc_normal_(torch.empty(n_interests, hidden_size), std=init_std,
                                                            a=-2 * init_std, b=2 * init_std))  # c_k
        self.norm = nn.LayerNorm(hidden_size, eps=1e-8)
        self.query = nn.Linear(hidden_size, hidden_size)  # W_q^c (Eq. 7)
        self.key = nn.Linear(hidden_size, hidden_size)  # W_k^c
        self.value = nn.Linear(hidden_size, hidden_size, bias=False)  # W_v (Eq. 12)
        self.output = nn.Linear(hidden_size, hidden_size, bias=False)  # W_a (Eq. 12)
        self.top_f, self.temperature, self.noise, self.hard, self.pooling = top_f, temperature, noise, hard, pooling
        self.scale = 1.0 / math.sqrt(hidden_size)

    def _allocation(self, x: torch.Tensor) -> torch.Tensor:
        """``Â`` ``[..., N, K]`` of the normalised tokens ``x`` (Eq. 7-10): token ``j``'s assignment over the ``K``
        interests (straight-through top-``F`` when ``hard``); the noise is drawn in training mode only.

        ``A^c = (W_k x + b_k) · (W_q c_k + b_q) / sqrt(d)`` (Eq. 7) is computed as ``x · (q_k W_k) + b_k · q_k``
        with ``q_k = W_q c_k + b_q``: the same numbers up to rounding, with a ``d x K`` product per token in place of
        a ``d x d`` one (``K`` is 4-24 against ``d`` = 64).
        """
        queries = self.query(self.interests)  # [K, d]
        logits = (x @ (queries @ self.key.weight).T + queries @ self.key.bias) * self.scale  # A^c (Eq. 7)
        soft = relaxed_selection(logits, self.temperature, self.noise if self.training else None)  # Eq. 9
        return straight_through_top_f(soft, self.top_f) if self.hard else soft  # Eq. 8, 10

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """``W_a W_v x`` (Eq. 12; both linear, no bias)."""
        return self.output(self.value(x))

    def forward(self, tokens: torch.Tensor, visible: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(V, Â)``: interests ``V`` and the assignment ``Â`` ``[..., N, K]`` (Eq. 11-12).

        ``tokens`` ``[..., N, d]`` with ``visible=None`` gives ``V`` ``[..., K, d]`` over all tokens;
        ``tokens`` ``[B, N, d]`` with ``visible`` ``[B, P, N]`` bool gives ``V`` ``[B, P, K, d]``, the
        interests of each of ``P`` query positions from the tokens it may see.
        """
        x = self.norm(tokens)
        allocation = self._allocation(x)
        n, k = allocation.shape[-2:]
        pooled_vectors = k * (1 if visible is None else visible.shape[-2])
        # W_a W_v is linear without bias, so it may act before or after the sum: on the N tokens or on the pooled
        # vectors, whichever are fewer (stage 1 of BivRec: N' ~ 70 tokens against 50 x 24 pooled; stage 2: 24 against 4)
        project_first = pooled_vectors >= n
        values = self._project(x) if project_first else x
        if visible is None:
            pooled = allocation.transpose(-1, -2) @ values  # [..., K, d]
            counts = allocation.sum(-2)[..., None]  # [..., K, 1]
        else:
            b = allocation.shape[0]
            weighted = (allocation[..., None] * values[:, :, None]).reshape(b, n, -1)  # [B, N, K·d]
            seen = visible.to(values.dtype)
            pooled = (seen @ weighted).view(b, -1, k, values.shape[-1])  # [B, P, K, d]
            counts = (seen @ allocation)[..., None]  # [B, P, K, 1]
        if not project_first:
            pooled = self._project(pooled)
        if self.pooling == "mean":
            pooled = pooled / counts.clamp(min=1.0)
        return self.interests + pooled, allocation  # Eq. 12
