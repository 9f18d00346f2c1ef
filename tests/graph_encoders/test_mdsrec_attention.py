"""MDSRec's fast paths (graph_encoders/mdsrec.py) against the plain formulas they replace.

The centres' attention (Eq. 12-15) is computed by a fused attention (:meth:`CenterUpdate._masked_heads`)
and, for the shared first-layer centres, by prefix sums (:meth:`CenterUpdate._prefix_heads`); Eq. 3 on
``E^id`` uses a dense copy of ``Ō`` when it is dense enough. Each must give the same values and gradients
as the direct computation (checked in float64, where only rounding can differ).
"""

from __future__ import annotations

import pytest
import torch

from graph_encoders.layers import MultiHeadAttention, attention_mask
from graph_encoders.mdsrec import CenterUpdate

from .test_mdsrec import build, spec_of, train_batch


def reference_update(update: CenterUpdate, attention: MultiHeadAttention, centers, keys, mask):
    """Eq. 12-15 as written: the ``[B, h, P, k, L]`` masked scores, softmax, weighted values, U, W_1, W_2, σ."""
    b, length, d = keys.shape
    h, dh = attention.num_heads, attention.head_dim
    span = mask.shape[1]
    query = attention.query(centers).view(*centers.shape[:-1], h, dh)
    key = attention.key(keys).view(b, length, h, dh)
    value = attention.value(keys).view(b, length, h, dh)
    if query.dim() == 3:
        scores = torch.einsum("khe,bshe->bhks", query, key)[:, :, None].expand(b, h, span, -1, length)
    else:
        scores = torch.einsum("bpkhe,bshe->bhpks", query, key)
    scores = scores.masked_fill(~mask[:, None, :, None, :], -torch.inf) / dh**0.5
    heads = torch.einsum("bhpks,bshe->bpkhe", torch.softmax(scores, dim=-1), value).reshape(b, span, -1, d)
    return update.activation(update.second(update.first(attention.output(heads))))


def setup(scale: float):
    torch.manual_seed(0)
    b, length, d, k = 6, 9, 16, 5
    attention = MultiHeadAttention(d, 2, 0.0).double()
    update = CenterUpdate(d, 24, "gelu").double()
    with torch.no_grad():
        for p in attention.parameters():
            p.mul_(scale)
    lengths = torch.tensor([9, 1, 4, 0, 7, 2])
    valid = torch.arange(length)[None] >= (length - lengths)[:, None]
    valid[5, 3] = True  # a valid key before padding: the general mask, not only left padding
    mask = attention_mask(valid, causal=True)[:, 0]
    centers = torch.randn(k, d, dtype=torch.float64, requires_grad=True)
    keys = torch.randn(b, length, d, dtype=torch.float64, requires_grad=True)
    return attention, update, centers, keys, mask, valid


def two_layers(fn, attention, centers, keys):
    for p in (centers, keys, *attention.parameters()):
        p.grad = None
    first = fn(centers)
    second = fn(first)
    (second.square().sum() + first.sin().sum()).backward()
    return [first.detach(), second.detach(), centers.grad.clone(), keys.grad.clone(),
            attention.query.weight.grad.clone(), attention.value.weight.grad.clone()]


@pytest.mark.parametrize("scale", [1.0, 4.0])
@pytest.mark.parametrize("prefix", [True, False])
def test_center_update_matches_the_formula(scale, prefix):
    attention, update, centers, keys, mask, valid = setup(scale)
    expected = two_layers(lambda c: reference_update(update, attention, c, keys, mask), attention, centers, keys)
    used = []
    original = CenterUpdate._prefix_heads

    def spy(*args):
        out = original(*args)
        used.append(out is not None)
        return out

    CenterUpdate._prefix_heads = staticmethod(spy)
    try:
        got = two_layers(lambda c: update(attention, c, keys, mask, valid if prefix else None), attention, centers,
                         keys)
    finally:
        CenterUpdate._prefix_heads = staticmethod(original)
    assert used == ([True] if prefix else [])  # the prefix path serves the shared centres only
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_prefix_path_falls_back_when_scores_spread_too_far():
    attention, update, centers, keys, mask, valid = setup(1.0)
    with torch.no_grad():
        centers.mul_(1e4)  # scores spread by far more than 60
    assert CenterUpdate._prefix_heads(attention, centers, keys, valid) is None
    torch.testing.assert_close(update(attention, centers, keys, mask, valid),
                               reference_update(update, attention, centers, keys, mask), rtol=1e-10, atol=1e-12)


def test_newest_position_matches_the_formula():
    attention, update, centers, keys, mask, valid = setup(2.0)
    newest = mask[:, -1:]
    torch.testing.assert_close(update(attention, centers, keys, newest),
                               reference_update(update, attention, centers, keys, newest), rtol=1e-10, atol=1e-12)


def test_dense_co_occurrence_gives_the_sparse_product(tiny_dataset):
    model = build(spec_of(tiny_dataset))
    assert model.co_occurrence_dense is not None  # the tiny graph is dense
    dense = model.item_tables()["id_input"]
    model.co_occurrence_dense = None
    sparse = model.item_tables()["id_input"]
    torch.testing.assert_close(dense, sparse, rtol=1e-6, atol=1e-7)
    assert torch.equal(model.co_occurrence_matrix.to_dense(), build(spec_of(tiny_dataset)).co_occurrence_dense)


def test_loss_unchanged_by_the_fast_paths(tiny_dataset):
    model = build(spec_of(tiny_dataset)).double()
    batch = train_batch(tiny_dataset)
    model.train()
    torch.manual_seed(5)
    fast = model.loss(batch)
    original = CenterUpdate._prefix_heads
    CenterUpdate._prefix_heads = staticmethod(lambda *args: None)
    model.co_occurrence_dense = None
    try:
        torch.manual_seed(5)
        slow = model.loss(batch)
    finally:
        CenterUpdate._prefix_heads = staticmethod(original)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
