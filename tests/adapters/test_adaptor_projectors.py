"""Two-layer MLP adaptors (item / behavior tokens) and their output scale."""

import pytest
import torch
from torch import nn

from adapters.projectors import MLPAdaptor, embedding_rms


def test_two_layer_gelu_mlp_shapes():
    adaptor = MLPAdaptor(5, 12)
    linears = [m for m in adaptor.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(5, 12), (12, 12)]  # hidden defaults to out_dim
    assert any(isinstance(m, nn.GELU) for m in adaptor.modules())
    assert adaptor(torch.randn(2, 3, 5)).shape == (2, 3, 12)
    assert MLPAdaptor(5, 12, hidden_dim=7).net[0].out_features == 7


def test_target_rms_matches_token_embedding_scale():
    torch.manual_seed(0)
    token_embeddings = nn.Embedding(50, 16)
    with torch.no_grad():
        token_embeddings.weight.mul_(0.03)
    target = embedding_rms(token_embeddings)
    assert target == pytest.approx(float(token_embeddings.weight.detach().pow(2).mean().sqrt()))
    adaptor = MLPAdaptor(8, 16, target_rms=target)
    out = adaptor(torch.randn(10, 8) * 5)
    torch.testing.assert_close(out.pow(2).mean(-1).sqrt(), torch.full((10,), target), rtol=1e-4, atol=1e-6)
    plain = MLPAdaptor(8, 16)(torch.randn(10, 8) * 5)
    assert plain.pow(2).mean().sqrt() > 3 * target  # without the norm the scale is not the token scale


def test_adaptor_learns_a_projection():
    torch.manual_seed(0)
    adaptor = MLPAdaptor(4, 6, hidden_dim=16, target_rms=1.0)
    inputs, targets = torch.randn(32, 4), torch.randn(32, 6)
    optimizer = torch.optim.Adam(adaptor.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = nn.functional.mse_loss(adaptor(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert all(p.grad is not None for p in adaptor.parameters())


def test_dropout_only_in_training():
    adaptor = MLPAdaptor(4, 6, dropout=0.5)
    x = torch.randn(8, 4)
    adaptor.eval()
    torch.testing.assert_close(adaptor(x), adaptor(x))
    adaptor.train()
    assert not torch.allclose(adaptor(x), adaptor(x))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="in_dim"):
        MLPAdaptor(0, 4)
    with pytest.raises(ValueError, match="dropout"):
        MLPAdaptor(4, 4, dropout=1.0)
    with pytest.raises(ValueError, match="target_rms"):
        MLPAdaptor(4, 4, target_rms=0.0)
    with pytest.raises(ValueError, match="expected last dimension 4"):
        MLPAdaptor(4, 4)(torch.randn(2, 3))
