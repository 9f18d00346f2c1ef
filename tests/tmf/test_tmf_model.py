"""TMFModel on a tiny random Llama with the real SmolLM2 tokenizer, real prompts, collator and PEFT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tmf_testkit import tiny_model_config

from adapters.fusion import FusionConfig, item_attention_mask
from llmrec.config import ConfigError, load_config
from llmrec.data.candidates import load_candidates
from llmrec.tmf.collator import TMFCollator
from llmrec.tmf.lm import LMConfig, resolve_source
from llmrec.tmf.model import ADAPTORS_FILE, ModalityTables, ModelConfig, TMFModel
from llmrec.tmf.prompts.render import PromptConfig, PromptRenderer


@pytest.fixture(scope="module")
def renderer(shop):
    return PromptRenderer(PromptConfig(), shop)


def make_model(tiny_lm_dir, tables, **overrides) -> TMFModel:
    torch.manual_seed(0)
    return TMFModel(tiny_model_config(tiny_lm_dir, **overrides), tables)


def shop_batch(shop, renderer, tokenizer, tasks, rows=(0, 1, 2)):
    """Collated training rows of the synthetic shop, one task per row."""
    train = shop.samples["train"]
    cands = load_candidates(shop, "train", size=5)
    prompts = [renderer.render(train[r]["history_items"], train[r]["history_behaviors"], cands.items[r],
                               int(cands.target_index[r]), task, np.random.default_rng(r))
               for r, task in zip(rows, tasks, strict=True)]
    return TMFCollator(tokenizer, renderer, max_length=None)(prompts)


def test_slot_injection_equals_hand_built_embeddings(shop, renderer, tokenizer, tiny_lm_dir, tables):
    model = make_model(tiny_lm_dir, tables).eval()
    batch = shop_batch(shop, renderer, tokenizer, ["hard", "medium", "hard"])
    got = model.embed_inputs(batch)

    # by hand: token embeddings, then each slot position overwritten one by one, row by row
    expected = model.causal_lm.get_input_embeddings()(batch["input_ids"]).clone()
    for b in range(batch["input_ids"].shape[0]):
        n = int(batch["n_slot_items"][b])
        if n:
            items = batch["slot_items"][b, :n]
            mask = torch.stack([model.modality_mask_table[i] for i in items])[None]
            attn = item_attention_mask(batch["n_history_items"][b:b + 1], batch["n_slot_items"][b:b + 1], n)
            fused = model.fusion(model.image_table[items][None], model.text_table[items][None],
                                 model.graph_table[items][None], mask, attn)
            vectors = model.item_adaptor(fused)[0]
            for j, pos in enumerate(batch["item_slot_mask"][b].nonzero()[:, 0]):
                expected[b, pos] = vectors[j]
        behaviors = [int(x) for x in batch["slot_behaviors"][b] if x >= 0]
        for j, pos in enumerate(batch["behavior_slot_mask"][b].nonzero()[:, 0]):
            expected[b, pos] = model.behavior_adaptor(model.behavior_table[behaviors[j]])
    assert batch["item_slot_mask"].sum() > 0 and batch["behavior_slot_mask"].sum() > 0
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    text = ~(batch["item_slot_mask"] | batch["behavior_slot_mask"])
    assert torch.equal(got[text], model.causal_lm.get_input_embeddings()(batch["input_ids"])[text])


def test_vocabulary_is_never_resized(shop, renderer, tokenizer, tiny_lm_dir, tables):
    vocab = len(tokenizer)
    model = make_model(tiny_lm_dir, tables)
    batch = shop_batch(shop, renderer, tokenizer, ["hard"] * 3)
    model(batch).loss.backward()
    assert len(tokenizer) == vocab
    assert model.causal_lm.get_input_embeddings().weight.shape[0] == vocab
    assert model.causal_lm.get_output_embeddings().weight.shape[0] == vocab
    assert not model.causal_lm.get_input_embeddings().weight.requires_grad


def test_slot_count_mismatch_is_an_error(shop, renderer, tokenizer, tiny_lm_dir, tables):
    model = make_model(tiny_lm_dir, tables)
    batch = shop_batch(shop, renderer, tokenizer, ["hard"] * 3)
    batch["n_slot_items"] = batch["n_slot_items"].clone()
    batch["n_slot_items"][1] -= 1
    with pytest.raises(ValueError, match="row 1: .* item slot positions"):
        model.embed_inputs(batch)


def _groups_with_gradient(model) -> set[str]:
    return {name for name, params in model.parameter_groups().items()
            if any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params)}


@pytest.mark.parametrize("tasks, expected", [
    (["easy"] * 3, {"lora"}),  # Eq. 9
    (["medium"] * 3, {"lora", "behavior_adaptor"}),  # Eq. 10
    (["hard"] * 3, {"lora", "behavior_adaptor", "fusion", "item_adaptor"}),  # Eq. 11
])
def test_gradient_reaches_exactly_the_task_parameters(shop, renderer, tokenizer, tiny_lm_dir, tables, tasks,
                                                      expected):
    model = make_model(tiny_lm_dir, tables)
    model(shop_batch(shop, renderer, tokenizer, tasks)).loss.backward()
    assert _groups_with_gradient(model) == expected


def test_medium_rows_with_item_slots_do_not_train_the_fusion(shop, renderer, tokenizer, tiny_lm_dir, tables):
    """Routing follows the task, not the prompt: hard prompts relabelled medium leave fusion and Psi_i alone."""
    model = make_model(tiny_lm_dir, tables)
    batch = shop_batch(shop, renderer, tokenizer, ["hard"] * 3)
    assert batch["item_slot_mask"].any()
    batch["tasks"], batch["task"] = ["medium"] * 3, "medium"
    model(batch).loss.backward()
    assert _groups_with_gradient(model) == {"lora", "behavior_adaptor"}


def test_mixed_task_rows_route_per_row(shop, renderer, tokenizer, tiny_lm_dir, tables):
    """A hard row and a medium row with item slots: the fusion gradient equals the hard row's alone."""
    batch = shop_batch(shop, renderer, tokenizer, ["hard", "hard"], rows=(3, 4))
    mixed = dict(batch, tasks=["hard", "medium"], task="mixed")
    model = make_model(tiny_lm_dir, tables)
    per_token = model.sequence_log_likelihood(mixed)
    (-per_token[0]).backward()  # only the hard row contributes
    reference = [p.grad.clone() for p in model.parameter_groups()["fusion"]]
    model.zero_grad()
    (-model.sequence_log_likelihood(mixed).sum()).backward()  # both rows; the medium row must add nothing
    for ref, p in zip(reference, model.parameter_groups()["fusion"], strict=True):
        torch.testing.assert_close(p.grad, ref)


