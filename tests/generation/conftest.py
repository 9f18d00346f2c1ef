"""Fixtures of the generation / inference / evaluation tests.

Real components: the SmolLM2 tokenizer, the synthetic shop prepared by ``llmrec.data.prepare`` and the
random embedding tables of tests/tmf/tmf_testkit.py, real PEFT, prompts and collator. The LLM is the testkit's
peaked tiny Llama (``peaked_lm_dir``).
"""

from __future__ import annotations

import pytest
import tmf_testkit as kit  # registered by tests/conftest.py
import torch

from llmrec.data.candidates import load_candidates

tokenizer, shop, tables, peaked_lm_dir = kit.tokenizer, kit.shop, kit.tables, kit.peaked_lm_dir


@pytest.fixture(scope="session")
def tmf_model(peaked_lm_dir, tables):
    """A TMFModel (LoRA + fusion + adaptors, random init) on the peaked Llama, in eval mode."""
    from llmrec.tmf.model import TMFModel

    torch.manual_seed(0)
    return TMFModel(kit.tiny_model_config(peaked_lm_dir), tables).eval()


@pytest.fixture(scope="session")
def nonidentity_lora_model(peaked_lm_dir, tables):
    """``make(seed, b_std)``: a TMFModel in eval mode on the peaked Llama whose LoRA is not the identity
    (``lora_B`` ~ N(0, b_std)), so a path that drops the adapter gives other outputs."""
    from llmrec.tmf.model import TMFModel

    def make(seed: int, b_std: float) -> TMFModel:
        torch.manual_seed(seed)
        model = TMFModel(kit.tiny_model_config(peaked_lm_dir), tables).eval()
        with torch.no_grad():
            for name, param in model.peft_model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0.0, b_std)
        return model

    return make


@pytest.fixture(scope="session")
def renderer(shop):
    from llmrec.tmf.prompts.render import PromptConfig, PromptRenderer

    return PromptRenderer(PromptConfig(sample_paraphrases=False), shop)


def render_test_prompts(shop, renderer, task: str, n: int) -> list:
    """Rendered prompts of the first ``n`` test users with their frozen 5-candidate sets."""
    from llmrec.tmf.prompts.render import render_sample

    cands = load_candidates(shop, "test", size=5)
    return [render_sample(renderer, shop, "test", r, cands, task) for r in range(min(n, len(shop.samples["test"])))]


@pytest.fixture(scope="session")
def hard_prompts(shop, renderer):
    return render_test_prompts(shop, renderer, "hard", 6)


@pytest.fixture(scope="session")
def collator_pair(tmf_model, renderer):
    """(left-padded prompt collator, answer collator), as llmrec.eval.infer builds them."""
    from llmrec.tmf.collator import TMFCollator

    return (TMFCollator(tmf_model.tokenizer, renderer, None, padding_side="left", with_answer=False),
            TMFCollator(tmf_model.tokenizer, renderer, None, padding_side="right", with_answer=True))
