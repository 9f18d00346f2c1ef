"""bench/train_flops.py: the FLOP count of a LoRA training step equals what torch's FlopCounterMode counts on a
real (tiny, random-init) Llama with real PEFT LoRA, forward and backward, with the logits at every token."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

BENCH = Path(__file__).resolve().parents[2] / "bench" / "train_flops.py"
TINY = {"hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 3, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 300}


def load_bench():
    spec = importlib.util.spec_from_file_location("train_flops", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("tokens", [7, 20])
def test_counted_flops_equal_torch_flop_counter(tokens):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TINY, tie_word_embeddings=True, attn_implementation="eager"))
    rank = 4
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=8, lora_dropout=0.0, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    ids = torch.randint(0, TINY["vocab_size"], (1, tokens))
    counter = FlopCounterMode(display=False)
    with counter:
        model(input_ids=ids, labels=ids).loss.backward()
    counted = load_bench().flops_per_sample(TINY, tokens, tokens, rank, full_logits=True, causal_attention=False)
    # equal to the FLOP with torch 2.14 / transformers 5.23; the tolerance admits a version that also counts the
    # rotary embedding's tiny position product (head_dim / 2 x tokens)
    assert counter.get_total_flops() == pytest.approx(counted["total"] * 1e9, rel=1e-3)
    assert counted["forward"] < counted["backward"] < 2 * counted["forward"]
