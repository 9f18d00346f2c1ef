"""Layers shared by every sequential recommender (written once, used by all).

* :class:`MultiHeadAttention`: scaled dot-product attention (Vaswani et al. 2017,
  Eq. 1) over ``h`` heads with a boolean mask (``True`` = may attend).
* :class:`PointwiseFeedForward`: the two-layer position-wise network
  (SASRec Eq. 4 with ReLU, BERT4Rec Eq. 3 with GELU).
* :class:`TransformerBlock`: attention + feed-forward, each wrapped in
  residual + dropout + LayerNorm (SASRec §III-C "stacking"; ``norm_first``
  switches between the pre-norm of SASRec's reference code and the post-norm
  of BERT4Rec's Eq. 4-5).
* :class:`SequenceEmbedding`: item + learned position (+ optional behavior-type)
  embedding, the input layer of SASRec §III-B and BERT4Rec §3.4.
* :class:`ModalityEncoder`: per-modality linear projection of item features into the
  model width, then one bidirectional self-attention block over the sequence (DreamRec
  Eq. 12-15).
* :class:`LearnedQueryAttention`: one learnable query cross-attends over a sequence of
  (concatenated) features and returns one vector per sequence (DreamRec Eq. 17-20, the
  Q-Former read-out).
* :func:`attention_mask`: causal / bidirectional masks with key padding.
* :func:`left_to_right_padded`: re-aligns left-padded rows (the batch convention,
  see :mod:`graph_encoders.base`) for recurrent models that need packing.

Conventions: item index 0 is padding (internal item ``i`` is id ``i + 1``);
tensors are ``[batch, length, hidden]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def attention_mask(valid: torch.Tensor, causal: bool) -> torch.Tensor:
    """Boolean attention mask ``[B, 1, L, L]`` (``True`` = query may attend to key).

    ``valid`` is ``[B, L]`` (False at padding). Keys at padding are never attended;
    every query may attend to itself so that rows at padding positions stay finite
    (their outputs are ignored by the caller).
    """
    length = valid.shape[1]
    mask = valid[:, None, None, :].expand(-1, 1, length, -1)
    if causal:
        lower = torch.ones(length, length, dtype=torch.bool, device=valid.device).tril()
        mask = mask & lower
    eye = torch.eye(length, dtype=torch.bool, device=valid.device)
    return mask | eye


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention, ``softmax(QK^T / sqrt(d)) V`` per head."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.output = nn.Linear(hidden_size, hidden_size)
        self.dropout = dropout

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        return x.view(b, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``queries`` ``[B, Lq, d]`` attend over ``keys`` ``[B, Lk, d]`` (keys double as values)."""
        q, k, v = self._split(self.query(queries)), self._split(self.key(keys)), self._split(self.value(keys))
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        b, _, length, _ = out.shape
        return self.output(out.transpose(1, 2).reshape(b, length, self.num_heads * self.head_dim))


