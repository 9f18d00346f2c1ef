"""The fused LoRA forward (llmrec.tmf.fused_lora) against PEFT's own, on a tiny random Llama with real PEFT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from tmf_testkit import tiny_model_config

from llmrec.data.candidates import load_candidates
from llmrec.tmf.collator import TMFCollator
from llmrec.tmf.fused_lora import FusedLoraLinear
from llmrec.tmf.model import TMFModel
from llmrec.tmf.prompts.render import PromptConfig, PromptRenderer


@pytest.fixture(scope="module")
def batch(shop, tokenizer):
    renderer = PromptRenderer(PromptConfig(), shop)
    train = shop.samples["train"]
    cands = load_candidates(shop, "train", size=5)
    prompts = [renderer.render(train[r]["history_items"], train[r]["history_behaviors"], cands.items[r],
                               int(cands.target_index[r]), task, np.random.default_rng(r))
               for r, task in zip((0, 1, 2), ("easy", "medium", "hard"), strict=True)]
    return TMFCollator(tokenizer, renderer, max_length=None)(prompts)


def models(tiny_lm_dir, tables, dropout: float = 0.0) -> tuple[TMFModel, TMFModel]:
    """(PEFT's forward, fused forward), the same weights, LoRA B made non-zero (PEFT starts it at zero)."""
    pair = []
    for fused in (False, True):
        cfg = tiny_model_config(tiny_lm_dir)
        cfg.lora.fused, cfg.lora.dropout = fused, dropout
        torch.manual_seed(0)
        model = TMFModel(cfg, tables).train()
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(0.05 * torch.randn(param.shape, generator=generator))
        pair.append(model)
    return pair[0], pair[1]


def loss_and_grads(model: TMFModel, batch, seed: int = 3) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    torch.manual_seed(seed)  # the same LoRA dropout masks in both models
    loss = model(batch).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for g in model.parameter_groups().values() for p in g if p.grad is not None]


def lora_layers(model: TMFModel) -> list[LoraLinear]:
    return [m for m in model.modules() if isinstance(m, LoraLinear)]


