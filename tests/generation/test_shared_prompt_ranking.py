"""Candidate ranking that runs each prompt once (``method="packed"``, the default: prompt and its C answers
in one masked row; ``method="prefix"``: answers over a repeated KV cache) against the
one-sequence-per-candidate path (``method="full"``).

Real components (conftest.py): the SmolLM2 tokenizer, the synthetic shop, real PEFT LoRA, the TMF
fusion/adaptors and a tiny random Llama. The LoRA B matrices are randomized so the adapter changes
the scores: a prefix pass that bypassed LoRA would then disagree with the reference.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest
import torch

from llmrec.data.candidates import load_candidates
from llmrec.generation.ranking import candidate_log_likelihoods, ranking_hit_rate
from llmrec.tmf.collator import TMFCollator

kit = sys.modules["tmf_testkit"]  # loaded by conftest.py


@pytest.fixture(scope="module")
def lora_model(nonidentity_lora_model):
    """A TMFModel whose LoRA is not the identity (random B), so LoRA must be active in both paths."""
    return nonidentity_lora_model(seed=1, b_std=0.2)


@pytest.fixture(scope="module")
def mixed_prompts(shop, renderer):
    """Hard prompts (item + behavior slots) of 6 users: histories and candidate titles of varied length."""
    from llmrec.tmf.prompts.render import render_sample

    cands = load_candidates(shop, "test", size=5)
    full = [render_sample(renderer, shop, "test", r, cands, "hard") for r in range(6)]
    prompts = [renderer.render(p.history_items[r % 3:], p.history_behaviors[r % 3:], p.candidates, p.target_index,
                               p.task, paraphrase=p.paraphrase) for r, p in enumerate(full)]
    assert len({len(p.segments) for p in prompts}) > 1, "test needs prompts of different lengths"
    return prompts


def answer_collator(model, renderer, max_length=None):
    return TMFCollator(model.tokenizer, renderer, max_length, padding_side="right", with_answer=True)


@pytest.mark.parametrize("method,attention", [("packed", "sdpa_gqa"), ("packed", "sdpa"), ("packed", "eager"),
                                              ("prefix", "sdpa_gqa")])
def test_scores_equal_full_scores(lora_model, renderer, mixed_prompts, method, attention):
    collator = answer_collator(lora_model, renderer)
    answer_lengths = {len(collator._tokenize(" " + renderer.item_name(c), False))
                      for p in mixed_prompts for c in p.candidates}
    assert len(answer_lengths) > 1, "test needs candidates of different token lengths"
    full = candidate_log_likelihoods(lora_model, collator, renderer, mixed_prompts, batch_size=7,
                                     progress=False, method="full")
    config = lora_model.causal_lm.config
    default_attention, config._attn_implementation = config._attn_implementation, attention
    try:
        # 12 rows per group = 2 prompts of 5 candidates; 3 groups with prompts of different lengths
        shared = candidate_log_likelihoods(lora_model, collator, renderer, mixed_prompts, batch_size=12,
                                           progress=False, method=method)
        one_by_one = candidate_log_likelihoods(lora_model, collator, renderer, mixed_prompts, batch_size=1,
                                               progress=False, method=method)
    finally:
        config._attn_implementation = default_attention
    assert shared.shape == full.shape == (6, 5)
    assert np.all(np.isfinite(full)) and np.all(full < 0)
    assert np.ptp(full, axis=1).min() > 1e-2  # candidates really differ, so the ranking is tested too
    np.testing.assert_allclose(shared, full, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(one_by_one, full, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(shared.argmax(axis=1), full.argmax(axis=1))


def test_packed_mask_keeps_answers_apart():
    from llmrec.generation.ranking import _packed_attention_mask

    mask = _packed_attention_mask([3], [[2, 1]], width=7)[0, 0]
    expected = torch.tensor([[1, 0, 0, 0, 0, 0, 0],   # prefix: causal
                             [1, 1, 0, 0, 0, 0, 0],
                             [1, 1, 1, 0, 0, 0, 0],
                             [1, 1, 1, 1, 0, 0, 0],   # answer 1: prefix + itself, causally
                             [1, 1, 1, 1, 1, 0, 0],
                             [1, 1, 1, 0, 0, 1, 0],   # answer 2: prefix + itself, not answer 1
                             [1, 0, 0, 0, 0, 0, 0]],  # padding: position 0 only (no empty row)
                            dtype=torch.bool)
    assert torch.equal(mask, expected)
    additive = _packed_attention_mask([3], [[2, 1]], width=7, additive_dtype=torch.float32)[0, 0]
    assert torch.equal(additive == 0, expected) and additive.min() == torch.finfo(torch.float32).min


def test_lora_is_active_in_the_prefix_path(lora_model, renderer, mixed_prompts):
    collator = answer_collator(lora_model, renderer)
    with_lora = candidate_log_likelihoods(lora_model, collator, renderer, mixed_prompts[:2], progress=False)
    with lora_model.peft_model.disable_adapter():
        without_lora = candidate_log_likelihoods(lora_model, collator, renderer, mixed_prompts[:2], progress=False)
    assert np.abs(with_lora - without_lora).max() > 1e-3


def test_truncated_prompts_score_the_same(lora_model, renderer, mixed_prompts):
    """A tight max_length shortens histories (once per prompt, for its longest answer) in both paths."""
    wide = answer_collator(lora_model, renderer)
    longest = max(len(wide.encode(dataclasses.replace(p, answer=renderer.item_name(c))).input_ids)
                  for p in mixed_prompts for c in p.candidates)
    collator = answer_collator(lora_model, renderer, max_length=longest - 8)
    full = candidate_log_likelihoods(lora_model, collator, renderer, mixed_prompts, 10, False, method="full")
    n_truncated = collator.truncations
    assert n_truncated > 0
    for method in ("packed", "prefix"):
        shared = candidate_log_likelihoods(lora_model, collator, renderer, mixed_prompts, 10, False, method=method)
        np.testing.assert_allclose(shared, full, rtol=1e-5, atol=1e-4)


def test_hit_rate_matches_and_training_mode_is_restored(lora_model, renderer, mixed_prompts):
    collator = answer_collator(lora_model, renderer)
    lora_model.train()
    try:
        by_prefix = ranking_hit_rate(lora_model, collator, renderer, mixed_prompts, 10, ks=(1, 3), progress=False)
        assert lora_model.training
        by_full = ranking_hit_rate(lora_model, collator, renderer, mixed_prompts, 10, ks=(1, 3), progress=False,
                                   method="full")
    finally:
        lora_model.eval()
    assert by_prefix == pytest.approx(by_full)


def test_bad_arguments_are_named(lora_model, renderer, mixed_prompts):
    collator = answer_collator(lora_model, renderer)
    with pytest.raises(ValueError, match="method must be one of"):
        candidate_log_likelihoods(lora_model, collator, renderer, mixed_prompts, method="beam")
    prompt_only = TMFCollator(lora_model.tokenizer, renderer, None, with_answer=False)
    with pytest.raises(ValueError, match="with_answer=True"):
        candidate_log_likelihoods(lora_model, prompt_only, renderer, mixed_prompts)