class PointwiseFeedForward(nn.Module):
    """``W2 act(W1 x + b1) + b2`` applied at every position."""

    def __init__(self, hidden_size: int, inner_size: int, dropout: float, activation: str = "relu") -> None:
        super().__init__()
        acts = {"relu": nn.ReLU(), "gelu": nn.GELU()}
        if activation not in acts:
            raise ValueError(f"activation must be one of {sorted(acts)}, got {activation!r}")
        self.net = nn.Sequential(
            nn.Linear(hidden_size, inner_size), acts[activation], nn.Dropout(dropout),
            nn.Linear(inner_size, hidden_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Self-attention + feed-forward with residual, dropout and LayerNorm.

    ``norm_first=True``: ``x + Drop(Attn(LN(x)))`` then ``x + Drop(FFN(LN(x)))`` (SASRec's
    reference implementation). ``norm_first=False``: ``LN(x + Drop(Attn(x)))`` then
    ``LN(x + Drop(FFN(x)))`` (BERT4Rec Eq. 4-5, the original Transformer).
    """

    def __init__(
        self, hidden_size: int, num_heads: int, inner_size: int, dropout: float,
        attention_dropout: float | None = None, activation: str = "relu", norm_first: bool = True,
    ) -> None:
        super().__init__()
        attn_drop = dropout if attention_dropout is None else attention_dropout
        self.attention = MultiHeadAttention(hidden_size, num_heads, attn_drop)
        self.feed_forward = PointwiseFeedForward(hidden_size, inner_size, dropout, activation)
        self.norm_attention = nn.LayerNorm(hidden_size, eps=1e-8)
        self.norm_feed_forward = nn.LayerNorm(hidden_size, eps=1e-8)
        self.dropout = nn.Dropout(dropout)
        self.norm_first = norm_first

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            h = self.norm_attention(x)
            x = x + self.dropout(self.attention(h, h, mask))
            return x + self.dropout(self.feed_forward(self.norm_feed_forward(x)))
        x = self.norm_attention(x + self.dropout(self.attention(x, x, mask)))
        return self.norm_feed_forward(x + self.dropout(self.feed_forward(x)))


class TransformerEncoder(nn.Module):
    """A stack of :class:`TransformerBlock`; zeroes padding positions after each block."""

    def __init__(self, num_layers: int, final_norm: bool = True, **block_kwargs) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TransformerBlock(**block_kwargs) for _ in range(num_layers))
        hidden = block_kwargs["hidden_size"]
        norm_first = block_kwargs.get("norm_first", True)
        # pre-norm stacks end with a LayerNorm (SASRec's last_layernorm); post-norm ones already do
        self.final_norm = nn.LayerNorm(hidden, eps=1e-8) if final_norm and norm_first else nn.Identity()

    def forward(self, x: torch.Tensor, valid: torch.Tensor, causal: bool) -> torch.Tensor:
        mask = attention_mask(valid, causal)
        keep = valid.unsqueeze(-1).to(x.dtype)
        x = x * keep
        for block in self.blocks:
            x = block(x, mask) * keep
        return self.final_norm(x)


class ModalityEncoder(nn.Module):
    """``F' = F W + b`` (DreamRec Eq. 12-13), then ``A = LN(F' + Drop(SelfAttn(F')))`` (Eq. 14-15).

    ``features`` ``[B, L, d_in]`` are one modality's item features along the sequence;
    ``visible`` ``[B, L]`` marks the positions whose features may be read (keys): padding,
    ``[MASK]``-ed positions and items without features are not visible, so nothing of them
    reaches any output. Every query may attend to itself (so rows stay finite); the outputs
    at invisible positions are meaningless and must be ignored by the caller.
    """

    def __init__(self, in_size: int, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.projection = nn.Linear(in_size, hidden_size)  # W_m, b_m of Eq. 12-13
        self.attention = MultiHeadAttention(hidden_size, num_heads, dropout)
        self.norm = nn.LayerNorm(hidden_size, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        projected = self.projection(features)
        attended = self.attention(projected, projected, attention_mask(visible, causal=False))
        return self.norm(projected + self.dropout(attended))


class LearnedQueryAttention(nn.Module):
    """One learnable query over a sequence of keys: ``softmax(Q K^T / sqrt(d)) V`` (DreamRec Eq. 17-20).

    ``Q = W_q q + b_q`` from the learnable ``q`` (Eq. 17), ``K = F W_k + b_k`` and
    ``V = F W_v + b_v`` from the ``[B, L, d_in]`` keys (Eq. 18-19), single head with
    ``d_k = d_v = hidden_size`` as printed. Only ``visible`` ``[B, L]`` positions are attended;
    a row with no visible position gets the zero vector. Returns ``[B, hidden_size]``.
    """

    def __init__(self, in_size: int, hidden_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.query_vector = nn.Parameter(torch.empty(1, hidden_size).normal_(std=0.02))  # q
        self.query = nn.Linear(hidden_size, hidden_size)  # W_q, b_q
        self.key = nn.Linear(in_size, hidden_size)  # W_k, b_k
        self.value = nn.Linear(in_size, hidden_size)  # W_v, b_v
        self.dropout = nn.Dropout(dropout)
        self.scale = 1.0 / math.sqrt(hidden_size)

    def forward(self, keys: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        query = self.query(self.query_vector)  # [1, d]
        logits = (self.key(keys) @ query.T).squeeze(-1) * self.scale  # [B, L]
        logits = logits.masked_fill(~visible, torch.finfo(logits.dtype).min)  # finite: no NaN in empty rows
        weights = torch.softmax(logits, dim=-1) * visible.to(logits.dtype)  # exact 0 off the visible keys
        return (self.dropout(weights)[..., None] * self.value(keys)).sum(1)


class SequenceEmbedding(nn.Module):
    """Input layer: item embedding (row 0 = padding) + learned position embedding
    (+ behavior-type embedding when ``n_behaviors`` is given), then dropout (+ LayerNorm).
    ``positional=False`` drops the position term (recurrent models).

    Positions count from the *left edge of the window*: with left padding the newest
    interaction always sits at position ``max_len - 1`` (as in SASRec's reference code).
    Items may include extra special rows (e.g. BERT4Rec's [MASK]) via ``extra_items``.
    """

    def __init__(
        self, n_items: int, hidden_size: int, max_len: int, dropout: float,
        n_behaviors: int | None = None, extra_items: int = 0, layer_norm: bool = False,
        scale_items: bool = False, positional: bool = True,
    ) -> None:
        super().__init__()
        self.items = nn.Embedding(n_items + 1 + extra_items, hidden_size, padding_idx=0)
        self.positions = nn.Embedding(max_len, hidden_size) if positional else None
        self.behaviors = (
            nn.Embedding(n_behaviors + 1, hidden_size, padding_idx=0) if n_behaviors else None
        )
        self.norm = nn.LayerNorm(hidden_size, eps=1e-8) if layer_norm else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.scale = math.sqrt(hidden_size) if scale_items else 1.0
        self.max_len = max_len

    def forward(self, items: torch.Tensor, behaviors: torch.Tensor | None = None) -> torch.Tensor:
        length = items.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds the model's max_len {self.max_len}")
        x = self.items(items) * self.scale
        if self.positions is not None:
            positions = torch.arange(self.max_len - length, self.max_len, device=items.device)
            x = x + self.positions(positions)[None]
        if self.behaviors is not None:
            if behaviors is None:
                raise ValueError("this model was built with use_behaviors=true but the batch has no behaviors")
            x = x + self.behaviors(behaviors)
        return self.dropout(self.norm(x))


def left_to_right_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Move each row's last ``lengths[b]`` entries to the front (left- to right-padded).

    Works for ``[B, L]`` and ``[B, L, ...]``; applying :func:`right_to_left_padded` undoes it.
    """
    length = x.shape[1]
    idx = (torch.arange(length, device=x.device)[None] + (length - lengths)[:, None]) % length
    return _gather_rows(x, idx)


def right_to_left_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`left_to_right_padded`."""
    length = x.shape[1]
    idx = (torch.arange(length, device=x.device)[None] - (length - lengths)[:, None]) % length
    return _gather_rows(x, idx)


def _gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    if x.ndim == 2:
        return x.gather(1, idx)
    expanded = idx.view(*idx.shape, *([1] * (x.ndim - 2))).expand_as(x)
    return x.gather(1, expanded)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """Truncated-normal init for Linear/Embedding, ones/zeros for LayerNorm (BERT-style)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
