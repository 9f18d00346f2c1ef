"""BERT4Rec: bidirectional Transformer with a Cloze objective (Sun et al., CIKM 2019).

Equations implemented (numbering of the paper, §3):

* Eq. 1-2  multi-head scaled dot-product attention, here **bidirectional** (no causal mask).
* Eq. 3    position-wise feed-forward with GELU.
* Eq. 4-5  stacked blocks ``A = LN(H + Dropout(MH(H)))``, ``H' = LN(A + Dropout(PFFN(A)))``
  (post-norm).
* §3.4     input ``h_i = v_i + p_i`` (item + learned position embedding), LayerNorm, dropout.
* Eq. 7    output ``P(v) = softmax(GELU(h W^P + b^P) E^T + b^O)`` with the input item
  embedding ``E`` shared as output table and an item bias ``b^O``.
* Eq. 8    Cloze loss: the mean negative log-likelihood of the masked items; each eligible
  item is replaced by ``[MASK]`` with probability ``mask_prob`` (ρ).
* §3.6     at test time ``[MASK]`` is appended to the history and its output scores the
  next item; to match this, a fraction ``mask_last_fraction`` of training rows mask only
  their newest item (the paper adds such samples but gives no ratio: 0.1 is our choice).

Eligible positions are those of ``batch.loss_mask`` (all items, or only target-behavior
items with ``train.loss_on=target``); a row with nothing drawn masks its newest eligible
item so every row trains. With ``use_behaviors`` a behavior-type embedding is added at
every position, including the ``[MASK]`` position (whose behavior, the target behavior,
is known at prediction time).
"""

from __future__ import annotations

from dataclasses import dataclass

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
from graph_encoders.layers import SequenceEmbedding, TransformerEncoder, init_weights
from llmrec.config import ConfigError


@dataclass
class BERT4RecConfig(ModelConfig):
    num_layers: int = 2
    num_heads: int = 2
    inner_size: int | None = None  # feed-forward width; None = 4 * hidden_size (the paper's choice)
    mask_prob: float = 0.2  # ρ; the paper uses 0.2 on MovieLens
    mask_last_fraction: float = 0.1  # rows that mask only their newest item (§3.6)

    def validate(self) -> None:
        super().validate()
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"mask_prob must be in (0, 1), got {self.mask_prob}")
        if not 0.0 <= self.mask_last_fraction <= 1.0:
            raise ConfigError(f"mask_last_fraction must be in [0, 1], got {self.mask_last_fraction}")


@register_model("bert4rec")
class BERT4Rec(SequentialRecommender):
    """Bidirectional Transformer; item id ``n_items + 1`` is ``[MASK]``."""

    config_class = BERT4RecConfig
    inputs = frozenset({"items"})

    def __init__(self, config: BERT4RecConfig, spec: DatasetSpec) -> None:
        super().__init__(config, spec)
        d = config.hidden_size
        self.mask_id = spec.n_items + 1
        self.embedding = SequenceEmbedding(
            spec.n_items, d, config.max_len, config.dropout, extra_items=1, layer_norm=True,
            n_behaviors=spec.n_behaviors if config.use_behaviors else None,
        )
        self.encoder = TransformerEncoder(
            config.num_layers, hidden_size=d, num_heads=config.num_heads,
            inner_size=config.inner_size or 4 * d, dropout=config.dropout, activation="gelu", norm_first=False,
        )
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d, eps=1e-8))  # Eq. 7 transform
        self.output_bias = nn.Parameter(torch.zeros(spec.n_items))  # b^O
        init_weights(self)

    def _encode_ids(self, items: torch.Tensor, behaviors: torch.Tensor) -> torch.Tensor:
        x = self.embedding(items, behaviors if self.config.use_behaviors else None)
        return self.encoder(x, items > 0, causal=False)

    def encode(self, batch: SeqBatch) -> torch.Tensor:
        return self.head(self._encode_ids(batch.items, batch.behaviors))

    def _draw_mask(self, eligible: torch.Tensor) -> torch.Tensor:
        """Cloze positions ``[B, L]`` among ``eligible`` (uses the global, seeded torch RNG)."""
        cfg = self.config
        masked = eligible & (torch.rand(eligible.shape, device=eligible.device) < cfg.mask_prob)
        newest = torch.zeros_like(eligible)
        # index of the newest eligible position per row (left padding: the rightmost True)
        last_col = eligible.shape[1] - 1 - eligible.flip(1).to(torch.int8).argmax(1)
        newest[torch.arange(len(eligible)), last_col] = True
        newest &= eligible
        last_only = torch.rand(len(eligible), device=eligible.device) < cfg.mask_last_fraction
        masked = torch.where(last_only[:, None], newest, masked)
        empty = ~masked.any(1)
        return torch.where(empty[:, None], newest, masked)

    def loss(self, batch: SeqBatch) -> torch.Tensor:
        """Eq. 8 on the training window ``labels`` (the newest ``L`` items of the window)."""
        if batch.labels is None or batch.loss_mask is None or batch.label_behaviors is None:
            raise ValueError("loss() needs a training batch (labels, label_behaviors, loss_mask)")
        sequence = batch.labels
        masked = self._draw_mask(batch.loss_mask & (sequence > 0))
        hidden = self.head(self._encode_ids(sequence.masked_fill(masked, self.mask_id), batch.label_behaviors))
        return next_item_cross_entropy(hidden, sequence, masked, self.item_embeddings(), self.output_bias)

    def user_representation(self, batch: SeqBatch) -> torch.Tensor:
        """Drop the oldest column, append ``[MASK]`` (§3.6) and read its output."""
        b = len(batch.items)
        mask_col = torch.full((b, 1), self.mask_id, dtype=batch.items.dtype, device=batch.items.device)
        items = torch.cat([batch.items[:, 1:], mask_col], dim=1)
        if batch.next_behaviors is not None:
            next_behavior = batch.next_behaviors[:, None]
        else:
            next_behavior = torch.full_like(mask_col, self.spec.target_behavior + 1)
        behaviors = torch.cat([batch.behaviors[:, 1:], next_behavior.to(batch.behaviors.dtype)], dim=1)
        return self.head(self._encode_ids(items, behaviors))[:, -1]

    def item_embeddings(self) -> torch.Tensor:
        return self.embedding.items.weight[1 : self.n_items + 1]

    def item_bias(self) -> torch.Tensor | None:
        return self.output_bias

    def behavior_embeddings(self) -> torch.Tensor | None:
        table = self.embedding.behaviors
        return None if table is None else table.weight[1:]
