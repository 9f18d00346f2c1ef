"""DreamRec: multi-modality multi-behavior sequential recommendation on the MBHT backbone.

Paper: ``../shared/papers/dreamrec.txt`` (equation numbers below are the report's). DreamRec
is MBHT (:mod:`graph_encoders.mbht`, subclassed here, nothing copied) with a different input
layer and a user embedding:

* Embeddings (Eq. 5-9): item ``E_x``, behavior ``E_b``, user ``E_u`` repeated along the
  sequence, position ``E_pos``. Item, behavior and position tables are MBHT's own
  (``self.embedding``); the user table is new.
* Modality branch (§3.4): per modality, a linear projection of the item features into ``d``
  (Eq. 12-13) and self-attention over the sequence (Eq. 14-15)
  (:class:`graph_encoders.layers.ModalityEncoder`); the branch outputs are concatenated
  along the feature axis (Eq. 16); one learnable query cross-attends over them (Eq. 17-20,
  :class:`graph_encoders.layers.LearnedQueryAttention`), giving **one vector per sequence**.
* Input (Eq. 21-22): ``S = E_x + E_u' + E_pos + A_cross`` at every position, then
  ``H = ReLU(S W_proj + b_proj)`` (``input_projection: false`` skips it: ``H = S``, an ablation).
  Behavior enters through MBHT's behavior embedding:
  ``H + E_b``, then MBHT's LayerNorm and dropout; this replaces MBHT's §3.1.1 context
  embedding and feeds its multi-scale Transformer view. The hypergraph view (§3.6,
  Eq. 23-24) is MBHT's, on the item embeddings.
* Training (§3.7.1): MBHT's Cloze task (a target-behavior item of every window is always
  masked, the others with ``mask_ratio``); softmax cross-entropy over **all item embeddings**
  at the masked positions. Eq. 25-26 as printed score the masked position against the
  *behavior* embeddings (``z = E_beh h``), which cannot rank items and contradicts the item
  scoring of Eq. 27-28; we implement the item form and keep the printed behavior head as an
  auxiliary loss, ``behavior_loss_weight`` (default 0 = off).
* Inference (§3.7.2, Eq. 27-28): the "dream" token (MBHT's ``[MASK]``) is appended to the
  history and its output is scored against the candidates' item embeddings (the base
  class's ``score_candidates`` / ``score_all`` on the last column).

No leak: the pooled modality vector reads features only at visible positions: real items
that are not ``[MASK]``-ed. Features are looked up from the *input* ids, so a masked
position (and the dream token) has no features at all, and it is also excluded from every
key of the self- and cross-attention. Changing a masked item's features therefore leaves
the loss and the scores unchanged (tested).

Missing modalities: ``modalities`` lists the branches to use; a listed modality whose table
the dataset does not give (ML-100k and the Taobao head have no images) is **dropped**: no
projection, no self-attention, no zero block in the concatenation of Eq. 16. An item whose
row of a given table is all zeros (the encoders' "missing" rows) is not visible in that
modality; a position enters the cross-attention when at least one of its modalities is present.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from graph_encoders.base import MODALITY_KINDS, DatasetSpec, SeqBatch, next_item_cross_entropy, register_model
from graph_encoders.layers import LearnedQueryAttention, ModalityEncoder, init_weights
from graph_encoders.mbht import MBHT, MBHTConfig, newest_window
from llmrec.config import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class DreamRecConfig(MBHTConfig):
    """MBHT's settings plus the modality branch; the report gives no values beyond MBHT's."""

    modalities: list[str] = field(default_factory=lambda: list(MODALITY_KINDS))  # branches, when their table exists
    modality_heads: int = 1  # heads of the within-modality self-attention (Eq. 14-15 give no count)
    behavior_loss_weight: float = 0.0  # weight of the printed behavior head (Eq. 25-26); 0 = off
    user_embedding: bool = True  # E_u of Eq. 7; false = the ablation without it
    modality_dropout: float | None = None  # dropout inside the modality branches (Eq. 12-15); None = dropout
    input_projection: bool = True  # ReLU(S W_proj + b_proj) of Eq. 22; false = S as is (MBHT's sum of embeddings)
    # init of W_proj (the report gives none): "normal" = the project's truncated normal, std 0.02, which shrinks S
    # ~9x at d = 64 (0.02·sqrt(d)·sqrt(1/2)), below E_b; "kaiming" = He normal for ReLU (std sqrt(2/d)):
    # H keeps S's scale
    projection_init: Literal["normal", "kaiming"] = "normal"

    def validate(self) -> None:
        super().validate()
        unknown = [m for m in self.modalities if m not in MODALITY_KINDS]
        if unknown or len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(f"modalities must be distinct entries of {list(MODALITY_KINDS)}, got {self.modalities}")
        if self.modality_heads < 1 or self.hidden_size % self.modality_heads:
            raise ConfigError(f"modality_heads must divide hidden_size {self.hidden_size}, got {self.modality_heads}")
        if self.behavior_loss_weight < 0:
            raise ConfigError(f"behavior_loss_weight must be >= 0, got {self.behavior_loss_weight}")
        if self.modality_dropout is not None and not 0 <= self.modality_dropout < 1:
            raise ConfigError(f"modality_dropout must be in [0, 1) or null, got {self.modality_dropout}")
        if self.projection_init not in ("normal", "kaiming"):
            raise ConfigError(f"projection_init must be normal or kaiming, got {self.projection_init!r}")
        if self.behavior_loss_weight > 0 and self.cut_after_target:
            raise ConfigError("behavior_loss_weight > 0 needs cut_after_target: false "
                              "(labels are the window's behaviors)")


@register_model("dreamrec")
class DreamRec(MBHT):
    """MBHT with DreamRec's user embedding, modality branch and projection layer (module docstring)."""

    config_class = DreamRecConfig
    inputs = frozenset({"items", "behaviors"})
    optional_inputs = frozenset(MODALITY_KINDS)

    def __init__(self, config: DreamRecConfig, spec: DatasetSpec) -> None:
        super().__init__(config, spec)  # MBHT's layers, initialised and seeded exactly as MBHT's
        d = config.hidden_size
        if config.user_embedding and spec.n_users is None:
            raise ValueError("DreamRec needs DatasetSpec.n_users (its user embedding, Eq. 7)")
        tables = {"text": spec.text_table, "image": spec.image_table}
        self.branches = [m for m in config.modalities if tables[m] is not None]
        dropped = [m for m in config.modalities if tables[m] is None]
        if config.modalities and not self.branches:
            raise ValueError(f"DreamRec: modalities {config.modalities} but DatasetSpec has none of their tables "
                             "(fit-graph: set encode: configs/encode/<dataset>.yaml)")
        if dropped:
            logger.info("DreamRec: no %s table, so the %s branch is dropped (not fed zeros)",
                        "/".join(dropped), "/".join(dropped))
        self.users = nn.Embedding(spec.n_users, d) if config.user_embedding else None  # E_u (Eq. 7)
        self.modality_encoders = nn.ModuleDict()
        for name in self.branches:
            table = tables[name].detach().float()
            if table.shape[0] != spec.n_items:
                raise ValueError(f"DreamRec: the {name} table has {table.shape[0]} rows, "
                                 f"the dataset {spec.n_items} items")
            # features are inputs, not weights: not saved with the model (fit-graph / load_run give them again)
            self.register_buffer(f"{name}_features", table, persistent=False)
            self.register_buffer(f"{name}_present", table.abs().sum(1) > 0, persistent=False)
            branch_dropout = config.dropout if config.modality_dropout is None else config.modality_dropout
            self.modality_encoders[name] = ModalityEncoder(table.shape[1], d, config.modality_heads, branch_dropout)
        self.cross_attention = LearnedQueryAttention(d * len(self.branches), d) if self.branches else None
        self.projection = nn.Linear(d, d) if config.input_projection else None  # W_proj, b_proj (Eq. 22)
        for module in (self.users, self.modality_encoders, self.cross_attention, self.projection):
            if module is not None:
                init_weights(module)
        if self.projection is not None and config.projection_init == "kaiming":  # E[ReLU(S W)^2] = E[S^2] (He et al.)
            nn.init.kaiming_normal_(self.projection.weight, nonlinearity="relu")

    # ---- DreamRec's input layer ------------------------------------------------------------
    def modality_vector(self, items: torch.Tensor) -> torch.Tensor:
        """``A_cross`` ``[B, d]`` (Eq. 12-20) from the features of the visible positions of ``items``."""
        unmasked = (items > 0) & (items != self.mask_id)
        index = torch.where(unmasked, items - 1, torch.zeros_like(items))
        outputs, visible_any = [], torch.zeros_like(unmasked)
        for name, encoder in self.modality_encoders.items():
            visible = unmasked & getattr(self, f"{name}_present")[index]
            features = getattr(self, f"{name}_features")[index] * visible[..., None].to(torch.float32)
            outputs.append(encoder(features, visible))  # Eq. 12-15
            visible_any |= visible
        return self.cross_attention(torch.cat(outputs, dim=-1), visible_any)  # Eq. 16-20

    def dream_inputs(self, items: torch.Tensor, behaviors: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """``[B, L, d]``: ``ReLU((E_x + E_u' + E_pos + A_cross) W_proj + b_proj) + E_b`` (Eq. 21-22), LN, dropout.

        With ``input_projection: false`` the sum ``S`` enters as is (the ablation without Eq. 22).
        """
        emb = self.embedding
        length = items.shape[1]
        positions = emb.positions(torch.arange(emb.max_len - length, emb.max_len, device=items.device))
        summed = emb.items(items) + positions[None]  # Eq. 21 without E_u' and A_cross
        if self.users is not None:
            if bool((users < 0).any()) or bool((users >= self.users.num_embeddings).any()):
                raise ValueError(f"user indices must be in [0, {self.users.num_embeddings}) (internal user index)")
            summed = summed + self.users(users)[:, None]
        if self.cross_attention is not None:
            summed = summed + self.modality_vector(items)[:, None]
        projected = torch.relu(self.projection(summed)) if self.projection is not None else summed  # Eq. 22
        hidden = projected + emb.behaviors(behaviors)  # then MBHT's E_b
        return emb.dropout(emb.norm(hidden))

    def encode_dream(self, items: torch.Tensor, behaviors: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """Fused MBHT states ``[B, max_len, d]`` of ``items`` (may hold ``[MASK]``) with DreamRec's input layer."""
        items, behaviors = self.window(items, behaviors)
        return self.encode_sequence(items, behaviors, self.dream_inputs(items, behaviors, users))

    # ---- SequentialRecommender interface -------------------------------------------------
    def encode(self, batch: SeqBatch) -> torch.Tensor:
        """History + the dream token (Eq. 28); the last column is the prediction state."""
        return self.encode_dream(*self.prediction_inputs(batch), batch.users)

    def loss(self, batch: SeqBatch) -> torch.Tensor:
        """§3.7.1 Cloze cross-entropy over all items at the masked positions (+ the optional behavior head)."""
        inputs, behaviors, labels, masked = self.cloze_inputs(batch)
        hidden = self.encode_dream(inputs, behaviors, batch.users)
        loss = next_item_cross_entropy(hidden, labels, masked, self.item_embeddings())
        weight = self.config.behavior_loss_weight
        if weight > 0:  # Eq. 25-26 as printed: z = E_beh h at each masked position, softmax over behaviors
            true_behaviors = newest_window(batch.label_behaviors, self.config.max_len)
            chosen = masked & (true_behaviors > 0)
            logits = hidden[chosen] @ self.behavior_embeddings().T
            loss = loss + weight * F.cross_entropy(logits, true_behaviors[chosen] - 1)
        return loss
