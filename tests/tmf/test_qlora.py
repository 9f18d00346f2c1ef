"""QLoRA on the real embedded SmolLM2-135M-Instruct: 4-bit NF4 and 8-bit LLM.int8 (bitsandbytes on this CPU).

For each scheme: the decoder's linear layers are bitsandbytes modules and only LoRA + fusion + adaptors train;
a hard-task batch (item and behavior slots filled by ``masked_scatter``) trains with falling loss; the
checkpoint reloads (the base re-quantized from the GGUF conversion cache) with bit-identical logits; the
reloaded model ranks candidates (packed ranking picks what the one-row-per-candidate reference picks; for
nf4 the scores agree to 2e-3) and generates (free and candidate-constrained). The trainer resumes a QLoRA run exactly.

bitsandbytes is part of ``make venv`` (the ``quant`` extra, pinned in requirements/cpu.lock): a missing one
fails these tests instead of skipping them. nf4 quantizes on the CPU in ~7 s per load (int8 ~2 s), 40-77 s on a
loaded machine; docs/training.md has the measurements.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tmf_testkit as kit  # registered by tests/conftest.py
import torch

from llmrec.config import ConfigError, load_config
from llmrec.data.candidates import load_candidates
from llmrec.generation.hf import GenerationSettings, HFGenerator
from llmrec.generation.ranking import candidate_log_likelihoods
from llmrec.tmf import lm
from llmrec.tmf.collator import TMFCollator
from llmrec.tmf.lm import DEFAULT_LM, LMConfig, check_quantization_runs_here, load_lm
from llmrec.tmf.model import MODEL_CONFIG_FILE, ModelConfig, TMFModel
from llmrec.tmf.prompts.render import PromptConfig, PromptRenderer, render_sample

pytestmark = pytest.mark.slow

# the class of a quantized linear layer's base weight module, per scheme
QUANTIZED_LINEAR = {"nf4": "Linear4bit", "int8": "Linear8bitLt"}
# get_memory_footprint() of the quantized SmolLM2 + LoRA (fp32 SmolLM2: 513 MB; the fp32 tied embedding
# 49152 x 576 alone is 108 MiB and stays unquantized)
FOOTPRINT_MIB = {"nf4": (150, 175), "int8": (200, 225)}


def qlora_config(scheme: str) -> ModelConfig:
    cfg = ModelConfig(lm=LMConfig(quantization=scheme))
    assert cfg.lm.name_or_path == DEFAULT_LM
    cfg.lora.dropout = 0.0  # train-mode losses are then the same function as eval-mode ones
    return cfg


@pytest.fixture(scope="module", params=["nf4", "int8"])
def qlora(request, tables):
    torch.manual_seed(0)
    return request.param, TMFModel(qlora_config(request.param), tables)


@pytest.fixture(scope="module")
def renderer(shop):
    return PromptRenderer(PromptConfig(sample_paraphrases=False), shop)


def hard_batch(model, shop, renderer, rows=(0,)):
    cands = load_candidates(shop, "train", size=5)
    train = shop.samples["train"]
    prompts = [renderer.render(train[r]["history_items"], train[r]["history_behaviors"], cands.items[r],
                               int(cands.target_index[r]), "hard", np.random.default_rng(r)) for r in rows]
    return TMFCollator(model.tokenizer, renderer, max_length=512)(prompts)


def test_quantized_base_frozen_and_adapters_trainable(qlora):
    scheme, model = qlora
    q_proj = model.causal_lm.model.layers[0].self_attn.q_proj
    assert type(q_proj.base_layer).__name__ == QUANTIZED_LINEAR[scheme]
    assert model.causal_lm.config.quantization_config.quant_method == "bitsandbytes"
    footprint = model.causal_lm.get_memory_footprint() / 2**20
    print(f"SmolLM2 {scheme} + LoRA footprint: {footprint:.1f} MiB")
    low, high = FOOTPRINT_MIB[scheme]
    assert low <= footprint <= high
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.split(".")[0] in ("fusion", "item_adaptor", "behavior_adaptor")
                             for n in trainable)
    assert all(p.requires_grad for group in model.parameter_groups().values() for p in group)


def test_hard_step_trains_every_part_and_loss_falls(qlora, shop, renderer):
    """Two AdamW steps on one hard-task row (item + behavior slots): every group of Eq. 11 gets gradient
    through the quantized layers, and the loss of that row falls."""
    scheme, model = qlora
    batch = hard_batch(model, shop, renderer, rows=(0,))
    assert batch["item_slot_mask"].any() and batch["behavior_slot_mask"].any()
    groups = model.parameter_groups()
    optimizer = torch.optim.AdamW([p for g in groups.values() for p in g], lr=2e-3)
    model.train()
    losses = []
    for step in range(2):
        loss = model(batch).loss
        losses.append(float(loss.detach()))
        loss.backward()
        if step == 0:
            for name, params in groups.items():
                assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params), name
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        losses.append(float(model(batch).loss))
    print(f"SmolLM2 {scheme} hard-task loss over 2 steps: {[round(x, 4) for x in losses]}")
    assert math.isfinite(losses[0]) and losses[0] < math.log(model.vocab_size)  # pretrained, not noise
    assert losses[-1] < losses[0] - 0.1


@pytest.fixture(scope="module")
def reloaded(qlora, tables, shop, renderer, tmp_path_factory):
    """The trained model's checkpoint, reloaded: ``(scheme, trained model, reloaded model, folder)``."""
    scheme, model = qlora
    folder = model.save_pretrained(tmp_path_factory.mktemp(f"qlora-{scheme}") / "ckpt")
    return scheme, model, TMFModel.from_pretrained(folder, tables).eval(), folder


