"""HF generation from slot-filled inputs_embeds: batching, slots, stopping, guided choice.

Real PEFT model (tiny random Llama, SmolLM2 tokenizer), real prompts of the synthetic shop.
"""

from __future__ import annotations

import copy

import pytest
import torch

from llmrec.generation.constraints import CandidateTrie, candidate_answer_ids
from llmrec.generation.hf import FirstLineStopper, GenerationSettings, HFGenerator
from llmrec.metrics import parse_generation


def test_batched_left_padded_greedy_equals_one_by_one(tmf_model, collator_pair, hard_prompts):
    prompt_collator, _ = collator_pair
    generator = HFGenerator(tmf_model, prompt_collator, GenerationSettings(max_new_tokens=8))
    batch = prompt_collator(hard_prompts)
    assert (batch["attention_mask"] == 0).any(), "the prompts should need left padding"
    assert (batch["attention_mask"][:, -1] == 1).all()
    batched = generator.generate_ids(hard_prompts)
    alone = [generator.generate_ids([p])[0] for p in hard_prompts]
    assert batched == alone
    assert all(len(ids) > 0 for ids in batched)
    assert len({tuple(ids) for ids in batched}) > 1  # different prompts, different continuations


def test_slot_vectors_change_the_logits_and_the_output(tmf_model, collator_pair, hard_prompts):
    prompt_collator, _ = collator_pair
    batch = prompt_collator(hard_prompts)

    def last_logits(model):
        embeds = model.embed_inputs(batch)
        out = model.peft_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"])
        return out.logits[:, -1]

    with torch.no_grad():
        base = last_logits(tmf_model)
        changed = copy.deepcopy(tmf_model)
        for param in list(changed.item_adaptor.parameters()) + list(changed.behavior_adaptor.parameters()):
            param.add_(torch.randn_like(param))
        other = last_logits(changed)
        # the text tokens alone (slot positions left as placeholder embeddings) differ as well
        plain = tmf_model.peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, -1]
    assert (base - other).abs().max() > 1e-2
    assert (base - plain).abs().max() > 1e-2
    settings = GenerationSettings(max_new_tokens=6)
    ours = HFGenerator(tmf_model, prompt_collator, settings).generate_ids(hard_prompts)
    theirs = HFGenerator(changed, prompt_collator, settings).generate_ids(hard_prompts)
    assert ours != theirs


def test_generation_stops_after_the_first_non_blank_line(tokenizer):
    stopper = FirstLineStopper(tokenizer)
    eos = tokenizer.eos_token_id

    def kept(text: str) -> str:
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        return tokenizer.decode(ids[0, :stopper.lengths(ids, [eos])[0]])

    assert kept(" Red tent\nBlue tent") == " Red tent\n"
    assert kept("\n\n Red tent\nmore") == "\n\n Red tent\n"  # leading blank lines do not stop it
    assert kept(" Red tent") == " Red tent"  # no line break, no end token: everything
    ids = torch.tensor([tokenizer(" Red tent", add_special_tokens=False)["input_ids"] + [eos, 5, 6]])
    assert stopper.lengths(ids, [eos]) == [ids.shape[1] - 2]  # cut right after the end token


def test_every_output_is_cut_at_its_first_line(tmf_model, collator_pair, hard_prompts, tokenizer):
    """A random model rarely emits a line break, so the LM head is scripted: row r must emit script[r] token by
    token. Each output is then its first non-blank line (or ends at the end token), and generation stops as soon
    as every row is done instead of running to max_new_tokens (catches a stopping criterion that never fires,
    or one that fires on leading blank lines)."""
    generator = HFGenerator(tmf_model, collator_pair[0], GenerationSettings(max_new_tokens=24))

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    scripts = [ids(" Red tent\nBlue tent\n" + " more" * 30),
               ids("\n\n Camping Tent\nnext" + " more" * 30),  # leading blank lines do not end the answer
               ids(" Yoga Mat") + [generator.eos_ids[0]] + ids(" more" * 30)]
    expected = [" Red tent\n", "\n\n Camping Tent\n", " Yoga Mat"]
    steps = []

    def force_script(module, args, logits):
        k = len(steps)
        steps.append(k)
        forced = torch.full_like(logits[:, -1], -1e9)
        for row, script in enumerate(scripts):
            forced[row, script[k]] = 0.0
        logits = logits.clone()
        logits[:, -1] = forced
        return logits

    handle = tmf_model.causal_lm.get_output_embeddings().register_forward_hook(force_script)
    try:
        texts = generator.generate(hard_prompts[:3], batch_size=3, progress=False)
    finally:
        handle.remove()
    assert texts == expected
    assert len(steps) < 24  # stopped once the last row finished its line, not at max_new_tokens


def test_constrained_decoding_names_exactly_one_candidate(tmf_model, collator_pair, hard_prompts, renderer):
    prompt_collator, answer_collator = collator_pair
    generator = HFGenerator(tmf_model, prompt_collator, GenerationSettings(max_new_tokens=40, constrained=True),
                            answer_collator=answer_collator)
    texts = generator.generate(hard_prompts, batch_size=4, progress=False)
    for prompt, text in zip(hard_prompts, texts, strict=True):
        names = [renderer.item_name(c) for c in prompt.candidates]
        assert text.strip() in names
        assert parse_generation(text, names) is not None


def test_candidate_trie_follows_the_training_answer_tokens(collator_pair, hard_prompts, renderer):
    _, answer_collator = collator_pair
    prompt = hard_prompts[0]
    sequences = candidate_answer_ids(prompt, answer_collator)
    target = prompt.target_index
    encoded = answer_collator.encode(prompt)
    assert sequences[target] == encoded.input_ids[-encoded.n_labels:]  # the exact tokens the loss sees
    assert all(seq[-1] == answer_collator.eos_id for seq in sequences)
    trie = CandidateTrie(sequences)
    assert set(trie.allowed([], pad_id=0)) == {seq[0] for seq in sequences}
    walk = sequences[1][:-1]
    assert answer_collator.eos_id in trie.allowed(walk, pad_id=0)
    assert trie.allowed(sequences[1], pad_id=-7) == [-7]  # finished: only padding


def test_sampling_is_seeded(tmf_model, collator_pair, hard_prompts):
    settings = GenerationSettings(max_new_tokens=6, do_sample=True, temperature=1.5, seed=3)
    first = HFGenerator(tmf_model, collator_pair[0], settings).generate_ids(hard_prompts[:3])
    again = HFGenerator(tmf_model, collator_pair[0], settings).generate_ids(hard_prompts[:3])
    assert first == again


def test_wrong_collator_is_rejected(tmf_model, collator_pair):
    _, answer_collator = collator_pair
    with pytest.raises(ValueError, match="padding_side='left'"):
        HFGenerator(tmf_model, answer_collator)
    with pytest.raises(ValueError, match="answer_collator"):
        HFGenerator(tmf_model, collator_pair[0], GenerationSettings(constrained=True))