def test_labelled_positions_only_gives_the_full_loss_and_gradient(shop, renderer, tokenizer, tiny_lm_dir, tables):
    model = make_model(tiny_lm_dir, tables)
    batch = shop_batch(shop, renderer, tokenizer, ["hard", "easy", "medium"])
    out = model(batch, return_logits=True)
    out.loss.backward()
    ours = [p.grad.clone() for p in model.parameter_groups()["lora"]]
    assert out.logits.shape == (int((batch["labels"][:, 1:] != -100).sum()), len(tokenizer))
    model.zero_grad()
    full = model.peft_model(inputs_embeds=model.embed_inputs(batch), attention_mask=batch["attention_mask"],
                            use_cache=False).logits  # [B, T, V]: what a plain training loop computes
    reference = F.cross_entropy(full[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(), ignore_index=-100)
    reference.backward()
    torch.testing.assert_close(out.loss, reference, rtol=1e-5, atol=1e-6)
    for g, p in zip(ours, model.parameter_groups()["lora"], strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-7)


def test_save_and_reload_give_identical_logits(shop, renderer, tokenizer, tiny_lm_dir, tables, tmp_path):
    model = make_model(tiny_lm_dir, tables, match_token_scale=True)
    batch = shop_batch(shop, renderer, tokenizer, ["hard", "medium", "easy"])
    optimizer = torch.optim.AdamW([p for g in model.parameter_groups().values() for p in g], lr=1e-2)
    model(batch).loss.backward()
    optimizer.step()  # LoRA B is zero at init: one step makes the adapter matter
    model.eval()
    with torch.no_grad():
        before = model(batch, return_logits=True).logits
    model.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "adapter_model.safetensors").is_file() and (tmp_path / "ckpt" / ADAPTORS_FILE).is_file()
    reloaded = TMFModel.from_pretrained(tmp_path / "ckpt", tables).eval()
    with torch.no_grad():
        after = reloaded(batch, return_logits=True).logits
    assert torch.equal(before, after)
    fresh = make_model(tiny_lm_dir, tables, match_token_scale=True).eval()
    with torch.no_grad():
        assert not torch.equal(fresh(batch, return_logits=True).logits, before)