def test_checkpoint_reloads_with_identical_logits(reloaded, shop, renderer):
    scheme, model, again, folder = reloaded
    saved = load_config(ModelConfig, folder / MODEL_CONFIG_FILE)
    assert saved.lm.quantization == scheme
    # the adapter holds LoRA only (a few MB), never the quantized base
    assert (folder / "adapter_model.safetensors").stat().st_size < 10 * 2**20
    assert type(again.causal_lm.model.layers[0].self_attn.q_proj.base_layer).__name__ == QUANTIZED_LINEAR[scheme]
    batch = hard_batch(model, shop, renderer, rows=(1,))
    model.eval()
    with torch.no_grad():
        before = model(batch, return_logits=True).logits
        after = again(batch, return_logits=True).logits
    assert torch.equal(before, after)


def test_ranking_and_generation_from_the_checkpoint(reloaded, shop, renderer):
    scheme, _, model, _ = reloaded
    cands = load_candidates(shop, "test", size=5)
    prompts = [render_sample(renderer, shop, "test", 0, cands, "hard")]
    answer_collator = TMFCollator(model.tokenizer, renderer, None, padding_side="right", with_answer=True)
    packed = candidate_log_likelihoods(model, answer_collator, renderer, prompts, batch_size=5, progress=False)
    full = candidate_log_likelihoods(model, answer_collator, renderer, prompts, batch_size=5, progress=False,
                                     method="full")
    print(f"SmolLM2 {scheme} candidate scores: packed {packed.round(3)}, full {full.round(3)}")
    assert packed.shape == (1, 5) and np.isfinite(packed).all() and (packed < 0).all()
    assert len({round(float(x), 3) for x in packed[0]}) == 5  # the candidates are told apart
    assert packed.argmax(1).tolist() == full.argmax(1).tolist()
    if scheme == "nf4":  # weights-only quantization: the same scores however the rows are batched
        np.testing.assert_allclose(packed, full, rtol=0, atol=2e-3)
    # (int8 is not batch-invariant: LLM.int8 keeps the activation columns with an outlier anywhere in the batch
    # in fp16 and quantizes the rest, so a packed row and five separate rows score differently, here by 0.2-3.5)

    prompt_collator = TMFCollator(model.tokenizer, renderer, None, padding_side="left", with_answer=False)
    free = HFGenerator(model, prompt_collator, GenerationSettings(max_new_tokens=6)).generate(prompts, progress=False)
    assert len(free) == 1 and free[0].strip()
    constrained = HFGenerator(model, prompt_collator, GenerationSettings(max_new_tokens=40, constrained=True),
                              answer_collator=answer_collator).generate(prompts, progress=False)
    assert constrained[0].strip() in [renderer.item_name(c) for c in prompts[0].candidates]
    print(f"SmolLM2 {scheme}: generated {free}, constrained {constrained}")


