"""attn_implementation sdpa_gqa (llmrec.tmf.attention) against transformers' sdpa, function and model level."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from llmrec.tmf import attention
from llmrec.tmf.attention import sdpa_gqa_attention

MODULE = SimpleNamespace(num_key_value_groups=2, is_causal=True)


def qkv(batch=2, heads=4, kv_heads=2, length=7, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, heads, length, dim, generator=g), torch.randn(batch, kv_heads, length, dim, generator=g),
            torch.randn(batch, kv_heads, length, dim, generator=g))


def padded_causal_mask(length=7, pad=(0, 3)):
    """[B, 1, T, T] bool: causal, row b's first pad[b] positions left padding (they attend to themselves only)."""
    mask = torch.ones(length, length, dtype=torch.bool).tril().repeat(len(pad), 1, 1, 1)
    for b, p in enumerate(pad):
        mask[b, :, :, :p] = False
        mask[b, :, torch.arange(p), torch.arange(p)] = True
    return mask


@pytest.mark.parametrize("mask_kind", ["bool", "additive", "none"])
def test_equals_transformers_sdpa(mask_kind, monkeypatch):
    q, k, v = qkv()
    mask = {"bool": padded_causal_mask(), "none": None,
            "additive": torch.zeros(2, 1, 7, 7).masked_fill(~padded_causal_mask(), torch.finfo(torch.float32).min)}
    mask = mask[mask_kind]
    expected, _ = sdpa_attention_forward(MODULE, q, k, v, mask, scaling=0.3)
    with monkeypatch.context() as patched:  # the fast path really runs: it must not fall back to transformers
        patched.setattr(attention, "sdpa_attention_forward", lambda *a, **kw: pytest.fail("fell back"))
        got, weights = sdpa_gqa_attention(MODULE, q, k, v, mask, scaling=0.3)
    assert weights is None and got.shape == expected.shape == (2, 7, 4, 8)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_decoding_and_kv_cache_calls_go_to_transformers(monkeypatch):
    calls = []
    monkeypatch.setattr(attention, "sdpa_attention_forward", lambda *a, **kw: calls.append(a[1].shape) or (None, None))
    q, k, v = qkv()
    sdpa_gqa_attention(MODULE, q[:, :, -1:], k, v, None)  # one new token against a cache
    sdpa_gqa_attention(MODULE, q[:, :, -3:], k, v, None)  # a chunk against a longer cache
    sdpa_gqa_attention(SimpleNamespace(num_key_value_groups=1), q, q, q, None)  # no grouped heads
    assert len(calls) == 3


def test_tiny_llama_gives_sdpa_logits_and_gradients(tiny_lm_dir):
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [0, 0, 11, 12, 13, 14]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    results = []
    for name in ("sdpa", attention.NAME):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, attn_implementation=name)
        assert model.config.num_attention_heads > model.config.num_key_value_heads  # grouped heads: the fast path
        logits = model(input_ids=ids, attention_mask=mask).logits
        logits[mask.bool()].logsumexp(-1).sum().backward()
        results.append((logits.detach(), model.model.layers[0].self_attn.q_proj.weight.grad))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-4, atol=1e-5)
