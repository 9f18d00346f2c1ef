"""TMF modality fusion: All-Modality Self-Attention (AMSA) then Cross-Modality Attention (CMA).

Implements TMF (Ma et al., 2024) section 4.1, Fig. 2:

* Eq. 5  ``v_M = CONCAT(v_image, v_text, v_graph)``, ``d = d_img + d_txt + d_g``.
* Eq. 6  ``v_amsa = softmax(Q K^T / sqrt(d_head)) V`` over the N items of one prompt.
* Eq. 7  ``v_cma_1 = softmax(q(v_amsa) k(v_image)^T / sqrt(d_head)) v(v_text)``.
* Eq. 8  ``v_cma_o = softmax(q(v_cma_1) k(v_text)^T / sqrt(d_head)) v(v_image)``;
  the rows of ``v_cma_o`` are the fused item representations.

Choices where the paper is ambiguous (see docs/tmf_fusion.md):

* Eq. 6-8 are printed without projections. We give every attention learned
  Q/K/V projections (as in [44], which the paper cites for its multi-head
  variants); ``qkv_projections=False`` gives the printed projection-free form.
* Scale: Eq. 6 prints ``sqrt(d_T)``, Eq. 7-8 ``sqrt(d)``; we divide by the
  square root of the width the dot product runs over (per head).
* Image and text are brought to the common width ``d_v = fused_dim`` by a
  linear map only when their width differs from it (identity otherwise).
* The AMSA output is projected to ``d_v`` by one linear layer (the "project
  v_amsa into the same dimension" step); with ``use_cma=False`` (Table 3 row
  "+ Item ID tokens (AMSA)") that projection is the output.
* Missing modalities: a key item takes part in AMSA when any of its modalities
  is present, in CMA when both image and text are present. A query with no
  valid key gets zeros from AMSA and keeps its own query in CMA, so an absent
  modality degrades CMA to the AMSA path instead of producing NaNs or zeros.
* ``enabled=False`` is no fusion at all: the output is the graph (ID) embedding of each item, unchanged
  (``fused_dim`` = graph width). With the item adaptor after it, that is LLaRA's hybrid item
  representation (one projector on a sequential recommender's item embedding), the baseline TMF is
  compared with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

MODALITIES = ("image", "text", "graph")  # order of modality_mask's last axis


@dataclass
class FusionConfig:
    """Settings of :class:`ModalityFusion` (the paper's Psi_f)."""

    n_heads: int = 1
    """Attention heads in AMSA and CMA; 1 is the paper's single-head form."""
    use_cma: bool = True
    """False: the "+ Item ID tokens (AMSA)" ablation, AMSA output projected to fused_dim."""
    dropout: float = 0.0
    """Dropout on attention weights (training only)."""
    fused_dim: int | None = None
    """Output width d_v; default max(image_dim, text_dim) (the paper's d_v when they agree)."""
    amsa_dim: int | None = None
    """Width of AMSA's Q/K/V projections; default d = image_dim + text_dim + graph_dim."""
    qkv_projections: bool = True
    """False: Eq. 6-8 exactly as printed, attention over the raw embeddings."""
    enabled: bool = True
    """False: no fusion, each item's graph (ID) embedding passes through unchanged (LLaRA's item input)."""

    def validate(self) -> None:
        if self.n_heads < 1:
            raise ValueError(f"fusion.n_heads must be >= 1, got {self.n_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"fusion.dropout must be in [0, 1), got {self.dropout}")
        for name in ("fused_dim", "amsa_dim"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"fusion.{name} must be a positive integer or null, got {value}")
        if not self.qkv_projections and self.amsa_dim is not None:
            raise ValueError("fusion.amsa_dim needs qkv_projections=true (without projections AMSA runs at width d)")

    def __post_init__(self) -> None:
        self.validate()


class MaskedAttention(nn.Module):
    """Multi-head ``softmax(Q K^T / sqrt(d_head)) V`` over N items with a boolean key mask.

    ``mask[b, i, j]`` True means query ``i`` may attend to key ``j``. Queries
    with no allowed key return ``fallback[b, i]`` (their softmax would be 0/0).
    """

    def __init__(self, query_dim: int, key_dim: int, value_dim: int, width: int,
                 n_heads: int, dropout: float, project: bool) -> None:
        super().__init__()
        if width % n_heads:
            raise ValueError(f"attention width {width} is not divisible by n_heads={n_heads}")
        if project:
            self.query = nn.Linear(query_dim, width)
            self.key = nn.Linear(key_dim, width)
            self.value = nn.Linear(value_dim, width)
        else:
            if not query_dim == key_dim == value_dim == width:
                raise ValueError(
                    f"attention without projections needs equal widths, got query {query_dim}, "
                    f"key {key_dim}, value {value_dim}, output {width}")
            self.query = self.key = self.value = nn.Identity()
        self.n_heads = n_heads
        self.width = width
        self.dropout = dropout

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, n_items, _ = x.shape
        return x.view(batch, n_items, self.n_heads, self.width // self.n_heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                mask: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
        has_key = mask.any(dim=-1)  # [B, N]
        # Rows without any key attend everywhere (finite softmax, finite gradients); replaced below.
        safe_mask = mask | ~has_key.unsqueeze(-1)
        out = F.scaled_dot_product_attention(
            self._heads(self.query(query)), self._heads(self.key(key)), self._heads(self.value(value)),
            attn_mask=safe_mask.unsqueeze(1), dropout_p=self.dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(query.shape[0], query.shape[1], self.width)
        return torch.where(has_key.unsqueeze(-1), out, fallback)


def _align(in_dim: int, out_dim: int) -> nn.Module:
    return nn.Identity() if in_dim == out_dim else nn.Linear(in_dim, out_dim)


class ModalityFusion(nn.Module):
    """AMSA (Eq. 5-6) followed by CMA (Eq. 7-8): ``[B, N, d_*] x3 -> [B, N, fused_dim]``."""

    def __init__(self, cfg: FusionConfig, image_dim: int, text_dim: int, graph_dim: int) -> None:
        super().__init__()
        for name, dim in (("image_dim", image_dim), ("text_dim", text_dim), ("graph_dim", graph_dim)):
            if not isinstance(dim, int) or dim < 1:
                raise ValueError(f"ModalityFusion: {name} must be a positive integer, got {dim!r} "
                                 "(give an absent modality width >= 1, zero rows and modality_mask False)")
        self.cfg = cfg
        self.input_dims = (image_dim, text_dim, graph_dim)
        if not cfg.enabled:  # no parameters: the graph embedding is the output
            self.fused_dim = graph_dim
            return
        concat_dim = image_dim + text_dim + graph_dim  # d of Eq. 5
        self.fused_dim = cfg.fused_dim or max(image_dim, text_dim)
        amsa_dim = cfg.amsa_dim or concat_dim
        if amsa_dim % cfg.n_heads:
            raise ValueError(f"ModalityFusion: AMSA width {amsa_dim} (d = {image_dim}+{text_dim}+{graph_dim} "
                             f"unless fusion.amsa_dim is set) is not divisible by n_heads={cfg.n_heads}")
        if cfg.use_cma and self.fused_dim % cfg.n_heads:
            raise ValueError(f"ModalityFusion: fused_dim {self.fused_dim} is not divisible by n_heads={cfg.n_heads}")
        project = cfg.qkv_projections
        self.amsa = MaskedAttention(concat_dim, concat_dim, concat_dim, amsa_dim, cfg.n_heads, cfg.dropout, project)
        self.amsa_to_fused = nn.Linear(amsa_dim, self.fused_dim)
        if cfg.use_cma:
            d_v = self.fused_dim
            self.image_to_fused = _align(image_dim, d_v)
            self.text_to_fused = _align(text_dim, d_v)
            self.cma_image_text = MaskedAttention(d_v, d_v, d_v, d_v, cfg.n_heads, cfg.dropout, project)  # Eq. 7
            self.cma_text_image = MaskedAttention(d_v, d_v, d_v, d_v, cfg.n_heads, cfg.dropout, project)  # Eq. 8
        logger.debug("ModalityFusion: dims image=%d text=%d graph=%d -> d=%d, amsa=%d, fused=%d, cma=%s, heads=%d",
                     image_dim, text_dim, graph_dim, concat_dim, amsa_dim, self.fused_dim, cfg.use_cma, cfg.n_heads)

    def _check_inputs(self, image: torch.Tensor, text: torch.Tensor, graph: torch.Tensor,
                      modality_mask: torch.Tensor, attn_mask: torch.Tensor) -> None:
        if image.dim() != 3:
            raise ValueError(f"ModalityFusion: image must have shape [B, N, {self.input_dims[0]}], "
                             f"got {tuple(image.shape)}")
        batch, n_items = image.shape[:2]
        for name, tensor, dim in zip(MODALITIES, (image, text, graph), self.input_dims, strict=True):
            if tensor.dim() != 3 or tuple(tensor.shape) != (batch, n_items, dim):
                raise ValueError(f"ModalityFusion: {name} must have shape [B={batch}, N={n_items}, {dim}], "
                                 f"got {tuple(tensor.shape)}")
        expected = {"modality_mask": (modality_mask, (batch, n_items, 3)),
                    "attn_mask": (attn_mask, (batch, n_items, n_items))}
        for name, (tensor, shape) in expected.items():
            if tensor.dtype != torch.bool or tuple(tensor.shape) != shape:
                raise ValueError(f"ModalityFusion: {name} must be a bool tensor of shape {list(shape)}, "
                                 f"got {tensor.dtype} {tuple(tensor.shape)}")

    def forward(self, image: torch.Tensor, text: torch.Tensor, graph: torch.Tensor,
                modality_mask: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """Fuse the N items of each prompt.

        ``modality_mask[b, n, m]`` True when modality m (image, text, graph) of item n is present;
        ``attn_mask[b, i, j]`` True when item i may attend to item j (see :func:`item_attention_mask`).
        Returns ``[B, N, fused_dim]``; rows of padding items are finite and meaningless.
        """
        self._check_inputs(image, text, graph, modality_mask, attn_mask)
        # A missing modality is a zero row, whatever the caller sent (even NaN).
        image, text, graph = (torch.where(modality_mask[..., m:m + 1], x, 0.0)
                              for m, x in enumerate((image, text, graph)))
        if not self.cfg.enabled:
            return graph

        v_m = torch.cat([image, text, graph], dim=-1)  # Eq. 5
        amsa_mask = attn_mask & modality_mask.any(dim=-1).unsqueeze(1)
        v_amsa = self.amsa(v_m, v_m, v_m, amsa_mask, fallback=v_m.new_zeros(()))  # Eq. 6
        query = self.amsa_to_fused(v_amsa)  # "project v_amsa into the dimension of image and text"
        if not self.cfg.use_cma:
            return query

        v_image = self.image_to_fused(image)
        v_text = self.text_to_fused(text)
        both_present = modality_mask[..., 0] & modality_mask[..., 1]
        cma_mask = attn_mask & both_present.unsqueeze(1)
        v_cma_1 = self.cma_image_text(query, v_image, v_text, cma_mask, fallback=query)  # Eq. 7
        return self.cma_text_image(v_cma_1, v_text, v_image, cma_mask, fallback=v_cma_1)  # Eq. 8


def item_attention_mask(n_history: torch.Tensor, n_items: torch.Tensor, n_positions: int) -> torch.Tensor:
    """Which items of a prompt see which: ``[B, N, N]`` bool, True = query row may attend to key column.

    The N items of prompt b are its ``n_history[b]`` history items in order, then its
    candidates up to ``n_items[b]``, then padding. History items attend to all history
    items; each candidate attends to all history items and to itself only (no candidate
    sees another, so candidate order cannot leak); padding attends only to itself.
    """
    if n_history.dim() != 1 or n_items.shape != n_history.shape:
        raise ValueError(f"item_attention_mask: n_history and n_items must be 1-D of equal length, "
                         f"got {tuple(n_history.shape)} and {tuple(n_items.shape)}")
    bad = (n_history < 0) | (n_history > n_items) | (n_items > n_positions)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"item_attention_mask: row {row} needs 0 <= n_history ({int(n_history[row])}) "
                         f"<= n_items ({int(n_items[row])}) <= N ({n_positions})")
    positions = torch.arange(n_positions, device=n_history.device)
    query = positions.view(1, -1, 1)
    key = positions.view(1, 1, -1)
    key_is_history = key < n_history.view(-1, 1, 1)
    query_is_real = query < n_items.view(-1, 1, 1)
    return (query == key) | (query_is_real & key_is_history)
