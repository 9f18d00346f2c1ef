"""Gaussian attention and cluster attention (graph_encoders/interests.py) on tiny shapes."""

from __future__ import annotations

import math

import pytest
import torch

from graph_encoders.interests import (
    ClusterAttention,
    GaussianAttention,
    gaussian_attention_weights,
    inverse_softplus,
    straight_through_top_f,
    top_f_mask,
)
from graph_encoders.layers import attention_mask


def _inputs(b: int = 2, n: int = 6, d: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, d, generator=g)
    positions = torch.tensor([[0.0, 1.0, 2.0, 3.0, 1.5, 3.5]]).expand(b, n)  # scale-1 tokens + two patches
    return x, positions


# ---- Gaussian attention (Eq. 4-6) --------------------------------------------------------
def test_sigma_starts_at_its_initial_value_and_is_trained():
    torch.manual_seed(0)
    attention = GaussianAttention(8, 2, 0.0, sigma_init=3.0)
    assert attention.sigma.item() == pytest.approx(3.0, rel=1e-6)
    assert inverse_softplus(0.5) == pytest.approx(math.log(math.expm1(0.5)))
    x, positions = _inputs()
    attention(x, positions, attention_mask(torch.ones(2, 6, dtype=torch.bool), causal=True)).square().sum().backward()
    assert attention.sigma_raw.grad is not None and attention.sigma_raw.grad.abs().item() > 0


@pytest.mark.parametrize("causal", [False, True])
def test_fused_attention_equals_the_printed_product(causal):
    """softmax(QK^T/sqrt(d)) ⊙ G renormalised (Eq. 5-6) == softmax(QK^T/sqrt(d) - D^2/σ^2) (the module)."""
    torch.manual_seed(0)
    attention = GaussianAttention(8, 2, 0.0, sigma_init=1.5).eval()
    x, positions = _inputs()
    valid = torch.tensor([[False, True, True, True, True, True], [True] * 6])
    mask = attention_mask(valid, causal=causal)
    q = attention._split(attention.query(x))
    k = attention._split(attention.key(x))
    v = attention._split(attention.value(x))
    weights = gaussian_attention_weights(q @ k.transpose(-1, -2) / math.sqrt(4), positions, attention.sigma, mask)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 2, 6))
    expected = attention.output((weights @ v).transpose(1, 2).reshape(2, 6, 8))
    torch.testing.assert_close(attention(x, positions, mask), expected, rtol=1e-5, atol=1e-6)


def test_small_sigma_attends_to_the_nearest_token_only():
    torch.manual_seed(0)
    attention = GaussianAttention(8, 1, 0.0, sigma_init=0.05).eval()
    x, positions = _inputs()
    out = attention(x, positions, attention_mask(torch.ones(2, 6, dtype=torch.bool), causal=False))
    own = attention.output(attention.value(x))  # every token reads only itself (distance 0; the others >= 0.5)
    torch.testing.assert_close(out, own, rtol=1e-5, atol=1e-5)
    wide = GaussianAttention(8, 1, 0.0, sigma_init=100.0).eval()
    wide.load_state_dict({**attention.state_dict(), "sigma_raw": wide.sigma_raw.detach()})
    assert not torch.allclose(wide(x, positions, attention_mask(torch.ones(2, 6, dtype=torch.bool), False)), own,
                              atol=1e-3)


# ---- top-F filter and straight-through (Eq. 8, 10) ------------------------------------------
def test_top_f_mask_marks_the_f_largest():
    weights = torch.tensor([[0.1, 0.5, 0.3, 0.1], [0.4, 0.1, 0.2, 0.3]])
    assert torch.equal(top_f_mask(weights, 1), torch.tensor([[0.0, 1, 0, 0], [1, 0, 0, 0]]))
    assert torch.equal(top_f_mask(weights, 2), torch.tensor([[0.0, 1, 1, 0], [1, 0, 0, 1]]))
    with pytest.raises(ValueError, match="top-F"):
        top_f_mask(weights, 5)


def test_straight_through_is_hard_forward_and_soft_backward():
    logits = torch.tensor([[0.2, 1.0, -0.5], [0.3, 0.1, 0.9]], requires_grad=True)
    soft = torch.softmax(logits, -1)
    hard = straight_through_top_f(soft, 1)
    assert torch.equal(hard.detach(), torch.tensor([[0.0, 1, 0], [0, 0, 1]]))  # the forward is the hard filter
    weight = torch.tensor([[1.0, -2.0, 3.0], [0.5, 4.0, -1.0]])
    (hard * weight).sum().backward()
    straight = logits.grad.clone()
    logits.grad = None
    (torch.softmax(logits, -1) * weight).sum().backward()
    torch.testing.assert_close(straight, logits.grad)  # the gradient is the soft path's
    assert straight.abs().sum() > 0.1


