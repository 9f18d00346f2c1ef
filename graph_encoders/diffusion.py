"""Conditional feature diffusion pieces shared by the diffusion-based seed models (M³BSR first).

* :class:`NoiseSchedule`: a linear variance schedule ``β_1..β_T`` (DDPM, Ho et al. 2020) with
  ``α_t = 1 - β_t`` and ``ᾱ_t = Π_{i<=t} α_i``; :meth:`~NoiseSchedule.q_sample` is the closed-form
  forward process ``h_t = sqrt(ᾱ_t) h_0 + sqrt(1 - ᾱ_t) ε``, :meth:`~NoiseSchedule.predict_start`
  inverts it for a predicted ``ε̂`` (the one-step estimate of ``h_0``), :meth:`~NoiseSchedule.reverse_step`
  is the DDPM mean ``h_{t-1} = (h_t - (1 - α_t) / sqrt(1 - ᾱ_t) ε̂) / sqrt(α_t)`` (M³BSR Eq. 8), with
  the posterior noise ``σ_t z``, ``σ_t² = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t)``, only when ``noise`` is given.
  Steps are **1-based** (``t = 1..T``), as in the papers.
* :func:`reverse_process`: ``T`` reverse steps from ``h_T`` with a noise predictor ``ε̂(h_t, t)``.
* :class:`TimeEmbedding`: sinusoidal features of ``t`` through a two-layer SiLU MLP.
* :class:`ConditionAttention`: cross-attention of queries over condition vectors plus one learned
  **null key** that every query may attend, so a query whose condition set is empty (no earlier
  favour, say) still gets a finite output.
* :class:`ConditionalDenoiser`: the noise predictor ``ε̂ = f(h_t, t, c)``: ``q = W h_t + TimeEmb(t)``,
  ``q + CrossAttn(LN(q), c, c)``, a feed-forward, and a linear read-out (M³BSR Eq. 9, IP-Adapter style:
  the query is the noisy feature, keys / values are the condition).

Tensors are ``[batch, length, hidden]``; masks are bool, ``True`` = may attend.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from graph_encoders.layers import MultiHeadAttention, PointwiseFeedForward


class NoiseSchedule(nn.Module):
    """Linear ``β`` from ``beta_start`` to ``beta_end`` over ``steps`` steps (buffers, not saved)."""

    def __init__(self, steps: int, beta_start: float, beta_end: float) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"diffusion steps must be >= 1, got {steps}")
        if not 0.0 < beta_start <= beta_end < 1.0:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        self.steps = steps
        betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
        alphas = 1.0 - betas
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alphas", alphas.float(), persistent=False)
        self.register_buffer("alpha_bars", torch.cumprod(alphas, 0).float(), persistent=False)

    def _alpha_bar(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """``ᾱ_t`` shaped to broadcast against ``like`` (``t`` an int or a tensor of ``like.shape[:-1]``)."""
        if isinstance(t, int):
            self._check(t)
            return self.alpha_bars[t - 1]
        if bool(((t < 1) | (t > self.steps)).any()):
            raise ValueError(f"diffusion steps must be in 1..{self.steps}")
        return self.alpha_bars[t - 1][..., None]

    def _check(self, t: int) -> None:
        if not 1 <= t <= self.steps:
            raise ValueError(f"diffusion step must be in 1..{self.steps}, got {t}")

    def sample_steps(self, shape: tuple[int, ...], device: torch.device | str,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform steps ``t ∈ {1..T}`` of ``shape`` (long)."""
        return torch.randint(1, self.steps + 1, shape, device=device, generator=generator)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor) -> torch.Tensor:
        """``h_t = sqrt(ᾱ_t) h_0 + sqrt(1 - ᾱ_t) ε``."""
        alpha_bar = self._alpha_bar(t, x0)
        return alpha_bar.sqrt() * x0 + (1.0 - alpha_bar).sqrt() * noise

    def predict_start(self, x_t: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor) -> torch.Tensor:
        """``ĥ_0 = (h_t - sqrt(1 - ᾱ_t) ε̂) / sqrt(ᾱ_t)``, the one-step estimate of the clean feature."""
        alpha_bar = self._alpha_bar(t, x_t)
        return (x_t - (1.0 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()

    def reverse_step(self, x_t: torch.Tensor, t: int, eps: torch.Tensor,
                     noise: torch.Tensor | None = None) -> torch.Tensor:
        """``h_{t-1} = (h_t - (1 - α_t) / sqrt(1 - ᾱ_t) ε̂) / sqrt(α_t)``
        (+ ``σ_t z`` when ``noise`` is given, t > 1)."""
        self._check(t)
        alpha, alpha_bar = self.alphas[t - 1], self.alpha_bars[t - 1]
        mean = (x_t - (1.0 - alpha) / (1.0 - alpha_bar).sqrt() * eps) / alpha.sqrt()
        if noise is None or t == 1:
            return mean
        variance = self.betas[t - 1] * (1.0 - self.alpha_bars[t - 2]) / (1.0 - alpha_bar)
        return mean + variance.sqrt() * noise


def reverse_process(x_T: torch.Tensor, predict_noise: Callable[[torch.Tensor, int], torch.Tensor],
                    schedule: NoiseSchedule) -> torch.Tensor:
    """Run ``t = T..1`` mean reverse steps from ``x_T``; ``predict_noise(x_t, t)`` returns ``ε̂``."""
    x = x_T
    for t in range(schedule.steps, 0, -1):
        x = schedule.reverse_step(x, t, predict_noise(x, t))
    return x


class TimeEmbedding(nn.Module):
    """``MLP(sin/cos(t · ω_k))`` with ``ω_k = 10000^{-k / (d/2)}``; ``t`` long of any shape → ``[..., d]``."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        half = hidden_size // 2
        self.register_buffer("frequencies", torch.exp(-math.log(10000.0) * torch.arange(half) / max(half, 1)),
                             persistent=False)
        self.mlp = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t[..., None].to(self.frequencies.dtype) * self.frequencies
        features = torch.cat([angles.sin(), angles.cos()], dim=-1)
        if features.shape[-1] < self.hidden_size:  # odd width: one zero column
            features = torch.cat([features, features.new_zeros(*features.shape[:-1], 1)], dim=-1)
        return self.mlp(features)


class ConditionAttention(nn.Module):
    """Multi-head cross-attention over ``condition`` ``[B, Lc, d]`` plus a learned null key (always visible).

    ``mask`` ``[B, Lq, Lc]`` bool says which condition vectors each query may attend; the null key
    makes every row finite, so an empty condition set yields the (learned) null read-out.
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.attention = MultiHeadAttention(hidden_size, num_heads, dropout)
        self.null = nn.Parameter(torch.empty(1, 1, hidden_size).normal_(std=0.02))

    def forward(self, queries: torch.Tensor, condition: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b = condition.shape[0]
        keys = torch.cat([self.null.expand(b, 1, -1), condition], dim=1)
        mask = torch.cat([mask.new_ones(*mask.shape[:2], 1), mask], dim=-1)
        return self.attention(queries, keys, mask[:, None])


class ConditionalDenoiser(nn.Module):
    """Noise predictor ``ε̂(h_t, t, c)`` (module docstring): input map + time embedding, cross-attention, FFN."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float, inner_size: int | None = None) -> None:
        super().__init__()
        self.input = nn.Linear(hidden_size, hidden_size)
        self.time = TimeEmbedding(hidden_size)
        self.norm_attention = nn.LayerNorm(hidden_size, eps=1e-8)
        self.attention = ConditionAttention(hidden_size, num_heads, dropout)
        self.norm_feed_forward = nn.LayerNorm(hidden_size, eps=1e-8)
        self.feed_forward = PointwiseFeedForward(hidden_size, inner_size or hidden_size, dropout, "gelu")
        self.norm_output = nn.LayerNorm(hidden_size, eps=1e-8)
        self.output = nn.Linear(hidden_size, hidden_size)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, condition: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x_t`` ``[B, L, d]``, ``t`` long ``[B, L]``, ``condition`` ``[B, Lc, d]``, ``mask`` ``[B, L, Lc]``
        → ``ε̂``."""
        h = self.input(x_t) + self.time(t)
        h = h + self.attention(self.norm_attention(h), condition, mask)
        h = h + self.feed_forward(self.norm_feed_forward(h))
        return self.output(self.norm_output(h))