def test_quantization_names_and_errors(monkeypatch):
    """nf4 / int8 and their older names 4bit / 8bit; clear errors where a quantized load cannot run."""
    assert [LMConfig(quantization=q).quantization_scheme for q in ("nf4", "4bit", "int8", "8bit", "none")] == [
        "nf4", "nf4", "int8", "int8", "none"]
    with pytest.raises(ConfigError, match="quantization"):
        load_config(ModelConfig, None, ["lm.quantization=fp4"])
    monkeypatch.setattr(lm.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(lm, "native_bf16", lambda device="cpu": False)
    with pytest.raises(ConfigError, match="without native bf16"):
        load_lm(LMConfig(quantization="nf4", dtype="bfloat16"))
    check_quantization_runs_here(LMConfig(quantization="nf4", dtype="float32"))  # fp32 compute: fine
    real_find_spec = lm.importlib.util.find_spec
    monkeypatch.setattr(lm.importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a))
    with pytest.raises(ImportError, match=r"llmrec\[quant\]"):
        load_lm(LMConfig(quantization="int8"))


def _reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.mark.parametrize("scheme", ["nf4", "int8"])
def test_trainer_resumes_a_qlora_run_exactly(scheme, tmp_path, shop, tables):
    """As tests/train's LoRA resume test, on the quantized SmolLM2 with hard-task steps: 2 steps straight ==
    1 step, stop, resume, 1 step (weights, optimizer state, losses); each run re-quantizes the base."""
    import json

    from safetensors.torch import load_file

    from llmrec.train import checkpoint as ckpt
    from llmrec.train.config import load_train_config
    from llmrec.train.loop import train

    def config(name):
        return load_train_config(None, [
            f"output_dir={tmp_path / name}", f"model.lm.quantization={scheme}", "model.lora.dropout=0.0",
            "max_steps=2", "batch_size=1", "gradient_accumulation_steps=1", "save_every=1", "eval.every=100",
            "eval.n_samples=1", "eval.candidates.size=5", "train_candidates.size=5", "curriculum.fixed_task=hard",
            "precision=fp32", "max_length=512"])

    _reset_accelerate()
    straight = train(config("straight"), shop, tables)
    _reset_accelerate()
    first = train(config("resumed"), shop, tables, stop_after=1)
    assert first.name == "step-00000001"
    _reset_accelerate()
    resumed = train(config("resumed"), shop, tables, resume="auto")
    _reset_accelerate()
    assert straight.name == resumed.name == "step-00000002"
    for name in ("adapter_model.safetensors", "adaptors.safetensors"):
        a, b, one = (load_file(str(folder / name)) for folder in (straight, resumed, first))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        assert any(not torch.equal(one[k], a[k]) for k in a), name  # step 2 changed the weights
    kit.assert_same_optimizer_state(straight, resumed)
    lines_a = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    lines_b = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines_b if "loss" in r] == [1, 2]
    assert [r["loss"] for r in lines_a if "loss" in r] == [r["loss"] for r in lines_b if "loss" in r]
    state = json.loads((resumed / ckpt.STATE_FILE).read_text())
    assert state["curriculum"]["task_counts"]["hard"] == 2
