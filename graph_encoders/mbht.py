"""MBHT: Multi-Behavior Hypergraph-enhanced Transformer (Yang et al., KDD 2022).

The paper's text is not available offline here, so its parts are cited by section
(numbering of the arXiv version 2207.05584); every ambiguity and every deviation from the
official code (yuh-yang/MBHT-KDD22) is listed in docs/mbht.md.

* §3.1.1 behavior-aware context embedding ``h_j = e_j + p_j + b_j`` (item + position +
  behavior type), LayerNorm, dropout (:class:`graph_encoders.layers.SequenceEmbedding`).
* §3.1.2 multi-scale Transformer (:class:`MultiScaleAttention`): low-rank self-attention
  ``softmax(Q (E^T K)^T / sqrt(d)) E^T V`` along the sequence (Linformer-style, one length
  projection ``E`` shared by keys and values), plus full self-attention over the sequence
  mean-pooled in segments of ``p`` items for every granularity ``p`` in ``pool_sizes``; the
  scales are concatenated along the sequence axis and mixed back to ``L`` positions by a
  learned linear map; then the position-wise feed-forward, residual + LayerNorm.
* §3.2 per-sequence hypergraph (semantic + multi-behavior hyperedges) and two hypergraph
  convolutions over gated item embeddings (:mod:`graph_encoders.hypergraph`).
* §3.3 cross-view aggregation ``α_v = softmax_v(a^T W h_v)``, ``g = Σ_v α_v h_v``
  (:class:`CrossViewFusion`).
* §3.4 Cloze objective: a target-behavior item of each training window is always
  ``[MASK]``-ed, every other item with probability ``mask_ratio``; softmax cross-entropy
  over all items at the masked positions with the input item embeddings as output table.
  At test time ``[MASK]`` is appended to the history and its fused output scores the items.

No sequence length is hard-coded: the low-rank projection maps ``max_len`` positions to
``low_rank`` and the pooled lengths are ``ceil(max_len / p)``, all derived from the config.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from graph_encoders.base import (
    DatasetSpec,
    ModelConfig,
    SeqBatch,
    SequentialRecommender,
    next_item_cross_entropy,
    register_model,
)
from graph_encoders.hypergraph import HypergraphEncoder, MultiChannelCosine, build_incidence, window_readout
from graph_encoders.layers import (
    MultiHeadAttention,
    PointwiseFeedForward,
    SequenceEmbedding,
    TransformerEncoder,
    attention_mask,
    init_weights,
)
from llmrec.config import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class MBHTConfig(ModelConfig):
    """MBHT settings; defaults are the paper's / official ``MBHT.yaml`` where they exist."""

    hidden_size: int = 64  # d
    max_len: int = 50  # window L including the [MASK] slot (the official code fixes 200)
    dropout: float = 0.5  # hidden dropout (official hidden_dropout_prob)
    use_behaviors: bool = True  # MBHT always embeds behavior types; must stay true
    num_layers: int = 2
    num_heads: int = 2
    inner_size: int = 256  # feed-forward width
    attention_dropout: float = 0.5
    low_rank: int = 5  # rank of the length projection E (official scales[0])
    pool_sizes: list[int] = field(default_factory=lambda: [8, 40])  # items per pooled segment (official scales[1:])
    mask_ratio: float = 0.2  # Cloze masking probability
    cloze_target: Literal["newest", "sampled"] = "sampled"  # which target-behavior item is always masked
    cut_after_target: bool = False  # true: drop the window's items after it (predicted from its past only)
    semantic_top_k: int = 5  # neighbours per semantic hyperedge (official hyper_len 6 counts the item itself)
    metric_channels: int = 2  # M in the multi-channel cosine similarity
    hypergraph_dropout: float = 0.2
    readout_before: int = 10  # [MASK] hypergraph read-out window (official retail: 10 / 6)
    readout_after: int = 6
    multiscale: bool = True  # False: plain bidirectional Transformer blocks (ablation)
    hypergraph: bool = True  # False: Transformer view only (ablation)

    def validate(self) -> None:
        super().validate()
        if not self.use_behaviors:
            raise ConfigError("use_behaviors must be true for MBHT (its context embedding is behavior-aware)")
        if self.num_layers < 1 or self.num_heads < 1:
            raise ConfigError(f"num_layers and num_heads must be >= 1, got {self.num_layers}, {self.num_heads}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.inner_size < 1 or self.low_rank < 1:
            raise ConfigError(f"inner_size and low_rank must be >= 1, got {self.inner_size}, {self.low_rank}")
        if not self.pool_sizes or any(p < 2 for p in self.pool_sizes):
            raise ConfigError(f"pool_sizes must be a non-empty list of integers >= 2, got {self.pool_sizes}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ConfigError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        for name in ("attention_dropout", "hypergraph_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("semantic_top_k", "readout_before", "readout_after"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.metric_channels < 1:
            raise ConfigError(f"metric_channels must be >= 1, got {self.metric_channels}")


def segment_mean(x: torch.Tensor, valid: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``x`` ``[B, L, d]`` over the valid positions of consecutive segments of ``size``.

    Segments are aligned to the newest (right) edge; the oldest segment may be shorter.
    Returns ``[B, ceil(L / size), d]`` and the ``[B, ceil(L / size)]`` mask of segments
    holding at least one valid position.
    """
    b, length, d = x.shape
    n = math.ceil(length / size)
    pad = n * size - length
    weights = valid.to(x.dtype)
    x = torch.cat([x.new_zeros(b, pad, d), x * weights[..., None]], dim=1)
    weights = torch.cat([weights.new_zeros(b, pad), weights], dim=1)
    counts = weights.view(b, n, size).sum(-1)
    sums = x.view(b, n, size, d).sum(2)
    return sums / counts.clamp(min=1.0)[..., None], counts > 0


class MultiScaleAttention(nn.Module):
    """Low-rank attention along the sequence + full attention over pooled sequences (§3.1.2)."""

    def __init__(
        self, hidden_size: int, num_heads: int, length: int, low_rank: int, pool_sizes: list[int],
        dropout: float, attention_dropout: float,
    ) -> None:
        super().__init__()
        self.pool_sizes = list(pool_sizes)
        self.length_projection = nn.Linear(length, low_rank, bias=False)  # E, shared by keys and values
        self.low_rank_attention = MultiHeadAttention(hidden_size, num_heads, attention_dropout)
        self.pooled_attention = MultiHeadAttention(hidden_size, num_heads, attention_dropout)  # shared by scales
        self.norm_fine = nn.LayerNorm(hidden_size, eps=1e-12)
        self.norm_coarse = nn.LayerNorm(hidden_size, eps=1e-12)
        self.dropout = nn.Dropout(dropout)
        pooled_lengths = [math.ceil(length / p) for p in self.pool_sizes]
        self.scale_mixer = nn.Linear(length + sum(pooled_lengths), length)  # back to L positions
        self.length = length

    def add_identity_to_mixer(self) -> None:
        """Add the identity on the fine scale to the (small random) mixing weights.

        Our choice (docs/mbht.md): each position starts from its own fine-scale state, so
        the layer begins close to a plain post-norm Transformer layer.
        """
        with torch.no_grad():
            self.scale_mixer.weight[:, : self.length] += torch.eye(self.length, device=self.scale_mixer.weight.device)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        keep = valid[..., None].to(x.dtype)
        compressed = self.length_projection((x * keep).transpose(1, 2)).transpose(1, 2)  # [B, r, d]
        fine = self.norm_fine(x + self.dropout(self.low_rank_attention(x, compressed)))
        scales = [fine * keep]
        for size in self.pool_sizes:
            pooled, segment_valid = segment_mean(x, valid, size)
            mask = attention_mask(segment_valid, causal=False)
            coarse = self.norm_coarse(pooled + self.dropout(self.pooled_attention(pooled, pooled, mask)))
            scales.append(coarse * segment_valid[..., None].to(x.dtype))
        stacked = torch.cat(scales, dim=1)  # [B, L + sum(L/p), d]
        return self.scale_mixer(stacked.transpose(1, 2)).transpose(1, 2)


class MultiScaleTransformerLayer(nn.Module):
    """Multi-scale attention, then ``LN(h + Dropout(FFN(h)))``; padding rows are zeroed."""

    def __init__(self, config: MBHTConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.attention = MultiScaleAttention(
            d, config.num_heads, config.max_len, config.low_rank, config.pool_sizes,
            config.dropout, config.attention_dropout,
        )
        # the official feed-forward has no dropout between its two layers, only on its output (below)
        self.feed_forward = PointwiseFeedForward(d, config.inner_size, 0.0, activation="gelu")
        self.norm = nn.LayerNorm(d, eps=1e-12)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        h = self.attention(x, valid)
        return self.norm(h + self.dropout(self.feed_forward(h))) * valid[..., None].to(x.dtype)


class CrossViewFusion(nn.Module):
    """§3.3: ``α_v = softmax_v(a^T W h_v)`` per position, output ``Σ_v α_v h_v``."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.project = nn.Linear(hidden_size, hidden_size, bias=False)  # W
        self.query = nn.Parameter(torch.empty(hidden_size).normal_(std=0.02))  # a

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack(views)  # [V, B, L, d]
        weights = torch.softmax((self.project(stacked) * self.query).sum(-1), dim=0)
        return (weights[..., None] * stacked).sum(0)


def shift_right(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Move row ``b`` of ``x`` ``[B, L]`` right by ``shift[b]`` columns, filling with 0."""
    length = x.shape[1]
    source = torch.arange(length, device=x.device)[None] - shift[:, None]
    return x.gather(1, source.clamp(min=0)).masked_fill(source < 0, 0)


def newest_window(x: torch.Tensor, length: int) -> torch.Tensor:
    """Left-pad with 0 or keep the newest ``length`` columns of ``x`` ``[B, L']``."""
    if x.shape[1] >= length:
        return x[:, x.shape[1] - length :]
    return torch.cat([x.new_zeros(x.shape[0], length - x.shape[1]), x], dim=1)


@register_model("mbht")
class MBHT(SequentialRecommender):
    """Multi-scale Transformer view + hypergraph view, fused; item id ``n_items + 1`` is ``[MASK]``."""

    config_class = MBHTConfig
    inputs = frozenset({"items", "behaviors"})

    def __init__(self, config: MBHTConfig, spec: DatasetSpec) -> None:
        super().__init__(config, spec)
        d = config.hidden_size
        self.mask_id = spec.n_items + 1
        self.embedding = SequenceEmbedding(
            spec.n_items, d, config.max_len, config.dropout, n_behaviors=spec.n_behaviors,
            extra_items=1, layer_norm=True,
        )
        if config.multiscale:
            self.layers = nn.ModuleList(MultiScaleTransformerLayer(config) for _ in range(config.num_layers))
        else:
            self.encoder = TransformerEncoder(
                config.num_layers, hidden_size=d, num_heads=config.num_heads, inner_size=config.inner_size,
                dropout=config.dropout, attention_dropout=config.attention_dropout, activation="gelu",
                norm_first=False,
            )
        if config.hypergraph:
            self.gate = nn.Linear(d, d)  # x ⊙ σ(x W_g + b_g) before the hypergraph (official code)
            self.metric = MultiChannelCosine(d, config.metric_channels)
            self.hypergraph_encoder = HypergraphEncoder(d, config.hypergraph_dropout)
            self.fusion = CrossViewFusion(d)
        init_weights(self)
        if config.multiscale:
            for layer in self.layers:
                layer.attention.add_identity_to_mixer()

    # ---- the two views -------------------------------------------------------------
    def transformer_view(self, items: torch.Tensor, behaviors: torch.Tensor,
                         inputs: torch.Tensor | None = None) -> torch.Tensor:
        """§3.1: ``[B, L, d]`` behavior-aware multi-scale Transformer output.

        ``inputs`` replaces the §3.1.1 context embedding when a subclass builds its own
        (DreamRec Eq. 21-22); None = ``h_j = e_j + p_j + b_j``.
        """
        valid = items > 0
        x = self.embedding(items, behaviors) if inputs is None else inputs
        if not self.config.multiscale:
            return self.encoder(x, valid, causal=False)
        x = x * valid[..., None].to(x.dtype)
        for layer in self.layers:
            x = layer(x, valid)
        return x

    def hypergraph_view(self, items: torch.Tensor, behaviors: torch.Tensor) -> torch.Tensor:
        """§3.2: ``[B, L, d]``; ``[MASK]`` positions read out their neighbours' outputs."""
        cfg = self.config
        valid = items > 0
        masked = items == self.mask_id
        nodes = valid & ~masked
        raw = self.embedding.items(items)
        gated = raw * torch.sigmoid(self.gate(raw))
        incidence = build_incidence(items, behaviors, nodes, self.metric(gated), cfg.semantic_top_k)
        hidden = self.hypergraph_encoder(gated, incidence)
        readout = window_readout(hidden, nodes, cfg.readout_before, cfg.readout_after)
        hidden = torch.where(masked[..., None], readout, hidden)
        return hidden * valid[..., None].to(hidden.dtype)

    def window(self, items: torch.Tensor, behaviors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The newest ``max_len`` columns of ``items`` / ``behaviors`` (left-padded), ids checked."""
        items = newest_window(items, self.config.max_len)
        behaviors = newest_window(behaviors, self.config.max_len)
        if bool((items > self.mask_id).any()) or bool((items < 0).any()):
            raise ValueError(f"item ids must be in [0, {self.mask_id}] (0 = padding, {self.mask_id} = [MASK])")
        if bool((behaviors > self.n_behaviors).any()) or bool((behaviors < 0).any()):
            raise ValueError(f"behavior ids must be in [0, {self.n_behaviors}] (0 = padding / hidden)")
        return items, behaviors

    def encode_sequence(self, items: torch.Tensor, behaviors: torch.Tensor,
                        inputs: torch.Tensor | None = None) -> torch.Tensor:
        """Fused ``[B, L, d]`` for left-padded ``items`` / ``behaviors`` (+1 ids, may hold ``[MASK]``).

        ``inputs`` (``[B, max_len, d]``, for ``items`` already cut by :meth:`window`) replaces the
        Transformer view's input embedding (see :meth:`transformer_view`).
        """
        items, behaviors = self.window(items, behaviors)
        sequence = self.transformer_view(items, behaviors, inputs)
        if not self.config.hypergraph:
            return sequence
        fused = self.fusion([sequence, self.hypergraph_view(items, behaviors)])
        return fused * (items > 0)[..., None].to(fused.dtype)

    # ---- SequentialRecommender interface -----------------------------------------
    def encode(self, batch: SeqBatch) -> torch.Tensor:
        """Fused states of the history with ``[MASK]`` appended (oldest column dropped if full).

        The last column is the prediction state, so the base ``user_representation``,
        ``score_all`` and ``score_candidates`` apply unchanged. The ``[MASK]`` position's
        behavior is hidden (id 0), as in training.
        """
        return self.encode_sequence(*self.prediction_inputs(batch))

    def prediction_inputs(self, batch: SeqBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(items, behaviors)`` ``[B, max_len]``: the newest history with ``[MASK]`` (behavior 0) appended."""
        history = batch.items[:, -(self.config.max_len - 1) :]
        history_behaviors = batch.behaviors[:, -(self.config.max_len - 1) :]
        mask_col = torch.full((len(history), 1), self.mask_id, dtype=history.dtype, device=history.device)
        items = torch.cat([history, mask_col], dim=1)
        behaviors = torch.cat([history_behaviors, torch.zeros_like(mask_col)], dim=1)
        return newest_window(items, self.config.max_len), newest_window(behaviors, self.config.max_len)

    def cloze_inputs(self, batch: SeqBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """§3.4 masking of a training batch: ``(inputs, input_behaviors, labels, masked)`` ``[B, L]``.

        The training window is ``batch.labels`` (its newest ``L`` items). One target-behavior
        item with ``loss_mask`` is always masked: one drawn uniformly (``cloze_target=sampled``,
        default) or the newest one (``newest``). With ``cut_after_target`` the items
        after it are dropped and the row is shifted right so it is predicted from its past
        only (like the official "history, then the purchase" instances); by default it is
        masked in place and the rest of the window stays (cutting hides the interactions just
        before the validation target from training; docs/mbht.md). Every other real item is
        masked with probability ``mask_ratio``
        (any behavior); a row with nothing masked masks its newest item. Masked positions get
        the hidden behavior id 0. Randomness comes from the global (seeded) torch RNG.
        """
        if batch.labels is None or batch.loss_mask is None or batch.label_behaviors is None:
            raise ValueError("loss() needs a training batch (labels, label_behaviors, loss_mask)")
        length = self.config.max_len
        sequence = newest_window(batch.labels, length)
        behaviors = newest_window(batch.label_behaviors, length)
        eligible = newest_window(batch.loss_mask.to(torch.long), length).bool() & (sequence > 0)
        eligible &= behaviors == self.spec.target_behavior + 1
        has_target = eligible.any(1)
        if self.config.cloze_target == "newest":
            chosen = length - 1 - eligible.flip(1).to(torch.int8).argmax(1)
        else:
            chosen = torch.rand(eligible.shape, device=eligible.device).masked_fill(~eligible, -1.0).argmax(1)
        if self.config.cut_after_target:
            shift = torch.where(has_target, length - 1 - chosen, torch.zeros_like(chosen))
            sequence, behaviors = shift_right(sequence, shift), shift_right(behaviors, shift)
            chosen = torch.full_like(chosen, length - 1)
        else:
            shift = torch.zeros_like(chosen)
        real = sequence > 0
        forced = torch.zeros_like(real)
        forced[torch.arange(len(real), device=real.device), chosen] = has_target
        masked = forced | (real & (torch.rand(real.shape, device=real.device) < self.config.mask_ratio))
        masked[:, -1] |= ~masked.any(1) & real[:, -1]
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "cloze batch: %d rows, %d without a target-behavior item, %d positions cut after the target, "
                "%d masked", len(sequence), int((~has_target).sum()), int(shift.sum()), int(masked.sum()),
            )
        inputs = sequence.masked_fill(masked, self.mask_id)
        return inputs, behaviors.masked_fill(masked, 0), sequence, masked

    def loss(self, batch: SeqBatch) -> torch.Tensor:
        """§3.4 Cloze cross-entropy over all items at the masked positions."""
        inputs, behaviors, labels, masked = self.cloze_inputs(batch)
        hidden = self.encode_sequence(inputs, behaviors)
        return next_item_cross_entropy(hidden, labels, masked, self.item_embeddings())

    def item_embeddings(self) -> torch.Tensor:
        """``[n_items, d]`` input = output item table (TMF's item graph modality, Eq. 3)."""
        return self.embedding.items.weight[1 : self.n_items + 1]

    def behavior_embeddings(self) -> torch.Tensor:
        """``[n_behaviors, d]`` behavior-type table (TMF's behavior graph modality, Eq. 4)."""
        return self.embedding.behaviors.weight[1:]
