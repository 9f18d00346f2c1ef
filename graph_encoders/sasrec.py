"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

Equations implemented (numbering of the paper):

* Eq. 1  input ``E = M_{s_t} + P_t`` (item + learned position embedding), dropout;
  with ``use_behaviors`` a behavior-type embedding is added as a third term
  (our extension for multi-behavior logs, off by default).
* Eq. 2-3  causal self-attention ``softmax(QK^T / sqrt(d)) V`` (queries may only attend
  to earlier positions, §III-B "causality"), multi-head as in the reference code.
* Eq. 4  point-wise feed-forward with ReLU.
* Eq. 5-7  ``b`` stacked blocks, each sub-layer ``x + Dropout(g(LayerNorm(x)))``,
  a final LayerNorm.
* Eq. 8-9  relevance ``r_{i,t} = F_t · M_i`` with the input item embedding ``M`` shared
  as the output table.

Deviation (documented in docs/graph_encoders.md): the paper trains Eq. 10, a binary
cross-entropy with one sampled negative per position; we use softmax cross-entropy
over all items at every position (as asked by the project issue and as RecBole's
``loss_type=CE``), which is cheap at these catalog sizes and converges in fewer epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from graph_encoders.base import DatasetSpec, ModelConfig, SeqBatch, SequentialRecommender, register_model
from graph_encoders.layers import SequenceEmbedding, TransformerEncoder, init_weights
from llmrec.config import ConfigError


@dataclass
class SASRecConfig(ModelConfig):
    num_layers: int = 2  # b, stacked self-attention blocks
    num_heads: int = 1  # the paper uses one head; more are allowed
    inner_size: int | None = None  # feed-forward width; None = hidden_size (the paper's choice)
    attention_dropout: float | None = None  # None = same as dropout

    def validate(self) -> None:
        super().validate()
        if self.num_layers < 1 or self.num_heads < 1:
            raise ConfigError(f"num_layers and num_heads must be >= 1, got {self.num_layers}, {self.num_heads}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")


@register_model("sasrec")
class SASRec(SequentialRecommender):
    """Causal Transformer over the item sequence; next-item scores by dot product (Eq. 9)."""

    config_class = SASRecConfig
    inputs = frozenset({"items"})  # + behaviors when config.use_behaviors

    def __init__(self, config: SASRecConfig, spec: DatasetSpec) -> None:
        super().__init__(config, spec)
        d = config.hidden_size
        self.embedding = SequenceEmbedding(
            spec.n_items, d, config.max_len, config.dropout,
            n_behaviors=spec.n_behaviors if config.use_behaviors else None, scale_items=True,
        )
        self.encoder = TransformerEncoder(
            config.num_layers, hidden_size=d, num_heads=config.num_heads,
            inner_size=config.inner_size or d, dropout=config.dropout,
            attention_dropout=config.attention_dropout, activation="relu", norm_first=True,
        )
        init_weights(self)

    def encode(self, batch: SeqBatch) -> torch.Tensor:
        x = self.embedding(batch.items, batch.behaviors if self.config.use_behaviors else None)
        return self.encoder(x, batch.valid, causal=True)

    def item_embeddings(self) -> torch.Tensor:
        return self.embedding.items.weight[1 : self.n_items + 1]

    def behavior_embeddings(self) -> torch.Tensor | None:
        table = self.embedding.behaviors
        return None if table is None else table.weight[1:]