def test_reload_with_other_lora_settings_fails_clearly(shop, tiny_lm_dir, tables, tmp_path):
    make_model(tiny_lm_dir, tables).save_pretrained(tmp_path / "ckpt")
    with pytest.raises((ValueError, RuntimeError)):
        TMFModel.from_pretrained(tmp_path / "ckpt", tables, overrides=["lora.r=4"])


def test_missing_image_modality_is_masked_not_a_crash(shop, renderer, tokenizer, tiny_lm_dir):
    from tmf_testkit import random_tables

    text_graph_only = random_tables(shop.n_items, shop.n_behaviors, image=False)
    model = make_model(tiny_lm_dir, text_graph_only)
    assert not model.modality_mask_table[:, 0].any() and model.modality_mask_table[:, 1:].all()
    loss = model(shop_batch(shop, renderer, tokenizer, ["hard"] * 3)).loss
    assert torch.isfinite(loss)


def test_masked_modalities_train_without_a_modality_and_survive_a_reload(shop, renderer, tokenizer, tiny_lm_dir,
                                                                        tables, tmp_path):
    """model.masked_modalities: the image table no longer reaches the loss (other image rows, same loss), unlike
    the unmasked model; the setting is saved with the checkpoint, so the reloaded model is masked too."""
    from tmf_testkit import random_tables

    batch = shop_batch(shop, renderer, tokenizer, ["hard"] * 3)
    other_images = ModalityTables(text=tables.text, graph=tables.graph,
                                  image=random_tables(shop.n_items, shop.n_behaviors, seed=7).image)
    losses = {}
    for masked in ([], ["image"]):
        for name, tabs in (("a", tables), ("b", other_images)):
            with torch.no_grad():
                losses[(tuple(masked), name)] = make_model(tiny_lm_dir, tabs, masked_modalities=masked)(batch).loss
    assert not torch.equal(losses[((), "a")], losses[((), "b")])  # images matter to the unmasked model
    assert torch.equal(losses[(("image",), "a")], losses[(("image",), "b")])
    masked = make_model(tiny_lm_dir, tables, masked_modalities=["image"])
    assert not masked.modality_mask_table[:, 0].any() and masked.modality_mask_table[:, 1:].all()
    masked.save_pretrained(tmp_path / "ckpt")
    reloaded = TMFModel.from_pretrained(tmp_path / "ckpt", tables)
    assert reloaded.cfg.masked_modalities == ["image"] and not reloaded.modality_mask_table[:, 0].any()


def test_masked_modalities_are_validated(tiny_lm_dir, shop):
    from tmf_testkit import random_tables

    for bad in (["image", "image"], ["sound"], ["image", "text", "graph"]):
        with pytest.raises(ConfigError, match="masked_modalities"):
            load_config(ModelConfig, None, [f"masked_modalities=[{','.join(bad)}]"])
    no_images = random_tables(shop.n_items, shop.n_behaviors, image=False)  # ML-100k-like: text + graph
    with pytest.raises(ValueError, match="no modality left"):
        make_model(tiny_lm_dir, no_images, masked_modalities=["text", "graph"])


