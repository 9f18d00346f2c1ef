"""BivRec: Bidirectional View-based Multimodal Sequential Recommendation (Hu et al.).

Paper: ``../shared/papers/bivrec.txt`` (equation numbers below are the paper's). Every choice
where the paper is silent or ambiguous is marked *Choice* and listed in docs/bivrec.md.

Two towers of one architecture (:class:`InterestTower`), one per **view** (``views``):

* ``id``: ``F`` = a trainable item table; ``mm``: ``F`` = the frozen item features (the present
  tables of ``modalities``, concatenated, §2.1) through one linear projection. The same table
  scores the next item in that view (Eq. 19-20).
* Multi-scale interest embedding: ``E_1 = F + E_pos`` (Eq. 1); per scale ``s`` of ``scales``,
  non-overlapping patches of ``s`` items summed, plus a scale position table ``P_s`` (Eq. 2);
  the scale-1 tokens and every scale's patches concatenated into ``N'`` tokens (Eq. 3).
  *Choice:* ``scales`` lists the scales added to scale 1 (``[4, 8]`` → scales 1, 4, 8); patches
  are aligned to the newest item (the window's last column), so at scoring time every patch is
  complete and the newest patch holds the newest items.
* Multi-scale feature interaction: ``num_layers`` pre-norm blocks of Gaussian attention,
  ``softmax(QK^T / sqrt(d)) ⊙ G`` renormalised, ``G_ij ∝ exp(-D_ij^2 / σ^2)`` with a trainable
  ``σ = softplus(ρ)`` per layer initialised to ``sigma_init`` (Eq. 4-6,
  :class:`graph_encoders.interests.GaussianAttentionBlock`). A patch's position is the mean of
  its items' positions.
* Interest clustering, one :class:`graph_encoders.interests.ClusterAttention` per entry of
  ``interests`` (``[24, 4]``: 24 interests from the tokens, then 4 from those 24): Gumbel-softmax
  over the interests with ``τ``, hard top-``F`` with the straight-through estimator,
  ``v_k = c_k + W_a Â W_v x`` (Eq. 7-12).
* Cross-view learning (both views trained): a trainable average pooling of each view's
  interests (softmax weights over ``K``, initialised uniform; Eq. 14), a two-layer GELU MLP per
  view (Eq. 15), a symmetric InfoNCE with a learnable temperature ``β`` (Eq. 16-17; *Choice:* on
  L2-normalised ``ĥ``, CLIP-style), and the allocation loss ``-Σ_k cos(A^m[k,:], A^id[k,:])``
  over the straight-through assignments (Eq. 18, averaged over the clustering stages).
* Training (Eq. 19-22): at every loss position the interest nearest the target item's embedding
  is chosen, then a softmax over **all** items (the paper samples; these catalogs are small).
  ``rec_loss: max_score`` (ours) trains the softmax of the score ``max_k v_k · x_i`` instead.
  ``L = L_ID + sg(L_ID / L_MM) L_MM + λ1 L_cl + λ2 L_A``. Scoring: the maximum over the score
  view's interests of ``v_k · x_i``.

Causal setting: the project trains every position of a window at once. A token may attend to a
token only if the latter's newest item is not later than its own (so a token depends only on its
own and earlier items); the interests of position ``t`` collect only the tokens whose newest item
is ``<= t`` (a cluster assignment is a softmax over interests, so it does not depend on the other
tokens, and each position's interests are a masked sum of one assignment). A patch is part of
position ``t``'s interests only once complete. The cross-view losses are taken once per training
row, at its newest position (the paper: once per user sequence; *Choice*).

Variants (Table 1): ``views: [id, mm]`` + ``score_view: id`` is BivRec-ID, ``score_view: mm``
BivRec-MM; ``views: [id]`` is PureID, ``views: [mm]`` (``score_view: mm``) PureMM.
``item_embeddings()`` is the ID view's item table (PureMM: the projected feature table); BivRec
has no behavior input and exports no behavior table.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from graph_encoders.base import (
    MODALITY_KINDS,
    DatasetSpec,
    ModelConfig,
    SeqBatch,
    SequentialRecommender,
    register_model,
)
from graph_encoders.interests import ClusterAttention, GaussianAttentionBlock
from graph_encoders.layers import init_weights
from llmrec.config import ConfigError

log = logging.getLogger(__name__)
VIEWS = ("id", "mm")


@dataclass
class BivRecConfig(ModelConfig):
    """BivRec settings; defaults are appendix A.4's for MovieLens where it gives them (docs/bivrec.md)."""

    hidden_size: int = 64  # D^id = D^m; the paper uses 256, 64 keeps CPU training practical
    max_len: int = 50  # window N
    dropout: float = 0.2  # not given in the paper
    use_behaviors: bool = False  # BivRec reads no behavior types; must stay false
    views: list[Literal["id", "mm"]] = field(default_factory=lambda: ["id", "mm"])  # towers trained
    score_view: Literal["id", "mm"] = "id"  # the view that scores: BivRec-ID / BivRec-MM
    modalities: list[str] = field(default_factory=lambda: list(MODALITY_KINDS))  # concatenated when present
    scales: list[int] = field(default_factory=lambda: [4, 8])  # patch sizes added to scale 1 (Eq. 2-3)
    num_layers: int = 1  # M, Gaussian attention layers (not given)
    num_heads: int = 2  # heads of the Gaussian attention (not given; omitted "for simplicity")
    inner_size: int | None = None  # feed-forward width; None = hidden_size
    sigma_init: float = 10.0  # initial σ of Eq. 5, in item positions (not given)
    interests: list[int] = field(default_factory=lambda: [24, 4])  # K per clustering stage (A.4, MovieLens)
    top_f: int = 1  # F of Eq. 8
    temperature: float = 1.0  # τ of the Gumbel softmax (Eq. 9)
    selection_noise: Literal["gumbel", "none"] = "gumbel"  # "none" = the "sh" ablation; training only
    hard_assignment: bool = True  # straight-through top-F (Eq. 10); false = the "ss" ablation
    interest_pooling: Literal["sum", "mean"] = "sum"  # Eq. 12 as printed (sum) or per-interest mean
    # std of the truncated normal the interest tokens c_k are drawn from (§2.4.2 gives no scale; 0.02 as every other
    # weight here). 1.0 puts them at the scale of the LayerNorm-ed tokens they are compared with (docs/bivrec.md lead 5)
    interest_init_std: float = 0.02
    # leave out interests that received no token: a later clustering stage does not see the previous stage's empty
    # interests, and Eq. 19 (training and scoring) picks among the non-empty ones; false: the paper as printed
    skip_empty_interests: bool = False
    # add the newest item's token after the Gaussian attention (its scale-1 token at the query position) as one
    # more interest, read by Eq. 14, Eq. 19 and the max score: a recency path as SASRec's last position
    # (*ours*, not the paper's; docs/bivrec.md "Leads" 6); false: the paper's interests only
    recency_interest: bool = False
    # what the recommendation loss trains: "nearest" = Eq. 19-21 (the interest nearest the target, which training
    # can see and scoring cannot); "max_score" = the softmax over the score itself, max_k v_k · x_i for every item
    # (*ours*, not the paper's: training and scoring then rank by the same function; docs/bivrec.md)
    rec_loss: Literal["nearest", "max_score"] = "nearest"
    contrast_weight: float = 0.5  # λ1 (Eq. 22)
    allocation_weight: float = 0.3  # λ2 (Eq. 22)
    beta_init: float = 0.07  # initial learnable temperature β (Eq. 17)
    balance_views: bool = True  # sg(L_ID / L_MM) on L_MM (Eq. 22); false = plain sum

    def validate(self) -> None:
        super().validate()
        if self.use_behaviors:
            raise ConfigError("use_behaviors must be false for BivRec (it has no behavior input)")
        if not self.views or len(set(self.views)) != len(self.views):
            raise ConfigError(f"views must be distinct entries of {list(VIEWS)}, got {self.views}")
        if self.score_view not in self.views:
            raise ConfigError(f"score_view {self.score_view!r} is not among the trained views {self.views}")
        unknown = [m for m in self.modalities if m not in MODALITY_KINDS]
        if unknown or len(set(self.modalities)) != len(self.modalities) or ("mm" in self.views and not self.modalities):
            raise ConfigError(f"modalities must be distinct entries of {list(MODALITY_KINDS)}, got {self.modalities}")
        if len(set(self.scales)) != len(self.scales) or any(not 2 <= s <= self.max_len for s in self.scales):
            raise ConfigError(f"scales must be distinct patch sizes in 2..max_len ({self.max_len}), got {self.scales}")
        if self.num_layers < 0 or self.num_heads < 1 or self.hidden_size % self.num_heads:
            raise ConfigError(f"num_layers >= 0 and num_heads >= 1 dividing hidden_size {self.hidden_size} are "
                              f"required, got {self.num_layers}, {self.num_heads}")
        if not self.interests or any(k < 1 for k in self.interests):
            raise ConfigError(f"interests must list positive interest counts, got {self.interests}")
        if not self.interest_init_std > 0:
            raise ConfigError(f"interest_init_std must be positive, got {self.interest_init_std}")
        if not 1 <= self.top_f <= min(self.interests):
            raise ConfigError(f"top_f must be in 1..{min(self.interests)} (the smallest of interests), "
                              f"got {self.top_f}")
        for key in ("sigma_init", "temperature", "beta_init"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be positive, got {getattr(self, key)}")
        if self.contrast_weight < 0 or self.allocation_weight < 0:
            raise ConfigError(f"contrast_weight and allocation_weight must be >= 0, got "
                              f"{self.contrast_weight}, {self.allocation_weight}")


@dataclass
class ViewOutput:
    """One view's forward pass: interests per query position, the newest position's assignments, item table."""

    interests: torch.Tensor  # [B, P, K, d], P = L (every position) or 1 (the newest)
    allocations: list[torch.Tensor]  # per clustering stage, the newest position's Â [B, N_stage, K_stage]
    table: torch.Tensor  # [n_items, d], the view's item embeddings
    present: torch.Tensor  # [B, P, K] bool: interests that received a token (all True unless skip_empty_interests;
    # with recency_interest the last interest is present where its position is real)


class InterestTower(nn.Module):
    """One view: multi-scale embedding (Eq. 1-3), Gaussian attention (Eq. 4-6), clustering (Eq. 7-12), Eq. 14-15."""

    def __init__(self, config: BivRecConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.max_len, self.scales = config.max_len, list(config.scales)
        self.positions = nn.Embedding(config.max_len, d)  # E_pos (Eq. 1)
        self.scale_positions = nn.ModuleList(nn.Embedding(math.ceil(config.max_len / s), d) for s in self.scales)  # P_s
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            GaussianAttentionBlock(d, config.num_heads, config.inner_size or d, config.dropout, config.sigma_init)
            for _ in range(config.num_layers))
        noise = None if config.selection_noise == "none" else config.selection_noise
        self.stages = nn.ModuleList(
            ClusterAttention(d, k, config.top_f, config.temperature, noise, config.hard_assignment,
                             config.interest_pooling, config.interest_init_std)
            for k in config.interests)
        self.skip_empty, self.recency = config.skip_empty_interests, config.recency_interest
        n_final = config.interests[-1] + int(config.recency_interest)
        self.pool_logits = nn.Parameter(torch.zeros(n_final))  # f_AVG: uniform at start (Eq. 14)
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))  # Eq. 15

    def tokens(self, items: torch.Tensor, valid: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x [B, N', d], token_valid [B, N'], positions [B, N'], ends [N'])`` (Eq. 1-3).

        ``items`` ``[B, L, d]`` is ``F`` along the window. ``ends[j]`` is the column of token
        ``j``'s newest item (the same for every row: patches are aligned to the last column).
        """
        b, length, d = items.shape
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds the model's max_len {self.max_len}")
        device = items.device
        columns = torch.arange(length, device=device)
        first = (items + self.positions(columns + self.max_len - length)[None]) * valid[..., None]  # Eq. 1
        parts, valids = [first], [valid]
        positions, ends = [columns.to(items.dtype).expand(b, length)], [columns]
        for s, table in zip(self.scales, self.scale_positions, strict=True):
            n_patches = math.ceil(length / s)
            pad = n_patches * s - length  # the oldest patch is cut at the window's left edge
            summed = F.pad(first, (0, 0, pad, 0)).view(b, n_patches, s, d).sum(2)  # merge(Unfold(E_1)) (Eq. 2)
            members = F.pad(valid, (pad, 0)).view(b, n_patches, s)
            present = members.any(-1)
            newest_first = torch.arange(n_patches - 1, -1, -1, device=device)
            parts.append((summed + table(newest_first)[None]) * present[..., None])  # + P_s (Eq. 2)
            valids.append(present)
            spots = F.pad(columns.to(items.dtype), (pad, 0)).view(n_patches, s)
            weight = members.to(items.dtype)
            positions.append((weight * spots).sum(-1) / weight.sum(-1).clamp(min=1.0))  # mean item position
            ends.append(torch.arange(1, n_patches + 1, device=device) * s - 1 - pad)
        return self.dropout(torch.cat(parts, 1)), torch.cat(valids, 1), torch.cat(positions, 1), torch.cat(ends)

    def forward(self, items: torch.Tensor, valid: torch.Tensor, newest_only: bool
                ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """``(V [B, P, K, d], newest allocations, present [B, P, K])``: the interests of every position (or the
        newest only); ``present`` marks interests that received a token (all True unless ``skip_empty``).
        With ``recency`` the last of the ``K`` is the query position's own token (present where it is real)."""
        x, token_valid, positions, ends = self.tokens(items, valid)
        n = x.shape[1]
        causal = ends[None, :] <= ends[:, None]  # key j's newest item is not later than query i's
        eye = torch.eye(n, dtype=torch.bool, device=x.device)
        mask = ((causal[None] & token_valid[:, None, :]) | eye)[:, None]  # [B, 1, N', N']
        keep = token_valid[..., None].to(x.dtype)
        for block in self.blocks:  # Eq. 4-6
            x = block(x, positions, mask) * keep
        length = items.shape[1]
        queries = torch.arange(length - 1 if newest_only else 0, length, device=x.device)
        visible = (ends[None, :] <= queries[:, None])[None] & token_valid[:, None, :]  # [B, P, N']
        interests, allocation = self.stages[0](x, visible)  # Eq. 7-12, [B, P, K_1, d]
        allocations = [allocation * keep]  # the newest position sees every real token
        present = None  # [B, P, K]: interests that received a token, tracked only with skip_empty
        if self.skip_empty:
            present = (visible.to(x.dtype) @ allocation.detach()) > 0  # hard assignments: 0/1 sums
        for stage in self.stages[1:]:  # multi-stage clustering: the previous interests are the tokens
            b, p, k, d = interests.shape
            tokens_seen = None if present is None else present.reshape(b * p, 1, k)
            interests, allocation = stage(interests.reshape(b * p, k, d), tokens_seen)
            interests = interests.view(b, p, -1, d)
            if tokens_seen is not None:
                allocation = allocation * tokens_seen.transpose(1, 2).to(allocation.dtype)  # empty tokens: no row
                present = (tokens_seen.to(x.dtype) @ allocation.detach()).view(b, p, -1) > 0
            allocations.append(allocation.view(b, p, k, -1)[:, -1])
        if present is None:
            present = torch.ones(interests.shape[:3], dtype=torch.bool, device=x.device)
        if self.recency:  # scale-1 tokens come first in x: token t is column t's item (Eq. 3)
            newest = x[:, queries].unsqueeze(2)  # [B, P, 1, d]
            interests = torch.cat([interests, newest], 2)
            present = torch.cat([present, token_valid[:, queries, None]], 2)
        return interests, allocations, present

    def pooled(self, interests: torch.Tensor) -> torch.Tensor:
        """``h = f_AVG(V)`` (Eq. 14): softmax-weighted mean over the interests ``[..., K, d] -> [..., d]``."""
        return torch.einsum("k,...kd->...d", torch.softmax(self.pool_logits, 0), interests)


