"""Two-layer MLP adaptors into the LLM token-embedding space (TMF section 4.2).

The item adaptor (Psi_i) maps the fusion output to the embedding of an item
token ``[MT_i]``; the behavior adaptor (Psi_b) maps a graph encoder's behavior
embedding to the embedding of a behavior token ``[MT_b]``. The paper says "a
two-layer MLP" without an activation; we use GELU (the activation of the
LLaRA projector TMF follows, and of most LLM MLPs).

Output scale: LLM token embeddings have a typical RMS far from what a freshly
initialised MLP emits (0.136 per entry for the shipped SmolLM2-135M-Instruct
GGUF, while the MLP's output scale follows its inputs). With
``target_rms`` set, the output goes through an RMSNorm whose learnable gain is
initialised to ``target_rms`` (use :func:`embedding_rms` of the LLM's input
embedding matrix), so slot vectors start at the scale of real tokens and the
gain can still learn. Without it the adaptor is the plain MLP of the paper.
"""

from __future__ import annotations

import torch
from torch import nn


class MLPAdaptor(nn.Module):
    """``Linear(in_dim, hidden) -> GELU -> Dropout -> Linear(hidden, out_dim) [-> RMSNorm * target_rms]``."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None, dropout: float = 0.0,
                 *, target_rms: float | None = None) -> None:
        super().__init__()
        hidden_dim = hidden_dim or out_dim
        for name, value in (("in_dim", in_dim), ("out_dim", out_dim), ("hidden_dim", hidden_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"MLPAdaptor: {name} must be a positive integer, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MLPAdaptor: dropout must be in [0, 1), got {dropout}")
        if target_rms is not None and not target_rms > 0:
            raise ValueError(f"MLPAdaptor: target_rms must be positive or None, got {target_rms}")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, out_dim),
        )
        self.norm: nn.Module = nn.Identity()
        if target_rms is not None:
            self.norm = nn.RMSNorm(out_dim, eps=1e-6)
            with torch.no_grad():
                self.norm.weight.fill_(target_rms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"MLPAdaptor: expected last dimension {self.in_dim}, got shape {tuple(x.shape)}")
        return self.norm(self.net(x))


def embedding_rms(embedding: nn.Embedding | torch.Tensor) -> float:
    """Root mean square of all entries of a token-embedding matrix (e.g. ``model.get_input_embeddings()``)."""
    weight = embedding.weight if isinstance(embedding, nn.Module) else embedding
    return float(weight.detach().float().pow(2).mean().sqrt())
