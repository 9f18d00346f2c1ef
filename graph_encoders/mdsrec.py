"""MDSRec: Multimodal Difference Learning for Sequential Recommendation (Li, Guo, Li, Zou; AAAI 2025).

Equations implemented (numbering of the paper, ``../shared/papers/mdsrec.txt``); every
choice where the paper is silent or ambiguous is marked *Choice* and listed in docs/mdsrec.md.

Item relation graph construction (built once, from the **training part only**: each user's
``items[:valid_pos]``, :attr:`DatasetSpec.train_sequences`):

* Eq. 1-2  co-occurrence ``O = Σ_u O^u`` with ``O^u_ij = 1 / D_ij`` (``co_occurrence="count"``:
  ``1``, the paper's "w/o DIS"), :func:`graph_encoders.selection.co_occurrence`.
  *Choice:* ``O`` is **row-normalised** (``Ō = D^{-1} O``; as printed ML-100k rows sum to
  thousands); an item that repeats counts once per user at its nearest occurrence.
* Eq. 3  behavior-signal injection ``Ē^n = μ^n · Ō E^n + E^n`` for every modality
  (``mu_modal``, fixed features, once) and for the ID table (``mu_id``, every forward pass,
  ``E^id`` is learned).
* Eq. 4-5  per modality the top-``H`` cosine kNN graph of ``Ē^m``; *Choice:* the item itself
  is excluded from its ``H`` neighbours and added as a self-loop, and the adjacency is
  row-normalised (``Â^m_ij = 1 / (H + 1)``), so ``Ê^m`` stays on the scale of ``E^id``.
* Eq. 6  one light convolution over the plain ID table, ``Ê^m = Â^m E^id``.

Interest-centralised attention:

* Eq. 7-8  ID channel: ``Ē^id[S^u] + P`` through ``L`` causal Transformer blocks (SASRec's
  pre-norm blocks, :class:`graph_encoders.layers.TransformerEncoder`).
* Eq. 9  one Transformer per modality over ``Ê^m[S^u] + P`` (*Choice:* one position table
  ``P`` shared by all channels, as printed).
* Eq. 10  ``C^m = k-means(E^m)`` on the **raw** features (seeded, :func:`selection.kmeans`).
* Eq. 11  centres ``Ê_c^m = C^m Ê^m``; *Choice:* ``C^m`` holds ``1 / |cluster|``, so the
  centres are cluster **means** of the graph-convolved ID embeddings, not sums.
* Eq. 12-14  the centres are the queries of layer ``l``'s own multi-head attention (its
  ``Q``, ``K``, ``V`` and output map ``U``, all shared) over that layer's input
  ``E_u^{m,l-1}`` (after the block's pre-attention LayerNorm, which is what the layer's
  attention sees). *Choice:* every training position ``t`` trains at once (the project's
  windows), so the centres are computed **per position** and attend only to positions
  ``<= t``; a centre never sees a later item. ``center_positions = S`` computes them (and
  Eq. 18-19, ``L^m``) at ``S`` loss positions per window drawn uniformly without replacement
  each step (training only; ``L^s`` keeps every position; scoring always uses the newest
  position): ``L^m`` becomes a sampled estimate of the same mean, and the centres cost
  ``S / L`` of every-position training. The paper trains one target per sequence, so
  ``S = 1`` is closest to it; ``null`` = every position.
* Eq. 15  ``Ê_c^{m,l} = σ((g^l W_1 + b_1) W_2 + b_2)``, as printed (two linear maps, then σ);
  *Choice:* σ = GELU (``center_activation``; the paper does not name σ).
* Eq. 16  ``E_c^m = Ê_c^{m,L}``.

Fusion and prediction:

* Eq. 17  ``e_u^s = Σ_m ρ_m e^m_{u,t} + e^id_{u,t}`` (Transformer outputs at position ``t``).
* Eq. 18-19  ``ẽ^m_t = e^m_t + γ_t E_c^m``, ``γ_t = softmax((log δ - log(1 - δ) + e^m_t E_c^{mT}) / τ)``:
  the printed noise is **logistic**, not Gumbel (``selection_noise``, default ``logistic``);
  the noise is off in eval mode.
* Eq. 20-22  ``ŷ^s = e_u^s E^{id T}`` (plain ID table), ``ŷ^m = ẽ^m_u Ê^{m T}``,
  ``ŷ = ŷ^s + Σ_m ρ_m ŷ^m``.
* Eq. 23-24  ``L = L^s + Σ_m ρ_m L^m``, each a softmax cross-entropy over all items, averaged
  over the trained positions. *Choice:* ``ρ`` equal over the present modalities (sum 1) and
  ``τ = 1``: the paper gives neither.

A modality whose table is absent (ML-100k has no images) is **dropped**: no graph, no
Transformer, no score channel, and ``ρ`` is shared by the present ones. ``item_embeddings()``
is the ID channel's output table ``E^id`` (Eq. 20); MDSRec has no behavior table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from graph_encoders.base import DatasetSpec, ModelConfig, SeqBatch, SequentialRecommender, register_model
from graph_encoders.layers import MultiHeadAttention, TransformerEncoder, attention_mask, init_weights
from graph_encoders.selection import (
    cluster_mean_matrix,
    co_occurrence,
    kmeans,
    knn_graph,
    relaxed_selection,
    row_normalize,
)
from llmrec.config import ConfigError

log = logging.getLogger(__name__)
MODALITIES = ("text", "image")
DENSE_FRACTION = 0.1  # Ō is kept dense for Eq. 3 on E^id when at least this share of its entries is non-zero
DENSE_MAX_ENTRIES = 16_000_000  # ... and it has at most this many entries (64 MB in float32)
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


@dataclass
class MDSRecConfig(ModelConfig):
    """MDSRec settings; defaults are the paper's where it gives them (see docs/mdsrec.md)."""

    hidden_size: int = 64  # d; the paper uses 300 (and batch 512), 64 keeps CPU training practical
    max_len: int = 50  # window L
    dropout: float = 0.2  # not given in the paper
    use_behaviors: bool = False  # MDSRec reads no behavior types; must stay false
    num_layers: int = 2  # L, Transformer blocks per channel (= centralised-attention layers)
    num_heads: int = 2  # |h|
    inner_size: int | None = None  # feed-forward width and centre-update width; None = hidden_size
    attention_dropout: float | None = None  # None = dropout
    modalities: list[str] = field(default_factory=lambda: ["text", "image"])  # channels to build if the table exists
    modality_weights: dict[str, float] = field(default_factory=dict)  # ρ_m; empty = equal over present modalities
    mu_id: float = 16.0  # μ^id, Eq. 3
    mu_modal: float = 0.2  # μ^m, Eq. 3 (0 = "w/o CRE")
    co_occurrence: Literal["distance", "count"] = "distance"  # Eq. 1 affinity 1/D, or 1 ("w/o DIS")
    top_h: int = 10  # H, neighbours per item in the modal kNN graph (Eq. 5)
    n_centers: int = 32  # k, k-means clusters per modality (Eq. 10)
    kmeans_seed: int = 0
    kmeans_iterations: int = 100
    centralized_attention: bool = True  # false = "w/o ICA" (ẽ^m = e^m)
    center_activation: Literal["gelu", "relu", "sigmoid", "tanh"] = "gelu"  # σ of Eq. 15
    selection_noise: Literal["logistic", "gumbel", "none"] = "logistic"  # Eq. 19 noise (training only)
    temperature: float = 1.0  # τ, Eq. 19
    center_positions: int | None = None  # S loss positions per window with centres (training); None = every one

    def validate(self) -> None:
        super().validate()
        if self.use_behaviors:
            raise ConfigError("use_behaviors must be false for MDSRec (it has no behavior input)")
        if self.num_layers < 1 or self.num_heads < 1:
            raise ConfigError(f"num_layers and num_heads must be >= 1, got {self.num_layers}, {self.num_heads}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        bad = sorted(set(self.modalities) - set(MODALITIES)) + sorted(set(self.modality_weights) - set(MODALITIES))
        if bad or not self.modalities:
            raise ConfigError(f"modalities / modality_weights must name {list(MODALITIES)}, got {bad or '[]'}")
        if any(w < 0 for w in self.modality_weights.values()):
            raise ConfigError(f"modality_weights must be >= 0, got {self.modality_weights}")
        if self.top_h < 0 or self.n_centers < 1 or self.kmeans_iterations < 1:
            raise ConfigError(f"top_h >= 0, n_centers >= 1 and kmeans_iterations >= 1 are required, got "
                              f"{self.top_h}, {self.n_centers}, {self.kmeans_iterations}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")
        if self.center_positions is not None and self.center_positions < 1:
            raise ConfigError(f"center_positions must be >= 1 or null (every position), got {self.center_positions}")


class CenterUpdate(nn.Module):
    """Eq. 12-15 for one layer: the centres attend with that layer's attention, then ``σ((g W_1 + b_1) W_2 + b_2)``.

    ``W_1`` and ``W_2`` are this module's; ``Q``, ``K``, ``V`` and the output map ``U`` (Eq. 14) are the
    Transformer layer's (passed in). ``U``, ``W_1`` and ``W_2`` are linear maps applied in a row, so they
    are composed into one ``[d, d]`` map before touching the ``[B, P, k, d]`` centres (same result, less
    memory). No attention dropout on the centres' attention (the paper mentions none).
    """

    def __init__(self, hidden_size: int, inner_size: int, activation: str) -> None:
        super().__init__()
        self.first = nn.Linear(hidden_size, inner_size)
        self.second = nn.Linear(inner_size, hidden_size)
        self.activation = ACTIVATIONS[activation]()

    def forward(self, attention: MultiHeadAttention, centers: torch.Tensor, keys: torch.Tensor,
                mask: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """``centers`` ``[k, d]`` or ``[B, P, k, d]`` attend over ``keys`` ``[B, L, d]``; ``mask`` ``[B, P, L]`` bool.

        ``valid`` ``[B, L]``: when given with ``P = L``, ``mask`` must be the causal mask of
        :func:`graph_encoders.layers.attention_mask` (``s <= p`` and valid, or ``s = p``), which lets
        the first layer (shared centres) use :meth:`_prefix_heads`.
        """
        b, length, d = keys.shape
        span = mask.shape[1]
        heads = None
        if centers.dim() == 2 and valid is not None and span == length:
            heads = self._prefix_heads(attention, centers, keys, valid)
        if heads is None:
            heads = self._masked_heads(attention, centers, keys, mask)
        weight = self.second.weight @ self.first.weight @ attention.output.weight  # U, W_1, W_2 composed
        bias = self.second.weight @ (self.first.weight @ attention.output.bias + self.first.bias) + self.second.bias
        return self.activation(F.linear(heads.reshape(b, span, -1, d), weight, bias))  # Eq. 14-15

    @staticmethod
    def _masked_heads(attention: MultiHeadAttention, centers: torch.Tensor, keys: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor:
        """Eq. 12-13 for any mask: ``[B, P, k, h, d_h]``.

        Fused attention (the ``[B, h, P, k, L]`` scores are never stored): the ``k`` centres of
        position ``p`` are ``P·k`` queries of one attention over the row's ``L`` keys, each masked
        to the keys position ``p`` may see.
        """
        b, length, _ = keys.shape
        h, dh = attention.num_heads, attention.head_dim
        span, k = mask.shape[1], centers.shape[-2]
        query = attention.query(centers)
        if query.dim() == 2:  # the initial centres are the same at every position
            query = query.view(k, h, dh).transpose(0, 1)[None, :, None].expand(b, h, span, k, dh)
        else:
            query = query.view(b, span, k, h, dh).permute(0, 3, 1, 2, 4)
        key = attention.key(keys).view(b, length, h, dh).transpose(1, 2)
        value = attention.value(keys).view(b, length, h, dh).transpose(1, 2)
        allowed = mask[:, None, :, None, :].expand(b, 1, span, k, length).reshape(b, 1, span * k, length)
        heads = F.scaled_dot_product_attention(query.reshape(b, h, span * k, dh), key, value, attn_mask=allowed)
        return heads.view(b, h, span, k, dh).permute(0, 2, 3, 1, 4)

    @staticmethod
    def _prefix_heads(attention: MultiHeadAttention, centers: torch.Tensor, keys: torch.Tensor,
                      valid: torch.Tensor) -> torch.Tensor | None:
        """Eq. 12-13 for the shared initial centres at every position ``p`` under the causal mask.

        The scores ``s_{ks} = q_k · K_s / sqrt(d_h)`` do not depend on ``p``, so position ``p``'s
        softmax over its keys (valid ``s <= p``, plus ``s = p`` itself) is a ratio of prefix sums:
        ``Σ_s exp(s_{ks} - c) V_s / Σ_s exp(s_{ks} - c)`` with one shift ``c`` per row (the row
        maximum), ``O(L)`` instead of ``O(L^2)`` per centre. Same value as the masked softmax; returns
        None (the caller falls back to :meth:`_masked_heads`) when some position's own largest score
        is more than 60 below ``c``, where ``exp`` would lose precision.
        """
        b, length, _ = keys.shape
        h, dh = attention.num_heads, attention.head_dim
        k = centers.shape[0]
        query = attention.query(centers).view(k, h, dh)
        key = attention.key(keys).view(b, length, h, dh)
        value = attention.value(keys).view(b, length, h, dh)
        scores = torch.einsum("khe,bshe->bhks", query, key) / dh**0.5  # [B, h, k, L]
        keep = valid[:, None, None, :]
        with torch.no_grad():
            shift = scores.amax(-1, keepdim=True)
            own = torch.maximum(scores.masked_fill(~keep, -torch.inf).cummax(-1).values,
                                scores.masked_fill(keep, -torch.inf))  # each position's largest visible score
            if bool((shift - own > 60.0).any()):
                return None
        weights = torch.exp(scores - shift)  # [B, h, k, L]
        seen = weights * keep  # valid keys, summed into every later position
        own_only = weights - seen  # an invalid position sees itself
        value = value.permute(0, 2, 1, 3)[:, :, None]  # [B, h, 1, L, d_h]
        numerator = (seen[..., None] * value).cumsum(3) + own_only[..., None] * value
        denominator = seen.cumsum(-1) + own_only
        heads = numerator / denominator[..., None]  # [B, h, k, P = L, d_h]
        return heads.permute(0, 3, 2, 1, 4)


@register_model("mdsrec")
class MDSRec(SequentialRecommender):
    """ID channel + one interest-centralised channel per present modality; scores summed (Eq. 22)."""

    config_class = MDSRecConfig
    inputs = frozenset({"items"})
    optional_inputs = frozenset({"text", "image"})  # an absent table drops its channel; at least one is needed

    def __init__(self, config: MDSRecConfig, spec: DatasetSpec) -> None:
        tables = {"text": spec.text_table, "image": spec.image_table}
        present = [m for m in config.modalities if tables[m] is not None]
        if not present:
            raise ValueError(f"MDSRec needs a modality table among {config.modalities}; DatasetSpec has none")
        dropped = [m for m in MODALITIES if m not in present]
        if dropped:
            log.info("MDSRec: no %s channel (table absent or not in model.modalities)", "/".join(dropped))
        super().__init__(config, spec)
        sequences = spec.train_sequences
        if sequences is None:
            raise ValueError("MDSRec builds its item graphs from the training part: DatasetSpec.train_sequences "
                             "(each user's items[:valid_pos]) is missing")
        if config.n_centers > spec.n_items:
            raise ConfigError(f"model.n_centers {config.n_centers} exceeds the {spec.n_items} items")
        d, inner = config.hidden_size, config.inner_size or config.hidden_size
        self.modalities = present
        weights = {m: config.modality_weights.get(m, 1.0) if config.modality_weights else 1.0 for m in present}
        total = sum(weights.values())
        if total <= 0:
            raise ConfigError(f"model.modality_weights give the present modalities {present} no weight")
        self.rho = {m: w / total for m, w in weights.items()}  # Σ_m ρ_m = 1 (Eq. 17)

        self.items = nn.Embedding(spec.n_items + 1, d, padding_idx=0)  # E^id (row 0 = padding)
        self.positions = nn.Embedding(config.max_len, d)  # P, shared by every channel (Eq. 7, 9)
        self.dropout = nn.Dropout(config.dropout)
        block = {"hidden_size": d, "num_heads": config.num_heads, "inner_size": inner, "dropout": config.dropout,
                 "attention_dropout": config.attention_dropout, "activation": "relu", "norm_first": True}
        self.id_encoder = TransformerEncoder(config.num_layers, **block)  # Eq. 8
        self.modal_encoders = nn.ModuleDict({m: TransformerEncoder(config.num_layers, **block) for m in present})
        self.center_updates = nn.ModuleDict({
            m: nn.ModuleList(CenterUpdate(d, inner, config.center_activation) for _ in range(config.num_layers))
            for m in present
        })
        init_weights(self)
        self._build_graphs(sequences, {m: tables[m] for m in present})

    # ---- item graphs (Eq. 1-6, 10), from the training part ---------------------------
    def _build_graphs(self, sequences: list[np.ndarray], tables: dict[str, torch.Tensor]) -> None:
        cfg = self.config
        counts = co_occurrence(sequences, self.n_items, distance_weighted=cfg.co_occurrence == "distance")
        normalized = row_normalize(counts)  # Ō (Eq. 2, row-normalised)
        self.register_buffer("co_occurrence_matrix", normalized, persistent=False)
        # Eq. 3 for E^id runs every forward pass: a dense copy when Ō is dense enough (ML-100k: 83 % non-zero),
        # where a dense product is several times faster than the sparse one (same values up to float rounding)
        n = self.n_items
        dense = normalized._nnz() >= DENSE_FRACTION * n * n and n * n <= DENSE_MAX_ENTRIES
        self.register_buffer("co_occurrence_dense", normalized.to_dense() if dense else None, persistent=False)
        for m, table in tables.items():
            if table.shape[0] != self.n_items:
                raise ValueError(f"MDSRec: the {m} table has {table.shape[0]} rows, the dataset {self.n_items} items")
            raw = table.detach().float().cpu()
            injected = raw + cfg.mu_modal * torch.sparse.mm(normalized, raw)  # Ē^m (Eq. 3)
            self.register_buffer(f"relation_graph_{m}", knn_graph(injected, cfg.top_h), persistent=False)  # Â^m
            assignment, _ = kmeans(raw, cfg.n_centers, seed=cfg.kmeans_seed, iterations=cfg.kmeans_iterations)
            self.register_buffer(f"cluster_means_{m}", cluster_mean_matrix(assignment, cfg.n_centers),
                                 persistent=False)  # C^m (Eq. 10), rows = 1/|cluster| (Eq. 11 means)

    def relation_graph(self, modality: str) -> torch.Tensor:
        """``Â^m`` (sparse ``[n_items, n_items]``, row-normalised, self-loops)."""
        return getattr(self, f"relation_graph_{modality}")

    def item_tables(self) -> dict[str, torch.Tensor]:
        """``id_input`` ``Ē^id`` (Eq. 3), ``id`` ``E^id`` and per modality ``Ê^m`` (Eq. 6), all ``[n_items, d]``."""
        plain = self.items.weight[1:]
        co = self.co_occurrence_dense
        injected = co @ plain if co is not None else torch.sparse.mm(self.co_occurrence_matrix, plain)
        tables = {"id": plain, "id_input": plain + self.config.mu_id * injected}
        for m in self.modalities:
            tables[m] = torch.sparse.mm(self.relation_graph(m), plain)
        return tables

    # ---- sequence encoders (Eq. 7-19) --------------------------------------------------
    def _embed(self, table: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        length = items.shape[1]
        if length > self.config.max_len:
            raise ValueError(f"sequence length {length} exceeds the model's max_len {self.config.max_len}")
        padded = torch.cat([table.new_zeros(1, table.shape[1]), table])
        positions = torch.arange(self.config.max_len - length, self.config.max_len, device=items.device)
        return self.dropout(F.embedding(items, padded) + self.positions(positions)[None])  # Eq. 7 / 9

    def _modal_channel(self, modality: str, x: torch.Tensor, valid: torch.Tensor, centers: torch.Tensor,
                       newest_only: bool, positions: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 9 with Eq. 12-16 alongside: ``(E_u^m [B, L, d], E_c^m [B, P, k, d])``, centres per position.

        ``P = L`` (every position, training), ``P = 1`` (the newest position only: scoring needs no
        more) or ``P = S`` (``positions`` ``[B, S]``: the sampled training positions).
        """
        encoder = self.modal_encoders[modality]
        mask = attention_mask(valid, causal=True)  # [B, 1, L, L]
        keep = valid[..., None].to(x.dtype)
        if newest_only:
            center_mask = mask[:, 0, -1:]  # [B, P, L]: centres at t see keys <= t
        elif positions is not None:
            center_mask = mask[:, 0].gather(1, positions[..., None].expand(-1, -1, mask.shape[-1]))
        else:
            center_mask = mask[:, 0]
        running = valid if not newest_only and positions is None else None  # running sums (first layer) need P = L
        x = x * keep
        for block, update in zip(encoder.blocks, self.center_updates[modality], strict=True):
            if self.config.centralized_attention:
                keys = block.norm_attention(x)  # E_u^{m,l-1} as layer l's attention sees it (pre-norm)
                centers = update(block.attention, centers, keys, center_mask, running)  # Eq. 12-15
            x = block(x, mask) * keep
        if centers.dim() == 2:  # w/o ICA: the centres are not used
            centers = centers.expand(x.shape[0], center_mask.shape[1], *centers.shape)
        return encoder.final_norm(x), centers  # Eq. 9, Eq. 16

    def channels(self, batch: SeqBatch, newest_only: bool = False, positions: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(e^s (Eq. 17), {m: ẽ^m} (Eq. 18), item tables)``, each ``[B, L, d]`` (``[B, 1, d]``: newest only).

        With ``positions`` ``[B, S]`` the ``ẽ^m`` are ``[B, S, d]``, at those positions only.
        """
        tables = self.item_tables()
        valid = batch.valid
        fused = self.id_encoder(self._embed(tables["id_input"], batch.items), valid, causal=True)  # Eq. 7-8
        if newest_only:
            fused = fused[:, -1:]
        centred = {}
        for m in self.modalities:
            sequence, centers = self._modal_channel(
                m, self._embed(tables[m], batch.items), valid,
                getattr(self, f"cluster_means_{m}") @ tables[m],  # Eq. 11
                newest_only, positions,
            )
            if newest_only:
                sequence = sequence[:, -1:]
            fused = fused + self.rho[m] * sequence  # Eq. 17
            if positions is not None:
                sequence = sequence.gather(1, positions[..., None].expand(-1, -1, sequence.shape[-1]))
            if self.config.centralized_attention:
                logits = torch.einsum("bld,blkd->blk", sequence, centers)
                noise = (None if not self.training or self.config.selection_noise == "none"
                         else self.config.selection_noise)
                gamma = relaxed_selection(logits, self.config.temperature, noise)  # Eq. 19
                sequence = sequence + torch.einsum("blk,blkd->bld", gamma, centers)  # Eq. 18
            centred[m] = sequence
        return fused, centred, tables

    # ---- the interface -----------------------------------------------------------------
    def encode(self, batch: SeqBatch) -> torch.Tensor:
        """The fused ID-side state ``e^s`` (Eq. 17) at every position."""
        return self.channels(batch)[0]

    def item_embeddings(self) -> torch.Tensor:
        """The ID channel's output table ``E^id`` (Eq. 20)."""
        return self.items.weight[1 : self.n_items + 1]

    def channel_scores(self, batch: SeqBatch) -> dict[str, torch.Tensor]:
        """Per-channel scores over all items at the newest position, ``{"id": ŷ^s, m: ŷ^m}`` (Eq. 20-21)."""
        fused, centred, tables = self.channels(batch, newest_only=True)
        scores = {"id": fused[:, -1] @ tables["id"].T}
        for m, sequence in centred.items():
            scores[m] = sequence[:, -1] @ tables[m].T
        return scores

    def score_all(self, batch: SeqBatch) -> torch.Tensor:
        """``ŷ = ŷ^s + Σ_m ρ_m ŷ^m`` (Eq. 22) over every item."""
        scores = self.channel_scores(batch)
        return scores["id"] + sum(self.rho[m] * scores[m] for m in self.modalities)

    def score_candidates(self, batch: SeqBatch, candidates: torch.Tensor) -> torch.Tensor:
        return self.score_all(batch).gather(1, candidates)

    def loss(self, batch: SeqBatch) -> torch.Tensor:
        """``L = L^s + Σ_m ρ_m L^m`` (Eq. 23-24), softmax cross-entropy per channel at the loss positions."""
        if batch.labels is None or batch.loss_mask is None:
            raise ValueError("loss() needs a training batch (labels and loss_mask)")
        mask = batch.loss_mask & (batch.labels > 0)
        if not bool(mask.any()):
            raise ValueError("batch has no position to train on (loss_mask is empty)")
        positions = chosen = None
        if self.training and self.config.center_positions is not None:
            positions, chosen = self.sample_center_positions(mask)
        fused, centred, tables = self.channels(batch, positions=positions)
        targets = batch.labels[mask] - 1
        total = F.cross_entropy(fused[mask] @ tables["id"].T, targets)
        if positions is not None:  # L^m at the sampled positions
            mask, targets = chosen, batch.labels.gather(1, positions)[chosen] - 1
        for m, sequence in centred.items():
            total = total + self.rho[m] * F.cross_entropy(sequence[mask] @ tables[m].T, targets)
        return total

    def sample_center_positions(self, loss_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``center_positions`` loss positions per window, uniformly without replacement (global torch RNG).

        Returns ``(positions [B, S], chosen [B, S])``: ``chosen`` is False where a window has fewer
        than ``S`` loss positions (those slots point at other positions and carry no loss).
        """
        count = min(self.config.center_positions, loss_mask.shape[1])
        draw = torch.rand(loss_mask.shape, device=loss_mask.device).masked_fill(~loss_mask, 2.0)
        positions = draw.topk(count, dim=1, largest=False).indices
        return positions, loss_mask.gather(1, positions)