def nearest_interest_loss(interests: torch.Tensor, targets: torch.Tensor, table: torch.Tensor,
                          present: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 19-21: the interest nearest the target's embedding, softmax cross-entropy over all items.

    ``interests`` ``[M, K, d]``, ``targets`` ``[M]`` (0-based), ``table`` ``[n_items, d]``; ``present``
    ``[M, K]`` bool limits Eq. 19's choice to those interests.
    """
    target = table[targets]
    similarity = torch.einsum("mkd,md->mk", interests, target)
    if present is not None:
        similarity = similarity.masked_fill(~present, float("-inf"))
    chosen = similarity.argmax(-1)  # Eq. 19
    nearest = interests[torch.arange(len(targets), device=targets.device), chosen]
    return F.cross_entropy(nearest @ table.T, targets)  # Eq. 20-21


def max_score_loss(interests: torch.Tensor, targets: torch.Tensor, table: torch.Tensor,
                   present: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax cross-entropy over all items of the score itself, ``max_k v_k · x_i`` (``rec_loss: max_score``;
    *ours*, not the paper's Eq. 19-21). Shapes as :func:`nearest_interest_loss`; ``present`` ``[M, K]`` limits the
    max to those interests. With one interest it equals Eq. 19-21."""
    return F.cross_entropy(max_over_interests(torch.einsum("mkd,nd->mkn", interests, table), present), targets)


def max_over_interests(scores: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
    """``[..., K, n] -> [..., n]``: each item's best interest among those ``present`` ``[..., K]`` marks (None: all)."""
    if present is not None:
        scores = scores.masked_fill(~present[..., None], float("-inf"))
    return scores.amax(-2)


def allocation_similarity_loss(first: list[torch.Tensor], second: list[torch.Tensor]) -> torch.Tensor:
    """Eq. 18: ``-Σ_k cos(A^m[k,:], A^id[k,:])`` per row, mean over rows and clustering stages.

    Each entry is one stage's assignment ``[B, N, K]``; interest ``k``'s row is ``[:, :, k]``. An interest
    that received no token in either view (a zero row: the cosine is undefined and its gradient unbounded)
    contributes 0 and no gradient (*Choice*; ``F.cosine_similarity``'s ``eps`` would give it a 1/eps gradient).
    """
    losses = []
    for a, b in zip(first, second, strict=True):
        dot, norm_a, norm_b = (a * b).sum(1), a.square().sum(1), b.square().sum(1)
        both = (norm_a > 0) & (norm_b > 0)
        cosine = torch.where(both, dot / torch.where(both, norm_a * norm_b, torch.ones_like(dot)).sqrt(), 0.0)
        losses.append(-cosine.sum(-1).mean())
    return torch.stack(losses).mean()


@register_model("bivrec")
class BivRec(SequentialRecommender):
    """ID and multimodal interest towers trained jointly; scored by one view (module docstring)."""

    config_class = BivRecConfig
    inputs = frozenset({"items"})
    optional_inputs = frozenset(MODALITY_KINDS)  # the multimodal view's tables; absent ones are dropped

    def __init__(self, config: BivRecConfig, spec: DatasetSpec) -> None:
        super().__init__(config, spec)
        d = config.hidden_size
        self.views = list(config.views)
        if "id" in self.views:
            self.id_items = nn.Embedding(spec.n_items + 1, d, padding_idx=0)  # F, ID view (row 0 = padding)
        self.modalities: list[str] = []
        if "mm" in self.views:
            tables = {"text": spec.text_table, "image": spec.image_table}
            self.modalities = [m for m in config.modalities if tables[m] is not None]
            if not self.modalities:
                raise ValueError(f"BivRec's multimodal view needs a table among {config.modalities}; DatasetSpec "
                                 "has none (fit-graph: set encode: configs/encode/<dataset>.yaml)")
            dropped = [m for m in config.modalities if m not in self.modalities]
            if dropped:
                log.info("BivRec: no %s table, so the multimodal view reads %s only", "/".join(dropped),
                         "+".join(self.modalities))
            for m in self.modalities:
                if tables[m].shape[0] != spec.n_items:
                    raise ValueError(f"BivRec: the {m} table has {tables[m].shape[0]} rows, "
                                     f"the dataset {spec.n_items} items")
            features = torch.cat([tables[m].detach().float() for m in self.modalities], dim=1)
            # features are inputs, not weights: not saved with the model (fit-graph / load_run give them again)
            self.register_buffer("mm_features", features, persistent=False)
            self.mm_projection = nn.Linear(features.shape[1], d)  # F^m = W features + b
        self.towers = nn.ModuleDict({view: InterestTower(config) for view in self.views})
        init_weights(self)
        if len(self.views) == 2:  # β = 1 / exp(logit scale), learnable (Eq. 17)
            self.contrast_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.beta_init)))

    # ---- views ---------------------------------------------------------------------------
    def item_table(self, view: str) -> torch.Tensor:
        """``[n_items, d]`` item embeddings of ``view``: the ID table or the projected features."""
        if view == "id":
            return self.id_items.weight[1 : self.n_items + 1]
        return self.mm_projection(self.mm_features)

    def view_output(self, view: str, batch: SeqBatch, newest_only: bool = False) -> ViewOutput:
        table = self.item_table(view)
        padded = torch.cat([table.new_zeros(1, table.shape[1]), table])
        interests, allocations, present = self.towers[view](F.embedding(batch.items, padded), batch.valid, newest_only)
        return ViewOutput(interests, allocations, table, present)

    # ---- the interface -------------------------------------------------------------------
    def encode(self, batch: SeqBatch) -> torch.Tensor:
        """``h`` (Eq. 14) of the score view at every position ``[B, L, d]`` (a summary; scoring uses every interest)."""
        view = self.config.score_view
        return self.towers[view].pooled(self.view_output(view, batch).interests)

    def item_embeddings(self) -> torch.Tensor:
        """The ID view's item table ``F`` (PureMM, ``views: [mm]``: the projected feature table)."""
        return self.item_table("id" if "id" in self.views else "mm")

    def score_all(self, batch: SeqBatch) -> torch.Tensor:
        """``max_k v_k · x_i`` over the score view's interests at the newest position ``[B, n_items]``."""
        out = self.view_output(self.config.score_view, batch, newest_only=True)
        return self._max_over_interests(torch.einsum("bkd,nd->bkn", out.interests[:, -1], out.table), out)

    def score_candidates(self, batch: SeqBatch, candidates: torch.Tensor) -> torch.Tensor:
        out = self.view_output(self.config.score_view, batch, newest_only=True)
        return self._max_over_interests(torch.einsum("bkd,bcd->bkc", out.interests[:, -1], out.table[candidates]), out)

    def _max_over_interests(self, scores: torch.Tensor, out: ViewOutput) -> torch.Tensor:
        """``[B, K, n] -> [B, n]``: the best interest per item, among the present ones with ``skip_empty_interests``."""
        return max_over_interests(scores, out.present[:, -1] if self.config.skip_empty_interests else None)

    def losses(self, batch: SeqBatch) -> dict[str, torch.Tensor]:
        """The terms of Eq. 22: ``rec_<view>`` (Eq. 19-21) per view, ``contrast`` (Eq. 16-17),
        ``allocation`` (Eq. 18)."""
        if batch.labels is None or batch.loss_mask is None:
            raise ValueError("loss() needs a training batch (labels and loss_mask)")
        mask = batch.loss_mask & (batch.labels > 0)
        if not bool(mask.any()):
            raise ValueError("batch has no position to train on (loss_mask is empty)")
        targets = batch.labels[mask] - 1
        outputs = {view: self.view_output(view, batch) for view in self.views}
        rec_loss = max_score_loss if self.config.rec_loss == "max_score" else nearest_interest_loss
        terms = {f"rec_{view}": rec_loss(out.interests[mask], targets, out.table, out.present[mask])
                 for view, out in outputs.items()}
        if len(self.views) == 2:
            projected = []
            for view in VIEWS:  # the newest position of every row: its whole window (Eq. 14-15)
                tower = self.towers[view]
                projected.append(F.normalize(tower.head(tower.pooled(outputs[view].interests[:, -1])), dim=-1))
            ids, mms = projected
            logits = mms @ ids.T * self.contrast_logit_scale.exp().clamp(max=100.0)  # ĥ^m · ĥ^id / β
            labels = torch.arange(len(logits), device=logits.device)
            terms["contrast"] = F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)  # Eq. 16-17
            terms["allocation"] = allocation_similarity_loss(outputs["mm"].allocations, outputs["id"].allocations)
        return terms

    def loss(self, batch: SeqBatch) -> torch.Tensor:
        """``L = L_ID + sg(L_ID / L_MM) L_MM + λ1 L_cl + λ2 L_A`` (Eq. 22); one view: its ``L_Rec``."""
        terms = self.losses(batch)
        if len(self.views) == 1:
            return terms[f"rec_{self.views[0]}"]
        rec_id, rec_mm = terms["rec_id"], terms["rec_mm"]
        weight = (rec_id / rec_mm).detach() if self.config.balance_views else 1.0
        cfg = self.config
        return (rec_id + weight * rec_mm + cfg.contrast_weight * terms["contrast"]
                + cfg.allocation_weight * terms["allocation"])
