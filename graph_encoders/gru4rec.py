"""GRU4Rec: session-based recommendation with recurrent networks (Hidasi et al., ICLR 2016).

Equations implemented (numbering of the paper, §3.1):

* Eq. 1-4  the GRU update ``h_t = (1 - z_t) h_{t-1} + z_t ĥ_t`` with update gate ``z_t``,
  reset gate ``r_t`` and candidate ``ĥ_t`` (``torch.nn.GRU``), over an item embedding
  input (the paper's "embedding layer" option of §3.1, Fig. 1) with dropout.
* Output: a feed-forward layer maps the final GRU state to the item-embedding space and
  items are scored by dot product with the (shared) input item embeddings.

Deviation (documented in docs/graph_encoders.md): the paper trains with session-parallel
mini-batches and the ranking losses BPR / TOP1 over in-batch negatives (§3.1.1-3.1.2);
we use softmax cross-entropy over all items at every position of the user's window
(the later GRU4Rec papers' cross-entropy option), with every user window a row.
With ``use_behaviors`` a behavior-type embedding is added to the input (our extension).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from graph_encoders.base import DatasetSpec, ModelConfig, SeqBatch, SequentialRecommender, register_model
from graph_encoders.layers import SequenceEmbedding, init_weights, left_to_right_padded, right_to_left_padded
from llmrec.config import ConfigError


@dataclass
class GRU4RecConfig(ModelConfig):
    num_layers: int = 1  # stacked GRU layers
    gru_hidden_size: int | None = None  # GRU state width; None = hidden_size

    def validate(self) -> None:
        super().validate()
        if self.num_layers < 1:
            raise ConfigError(f"num_layers must be >= 1, got {self.num_layers}")


@register_model("gru4rec")
class GRU4Rec(SequentialRecommender):
    """GRU over the (left-padded) item sequence, re-aligned and packed so padding never enters the state."""

    config_class = GRU4RecConfig
    inputs = frozenset({"items"})

    def __init__(self, config: GRU4RecConfig, spec: DatasetSpec) -> None:
        super().__init__(config, spec)
        d = config.hidden_size
        state = config.gru_hidden_size or d
        self.embedding = SequenceEmbedding(
            spec.n_items, d, config.max_len, config.dropout,
            n_behaviors=spec.n_behaviors if config.use_behaviors else None, positional=False,
        )
        self.gru = nn.GRU(d, state, num_layers=config.num_layers, batch_first=True, bias=True)
        self.project = nn.Linear(state, d)
        init_weights(self)
        for name, weight in self.gru.named_parameters():
            if "weight" in name:
                nn.init.xavier_uniform_(weight)
            else:
                nn.init.zeros_(weight)

    def encode(self, batch: SeqBatch) -> torch.Tensor:
        x = self.embedding(batch.items, batch.behaviors if self.config.use_behaviors else None)
        lengths = batch.lengths.clamp(min=1)
        packed = pack_padded_sequence(
            left_to_right_padded(x, lengths), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return self.project(right_to_left_padded(out, lengths))

    def item_embeddings(self) -> torch.Tensor:
        return self.embedding.items.weight[1 : self.n_items + 1]

    def behavior_embeddings(self) -> torch.Tensor | None:
        table = self.embedding.behaviors
        return None if table is None else table.weight[1:]