def test_every_lora_linear_is_fused_only_when_asked(tiny_lm_dir, tables):
    plain, fused = models(tiny_lm_dir, tables)
    assert lora_layers(plain) and not any(isinstance(m, FusedLoraLinear) for m in lora_layers(plain))
    assert all(type(m) is FusedLoraLinear for m in lora_layers(fused))
    assert len(lora_layers(fused)) == len(lora_layers(plain))
    # PEFT's parameters and adapter names are untouched: checkpoints are interchangeable
    assert plain.state_dict().keys() == fused.state_dict().keys()


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_fp32_loss_and_gradients_match_peft(tiny_lm_dir, tables, batch, dropout):
    plain, fused = models(tiny_lm_dir, tables, dropout)
    loss_plain, grads_plain = loss_and_grads(plain, batch)
    loss_fused, grads_fused = loss_and_grads(fused, batch)
    assert len(grads_plain) == len(grads_fused) > 0
    torch.testing.assert_close(loss_fused, loss_plain, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads_plain, grads_fused, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_dropout_changes_the_loss_the_same_way(tiny_lm_dir, tables, batch):
    """The dropout masks really differ between two seeds, so the match above is not a no-op."""
    _, fused = models(tiny_lm_dir, tables, dropout=0.5)
    assert not torch.equal(loss_and_grads(fused, batch, seed=3)[0], loss_and_grads(fused, batch, seed=4)[0])


def test_bf16_autocast_close_to_peft(tiny_lm_dir, tables, batch):
    plain, fused = models(tiny_lm_dir, tables)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden_plain, hidden_fused = plain.hidden_states(batch), fused.hidden_states(batch)
        loss_plain, loss_fused = plain(batch).loss, fused(batch).loss
    assert hidden_fused.dtype == hidden_plain.dtype
    torch.testing.assert_close(loss_fused.float(), loss_plain.float(), rtol=2e-2, atol=2e-2)


def test_disabled_and_merged_adapters_fall_back_to_peft(tiny_lm_dir, tables, batch):
    plain, fused = models(tiny_lm_dir, tables)
    plain.eval(), fused.eval()
    with torch.no_grad():
        adapted = fused.hidden_states(batch)
        with fused.peft_model.disable_adapter():
            base = fused.hidden_states(batch)
        with plain.peft_model.disable_adapter():
            torch.testing.assert_close(base, plain.hidden_states(batch))
        assert not torch.allclose(base, adapted)  # LoRA B is non-zero: the adapters do change the output
        fused.peft_model.merge_adapter()
        torch.testing.assert_close(fused.hidden_states(batch), adapted, rtol=1e-4, atol=1e-5)
        fused.peft_model.unmerge_adapter()
        torch.testing.assert_close(fused.hidden_states(batch), adapted, rtol=1e-5, atol=1e-6)


def test_checkpoints_from_before_the_fused_forward_reload_with_peft_s(tiny_lm_dir, tables, tmp_path):
    import yaml

    from llmrec.tmf.model import MODEL_CONFIG_FILE

    _, fused = models(tiny_lm_dir, tables)
    fused.save_pretrained(tmp_path / "new")
    assert type(lora_layers(TMFModel.from_pretrained(tmp_path / "new", tables))[0]) is FusedLoraLinear
    fused.save_pretrained(tmp_path / "old")
    config_file = tmp_path / "old" / MODEL_CONFIG_FILE
    saved = yaml.safe_load(config_file.read_text())
    del saved["lora"]["fused"]  # as written before the setting existed
    config_file.write_text(yaml.safe_dump(saved))
    assert type(lora_layers(TMFModel.from_pretrained(tmp_path / "old", tables))[0]) is LoraLinear
    reloaded = TMFModel.from_pretrained(tmp_path / "old", tables, overrides=["lora.fused=true"])
    assert type(lora_layers(reloaded)[0]) is FusedLoraLinear


def test_bf16_base_weights_are_cast_once_and_recast_when_they_change(tiny_lm_dir, tables, batch):
    """Under bf16 autocast the frozen base weights are cast once and kept: the same loss and gradients to the
    bit as a fresh cast, one copy per layer across passes, a new copy after an in-place change (merge /
    unmerge, loading), and a copy made in inference mode (ranking during training) serves training."""
    _, fused = models(tiny_lm_dir, tables)
    layer = lora_layers(fused)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_first, grads_first = loss_and_grads(fused, batch)
        cast = layer._base_weight_cast[1]
        assert cast.dtype == torch.bfloat16 and torch.equal(cast, layer.base_layer.weight.to(torch.bfloat16))
        loss_again, grads_again = loss_and_grads(fused, batch)
        assert layer._base_weight_cast[1] is cast  # kept, not cast again
        assert torch.equal(loss_first, loss_again)
        assert all(torch.equal(a, b) for a, b in zip(grads_first, grads_again, strict=True))
        for module in lora_layers(fused):  # without the kept copies: the same numbers, cast afresh
            del module.__dict__["_base_weight_cast"]
        loss_fresh, grads_fresh = loss_and_grads(fused, batch)
        assert torch.equal(loss_fresh, loss_first) and all(torch.equal(a, b)
                                                           for a, b in zip(grads_first, grads_fresh, strict=True))

        with torch.no_grad():
            layer.base_layer.weight.mul_(2.0)  # an in-place change of a frozen weight (what merging does)
        changed, _ = loss_and_grads(fused, batch)
        assert not torch.equal(changed, loss_first)
        assert torch.equal(layer._base_weight_cast[1], layer.base_layer.weight.to(torch.bfloat16))
        with torch.no_grad():
            layer.base_layer.weight.mul_(0.5)

        for module in lora_layers(fused):
            module.__dict__.pop("_base_weight_cast", None)
        fused.eval()
        with torch.inference_mode():
            fused.hidden_states(batch)  # the copies are made here, in inference mode
        fused.train()
        loss_after_eval, _ = loss_and_grads(fused, batch)  # inference tensors could not be saved for backward
    assert torch.equal(loss_after_eval, loss_first)
    assert layer._base_weight_in(torch.float32) is layer.base_layer.weight  # fp32: the weight itself, no copy


def test_kept_casts_can_be_turned_off(tiny_lm_dir, tables, batch):
    cfg = tiny_model_config(tiny_lm_dir)
    cfg.lora.keep_cast_weights = False
    model = TMFModel(cfg, tables).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(batch).loss.backward()
    layer = lora_layers(model)[0]
    assert type(layer) is FusedLoraLinear and "_base_weight_cast" not in layer.__dict__