# ---- cluster attention (Eq. 7-12) ---------------------------------------------------------
def test_cluster_attention_is_hard_and_passes_gradients():
    torch.manual_seed(0)
    layer = ClusterAttention(8, 4, top_f=1, temperature=1.0)  # training mode: Gumbel noise
    x, _ = _inputs()
    interests, allocation = layer(x)
    assert interests.shape == (2, 4, 8) and allocation.shape == (2, 6, 4)
    assert torch.equal(allocation.detach().sum(-1), torch.ones(2, 6))  # one interest per token (F = 1)
    assert set(allocation.detach().unique().tolist()) <= {0.0, 1.0}
    interests.square().sum().backward()
    for name in ("query", "key"):  # reached only through the straight-through soft path
        assert getattr(layer, name).weight.grad.abs().sum() > 0, name
    assert layer.interests.grad.abs().sum() > 0


def test_interests_are_the_assigned_sum_plus_the_token():
    torch.manual_seed(0)
    layer = ClusterAttention(8, 3, top_f=2, temperature=1.0).eval()  # no noise in eval mode
    x, _ = _inputs()
    interests, allocation = layer(x)
    assert torch.equal(allocation.sum(-1), torch.full((2, 6), 2.0))
    values = layer.output(layer.value(layer.norm(x)))
    torch.testing.assert_close(interests, layer.interests + allocation.transpose(1, 2) @ values)  # Eq. 12
    mean = ClusterAttention(8, 3, top_f=2, temperature=1.0, pooling="mean").eval()
    mean.load_state_dict(layer.state_dict())
    counts = allocation.sum(1)[..., None].clamp(min=1)
    torch.testing.assert_close(mean(x)[0], layer.interests + allocation.transpose(1, 2) @ values / counts)


def test_visible_positions_see_only_their_tokens():
    """Interests of a prefix (``visible``) equal those computed from that prefix's tokens alone."""
    torch.manual_seed(0)
    layer = ClusterAttention(8, 3, top_f=1, temperature=1.0).eval()
    x, _ = _inputs()
    visible = torch.ones(6, 6, dtype=torch.bool).tril()[None].expand(2, 6, 6)  # position p sees tokens <= p
    per_position, _ = layer(x, visible)
    assert per_position.shape == (2, 6, 3, 8)
    for p in range(6):
        alone, _ = layer(x[:, : p + 1])
        torch.testing.assert_close(per_position[:, p], alone, rtol=1e-5, atol=1e-6)


def _printed_cluster_attention(layer: ClusterAttention, tokens: torch.Tensor, visible: torch.Tensor | None):
    """Eq. 7-12 as printed, step by step (no noise: eval mode): ``W_k x · W_q c``, hard top-F, ``W_a W_v x`` per
    token."""
    x = layer.norm(tokens)
    logits = layer.key(x) @ layer.query(layer.interests).T / math.sqrt(x.shape[-1])
    allocation = straight_through_top_f(torch.softmax(logits / layer.temperature, -1), layer.top_f)
    values = layer.output(layer.value(x))
    if visible is None:
        pooled, counts = allocation.transpose(-1, -2) @ values, allocation.sum(-2)[..., None]
    else:
        weights = visible.to(x.dtype)[..., None] * allocation[:, None]  # [B, P, N, K]
        pooled, counts = weights.transpose(-1, -2) @ values[:, None], weights.sum(-2)[..., None]
    if layer.pooling == "mean":
        pooled = pooled / counts.clamp(min=1.0)
    return layer.interests + pooled


@pytest.mark.parametrize("pooling", ["sum", "mean"])
@pytest.mark.parametrize("n_interests, causal", [(3, False), (12, False), (3, True)])
def test_reordered_products_match_the_printed_form(pooling, n_interests, causal):
    """The folded key product and the projection moved to whichever side of the sum is smaller (3 interests
    from 6 tokens: after; 12 interests, or 6 positions x 3: before) give Eq. 7-12's interests and gradients."""
    torch.manual_seed(0)
    layer = ClusterAttention(8, n_interests, top_f=1, temperature=1.0, pooling=pooling).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in (layer.query, layer.key):
            module.bias.copy_(torch.randn(8, generator=g))  # nonzero biases: b_k · q_k is exercised
    x, _ = _inputs()
    visible = torch.ones(6, 6, dtype=torch.bool).tril()[None].expand(2, 6, 6) if causal else None
    target = torch.randn((2, 6, n_interests, 8) if causal else (2, n_interests, 8), generator=g)
    names, params = zip(*layer.named_parameters(), strict=True)

    def grads(interests: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(names, torch.autograd.grad((interests * target).sum(), params), strict=True))

    ours, printed = layer(x, visible)[0], _printed_cluster_attention(layer, x, visible)
    torch.testing.assert_close(ours, printed, rtol=1e-5, atol=1e-6)
    ours_grads, printed_grads = grads(ours), grads(printed)
    for name in names:
        torch.testing.assert_close(ours_grads[name], printed_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert ours_grads["query.weight"].abs().sum() > 0  # W_q is reached through the straight-through path


def test_noise_only_in_training():
    torch.manual_seed(0)
    layer = ClusterAttention(8, 4, top_f=1, temperature=1.0)
    x, _ = _inputs()
    torch.manual_seed(1)
    first = layer(x)[1]
    assert any(not torch.equal(first, layer(x)[1]) for _ in range(5))  # Gumbel draws differ
    layer.eval()
    assert torch.equal(layer(x)[1], layer(x)[1])