def test_behavior_slots_without_behavior_table_fail_clearly(shop, renderer, tokenizer, tiny_lm_dir, tables):
    no_graph = ModalityTables(text=tables.text, image=tables.image, graph=None)
    model = make_model(tiny_lm_dir, no_graph)
    with pytest.raises(ValueError, match="no 'behavior' embeddings"):
        model(shop_batch(shop, renderer, tokenizer, ["medium"] * 3))


def test_lm_sources_resolve_or_fail_clearly(tmp_path, tiny_lm_dir):
    embedded = resolve_source(LMConfig())
    assert embedded.is_gguf and embedded.gguf_file.endswith(".gguf")
    assert resolve_source(LMConfig(name_or_path=str(tiny_lm_dir))).gguf_file is None
    assert (resolve_source(LMConfig(name_or_path="meta-llama/Llama-2-7b-hf")).folder_or_name
            == "meta-llama/Llama-2-7b-hf")
    with pytest.raises(FileNotFoundError, match="without config.json"):
        resolve_source(LMConfig(name_or_path=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        resolve_source(LMConfig(name_or_path=str(tmp_path / "missing.gguf")))


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(shop, renderer, tokenizer, tiny_lm_dir, tables):
    batch = shop_batch(shop, renderer, tokenizer, ["hard"] * 3)
    grads = []
    for checkpointing in (False, True):
        cfg = tiny_model_config(tiny_lm_dir)
        cfg.lm.gradient_checkpointing = checkpointing
        torch.manual_seed(0)
        model = TMFModel(cfg, tables).train()
        assert model.causal_lm.is_gradient_checkpointing == checkpointing
        model(batch).loss.backward()
        grads.append([p.grad for g in model.parameter_groups().values() for p in g])
    for plain, recomputed in zip(*grads, strict=True):
        torch.testing.assert_close(plain, recomputed, rtol=1e-5, atol=1e-7)


def test_llara_item_vectors_are_the_adapted_graph_embeddings(shop, renderer, tokenizer, tiny_lm_dir, tables, tmp_path):
    """fusion.enabled=false: an item slot holds item_adaptor(graph embedding), one projector (LLaRA)."""
    model = make_model(tiny_lm_dir, tables, fusion=FusionConfig(enabled=False)).eval()
    assert model.parameter_groups()["fusion"] == []
    batch = shop_batch(shop, renderer, tokenizer, ["hard", "hard", "hard"])
    embeds = model.embed_inputs(batch)
    items = torch.cat([batch["slot_items"][b, :int(batch["n_slot_items"][b])] for b in range(3)])
    expected = model.item_adaptor(model.graph_table[items])
    assert torch.allclose(embeds[batch["item_slot_mask"]], expected, atol=1e-6)
    model.save_pretrained(tmp_path)
    reloaded = TMFModel.from_pretrained(tmp_path, tables).eval()
    assert torch.equal(reloaded.embed_inputs(batch), embeds)


def test_routing_must_train_the_item_adaptor_wherever_it_trains_the_fusion():
    """_call drops a frozen row's input gradient; a task training the fusion but not the item adaptor would lose
    the fusion's gradient silently, so such a routing table is refused."""
    from llmrec.tmf.model import check_routing_is_nested
    from llmrec.tmf.tasks import TRAINABLE_BY_TASK

    check_routing_is_nested(TRAINABLE_BY_TASK)  # the shipped table (Eq. 9-11)
    broken = dict(TRAINABLE_BY_TASK, hard=frozenset({"lora", "fusion"}))
    with pytest.raises(ValueError, match="trains the fusion but not the item adaptor"):
        check_routing_is_nested(broken)
