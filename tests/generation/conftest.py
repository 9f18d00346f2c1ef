"""Fixtures of the generation / inference / evaluation tests.

Real components: the SmolLM2 tokenizer, the synthetic shop prepared by ``llmrec.data.prepare`` and the
random embedding tables of tests/model/tmf_testkit.py, real PEFT, prompts and collator. The LLM is a
tiny random-init Llama with that tokenizer's vocabulary, initialized with a large weight scale so its
next-token distribution is peaked: greedy decoding then has clear winners and batched vs one-by-one
comparisons are not decided by float rounding between near-tied logits.
"""

from __future__ import annotations


import pytest
import torch

import tmf_testkit as kit  # registered by tests/conftest.py

tokenizer, shop, tables = kit.tokenizer, kit.shop, kit.tables


@pytest.fixture(scope="session")
def peaked_lm_dir(tokenizer, tmp_path_factory):
    """A 2-layer, 32-wide Llama (initializer_range 0.25) with the SmolLM2 vocabulary, saved to disk."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("peaked-llama")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         initializer_range=0.25, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tmf_model(peaked_lm_dir, tables):
    """A TMFModel (LoRA + fusion + adaptors, random init) on the peaked Llama, in eval mode."""
    from llmrec.model import TMFModel

    torch.manual_seed(0)
    return TMFModel(kit.tiny_model_config(peaked_lm_dir), tables).eval()


@pytest.fixture(scope="session")
def renderer(shop):
    from llmrec.prompts import PromptConfig, PromptRenderer

    return PromptRenderer(PromptConfig(sample_paraphrases=False), shop)


def render_test_prompts(shop, renderer, task: str, n: int) -> list:
    """Rendered prompts of the first ``n`` test users with their frozen 5-candidate sets."""
    from llmrec.prompts import render_sample

    cands = shop.candidates("test", size=5)
    return [render_sample(renderer, shop, "test", r, cands, task) for r in range(min(n, len(shop.samples["test"])))]


@pytest.fixture(scope="session")
def hard_prompts(shop, renderer):
    return render_test_prompts(shop, renderer, "hard", 6)


@pytest.fixture(scope="session")
def collator_pair(tmf_model, renderer):
    """(left-padded prompt collator, answer collator), as llmrec.inference builds them."""
    from llmrec.collator import TMFCollator

    return (TMFCollator(tmf_model.tokenizer, renderer, None, padding_side="left", with_answer=False),
            TMFCollator(tmf_model.tokenizer, renderer, None, padding_side="right", with_answer=True))
