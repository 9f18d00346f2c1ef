"""Batches of :class:`~llmrec.tmf.prompts.render.RenderedPrompt` for the TMF model (TMF §4.2-4.3).

The prompt's text is tokenized and every slot becomes one placeholder id (an
existing token: the vocabulary is never resized) flagged in ``item_slot_mask`` /
``behavior_slot_mask``. The answer (the target's name) and the end token are
appended with labels; every other position is labelled -100, so the loss is
Eq. 9-11's sum over the answer tokens only.

Tokenizing around slots (choices, also in docs/prompts.md):

* The text tokens of a prompt are those of its slot-free text, so the three tasks
  see identical text tokens and a hard prompt is exactly its easy prompt plus the
  slot placeholders. With a fast tokenizer (offsets), the slot-free text is
  tokenized whole and each slot goes right after the token that holds the last
  character before it. Where a title's last character merges with the text after
  the slot (SmolLM2's ``"),"`` in ``"Heat (1995), Jumanji"``), the slot comes after
  the merged token: ``Heat (1995),[MT_i] Jumanji``. Tokenizing the pieces apart
  would instead split ``"),"`` into two tokens, one more per candidate (10 of ~280
  tokens in an ML-100k prompt).
* A slow tokenizer (no offsets) tokenizes the segments one by one; a segment that
  does not start the sequence goes behind an anchor (``"\\n"``) whose ids are then
  removed, since SentencePiece (Llama-2) would otherwise add a word-start marker to
  every piece. Segments keep the spaces of the sentence, so only merges across a
  slot (above) differ from the slot-free text.
* The same anchor is used when the whole text does not start the sequence (chat
  template): byte-level BPE gives the same ids with or without it.
* Plain mode (default) is ``<bos?>prompt\\nAnswer: title<eos>``: the Fig. 3 format,
  right for base models (Llama-2-7B in the paper), fewest tokens, and the same
  text for HF and vLLM. ``chat_template: true`` puts the prompt in the
  tokenizer's user turn and the answer in the assistant turn (instruct models).

Over-long rows are re-rendered without their oldest history items (binary search
for the fewest dropped), never losing candidates or the answer;
``truncations`` counts truncated rows, ``dropped_history_items`` the items dropped.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from llmrec.tmf.prompts.render import PromptRenderer, RenderedPrompt, Slot

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
ANCHOR = "\n"
_TEXT, _ITEM, _BEHAVIOR = 0, 1, 2
_CHAT_SENTINEL = "\u2063PROMPT\u2063"


@dataclass
class EncodedPrompt:
    """Token ids of one row, the kind of each position, and how many trailing ids are labels."""

    input_ids: list[int]
    kinds: list[int]
    n_labels: int
    prompt: RenderedPrompt


class TMFCollator:
    """Turns rendered prompts into the TMF batch dict (see ``__call__``).

    ``renderer`` is needed only to shorten over-long prompts (and supplies
    ``chat_template`` from its config); ``max_length`` counts prompt, answer and
    end token; ``None`` means no limit. ``whole_text`` (true for fast tokenizers) says
    whether slots are placed by offsets in the whole text or between separately
    tokenized segments (module docstring).
    """

    def __init__(self, tokenizer: Any, renderer: PromptRenderer | None = None, max_length: int | None = None,
                 padding_side: str = "right", with_answer: bool = True, *, chat_template: bool | None = None,
                 placeholder_token_id: int | None = None, cache_size: int = 1 << 16):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be positive or None, got {max_length}")
        renderer_chat = None if renderer is None else renderer.config.chat_template
        if chat_template is None:
            chat_template = bool(renderer_chat)
        elif renderer_chat is not None and chat_template != renderer_chat:
            raise ValueError(f"chat_template={chat_template} disagrees with the renderer's config ({renderer_chat}); "
                             "the renderer appends the plain answer cue only when chat_template is false")
        self.tokenizer = tokenizer
        self.renderer = renderer
        self.max_length = max_length
        self.padding_side = padding_side
        self.with_answer = with_answer
        self.chat_template = chat_template
        self.truncations = 0
        self.dropped_history_items = 0
        self.eos_id = tokenizer.eos_token_id
        if with_answer and self.eos_id is None:
            raise ValueError("the tokenizer has no eos_token_id; the answer needs an end token")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        if self.pad_id is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token to pad with")
        self.placeholder_id = self._placeholder(placeholder_token_id)
        self._tokenize = functools.lru_cache(maxsize=cache_size)(self._tokenize_uncached)
        self.whole_text = bool(getattr(tokenizer, "is_fast", False))  # offsets: slots placed in the whole text
        self._anchor_ids = self._ids(ANCHOR)
        self._prefix_ids, self._suffix_ids = self._frame()

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers may pickle the collator
        state = dict(self.__dict__)
        state["_tokenize"] = state["_tokenize"].cache_info().maxsize
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        maxsize = state.pop("_tokenize")
        self.__dict__.update(state)
        self._tokenize = functools.lru_cache(maxsize=maxsize)(self._tokenize_uncached)

    # ---- tokenization -------------------------------------------------------------------------
    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _tokenize_uncached(self, text: str, at_start: bool) -> tuple[int, ...]:
        if at_start:
            return tuple(self._ids(text))
        anchored = self._ids(ANCHOR + text)
        n = len(self._anchor_ids)
        if anchored[:n] == self._anchor_ids:
            return tuple(anchored[n:])
        return tuple(self._ids(text))

    def _tokenize_with_starts(self, text: str, at_start: bool) -> tuple[list[int], list[int]]:
        """Ids of ``text`` and each token's first character in ``text`` (fast tokenizers only)."""
        def encode(value: str) -> tuple[list[int], list[int]]:
            out = self.tokenizer(value, add_special_tokens=False, return_offsets_mapping=True)
            return list(out["input_ids"]), [start for start, _ in out["offset_mapping"]]

        if not at_start:
            ids, starts = encode(ANCHOR + text)
            n = len(self._anchor_ids)
            if ids[:n] == self._anchor_ids:
                return ids[n:], [s - len(ANCHOR) for s in starts[n:]]
        return encode(text)

    def _placeholder(self, given: int | None) -> int:
        vocab = len(self.tokenizer)
        if given is None:
            tok = self.tokenizer
            given = next((i for i in (tok.unk_token_id, tok.pad_token_id, tok.eos_token_id) if i is not None), None)
            if given is None:
                raise ValueError("the tokenizer has no unk/pad/eos token; pass placeholder_token_id")
        if not 0 <= given < vocab:
            raise ValueError(f"placeholder_token_id {given} is outside the vocabulary (size {vocab})")
        return int(given)

    def _frame(self) -> tuple[list[int], list[int]]:
        """Ids before and after the prompt: the tokenizer's own start tokens, or the chat turn."""
        if not self.chat_template:
            with_special = list(self.tokenizer("hello", add_special_tokens=True)["input_ids"])
            plain = self._ids("hello")
            start = next((s for s in range(len(with_special) - len(plain) + 1)
                          if with_special[s:s + len(plain)] == plain), 0)
            return with_special[:start], []
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("chat_template=True but the tokenizer has no chat template")
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": _CHAT_SENTINEL}], tokenize=False,
                                                  add_generation_prompt=True)
        if text.count(_CHAT_SENTINEL) != 1:
            raise ValueError("the tokenizer's chat template does not place the user message exactly once")
        before, after = text.split(_CHAT_SENTINEL)
        return list(self._tokenize(before, True)), list(self._tokenize(after, False))

    # ---- one row ------------------------------------------------------------------------------
    def encode(self, prompt: RenderedPrompt, row: int = 0) -> EncodedPrompt:
        """Ids and position kinds of one prompt (with its answer when ``with_answer``); no truncation."""
        ids, kinds = list(self._prefix_ids), [_TEXT] * len(self._prefix_ids)
        at_start = not self.chat_template  # the prompt starts the text (after <bos>, if any)
        if self.whole_text:
            self._encode_whole(prompt.segments, at_start, ids, kinds)
        else:
            self._encode_pieces(prompt.segments, at_start, ids, kinds)
        ids.extend(self._suffix_ids)
        kinds.extend([_TEXT] * len(self._suffix_ids))
        n_labels = 0
        if self.with_answer:
            if prompt.answer is None:
                raise ValueError(f"row {row}: with_answer=True but the prompt has no answer (target unknown)")
            answer = list(self._tokenize(prompt.answer if self.chat_template else " " + prompt.answer, False))
            answer.append(self.eos_id)
            ids.extend(answer)
            kinds.extend([_TEXT] * len(answer))
            n_labels = len(answer)
        return EncodedPrompt(ids, kinds, n_labels, prompt)

    def _encode_whole(self, segments: Sequence[str | Slot], at_start: bool, ids: list[int], kinds: list[int]) -> None:
        """Tokenize the slot-free text once; put each slot after the token holding the character before it."""
        texts, slots, position = [], [], 0
        for seg in segments:
            if isinstance(seg, Slot):
                slots.append((position, _slot_kind(seg)))
            elif seg:
                texts.append(seg)
                position += len(seg)
        text_ids, starts = self._tokenize_with_starts("".join(texts), at_start)
        j = 0
        for position, kind in slots:
            while j < len(text_ids) and starts[j] < position:
                ids.append(text_ids[j])
                kinds.append(_TEXT)
                j += 1
            ids.append(self.placeholder_id)
            kinds.append(kind)
        ids.extend(text_ids[j:])
        kinds.extend([_TEXT] * (len(text_ids) - j))

    def _encode_pieces(self, segments: Sequence[str | Slot], at_start: bool, ids: list[int], kinds: list[int]) -> None:
        """Slow tokenizers: tokenize each text segment on its own (behind the anchor unless it starts the text)."""
        for seg in segments:
            if isinstance(seg, Slot):
                ids.append(self.placeholder_id)
                kinds.append(_slot_kind(seg))
            elif seg:
                piece = self._tokenize(seg, at_start)
                at_start = False
                ids.extend(piece)
                kinds.extend([_TEXT] * len(piece))

    def _without_oldest(self, prompt: RenderedPrompt, k: int) -> RenderedPrompt:
        return self.renderer.render(prompt.history_items[k:], prompt.history_behaviors[k:], prompt.candidates,
                                    prompt.target_index, prompt.task, paraphrase=prompt.paraphrase)

    def fit(self, prompt: RenderedPrompt, row: int = 0) -> EncodedPrompt:
        """Encode, dropping the fewest oldest history items needed to fit ``max_length``."""
        encoded = self.encode(prompt, row)
        if self.max_length is None or len(encoded.input_ids) <= self.max_length:
            return encoded
        n = prompt.n_history_items
        if self.renderer is None:
            raise ValueError(f"row {row}: {len(encoded.input_ids)} tokens > max_length={self.max_length}; "
                             "pass the renderer to the collator so it can drop old history items")
        if len(prompt.history_items) != n:
            raise ValueError(f"row {row}: the prompt does not carry its history_items; cannot shorten it")
        best, lo, hi = None, 1, n
        while lo <= hi:  # the length never grows as items are dropped
            mid = (lo + hi) // 2
            candidate = self.encode(self._without_oldest(prompt, mid), row)
            if len(candidate.input_ids) <= self.max_length:
                best, hi = (mid, candidate), mid - 1
            else:
                lo = mid + 1
        if best is None:
            shortest = self.encode(self._without_oldest(prompt, n), row) if n else encoded
            raise ValueError(f"row {row}: even without history the prompt needs {len(shortest.input_ids)} tokens "
                             f"({len(prompt.candidates)} candidates + answer) > max_length={self.max_length}; "
                             "raise max_length or lower prompts.title_max_chars")
        dropped, encoded = best
        self.truncations += 1
        self.dropped_history_items += dropped
        if self.truncations & (self.truncations - 1) == 0:  # log at 1, 2, 4, 8, ... truncated rows
            logger.info("truncated %d over-long prompt(s) so far (%d oldest history items dropped; max_length=%d)",
                        self.truncations, self.dropped_history_items, self.max_length)
        return encoded

    # ---- batch --------------------------------------------------------------------------------
    def __call__(self, prompts: Sequence[RenderedPrompt]) -> dict[str, Any]:
        """The batch dict of the shared TMF interface.

        ``input_ids``, ``attention_mask``, ``labels`` (only with answers),
        ``item_slot_mask`` / ``behavior_slot_mask`` [B,T] bool; ``slot_items`` [B,N] and
        ``slot_behaviors`` [B,M] (indices in order of appearance, -1 padding);
        ``n_history_items``, ``n_slot_items`` [B]; ``candidates`` [B,C] (-1 padding);
        ``target_index`` [B] (-1 unknown); ``tasks`` and ``task`` (the shared task, or ``"mixed"``).
        """
        if not prompts:
            raise ValueError("cannot collate an empty batch")
        rows = [self.fit(p, r) for r, p in enumerate(prompts)]
        batch = len(rows)
        width = max(len(r.input_ids) for r in rows)
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
        kinds = torch.full((batch, width), -1, dtype=torch.long)
        for b, row in enumerate(rows):
            length = len(row.input_ids)
            start = width - length if self.padding_side == "left" else 0
            span = slice(start, start + length)
            input_ids[b, span] = torch.tensor(row.input_ids, dtype=torch.long)
            attention_mask[b, span] = 1
            kinds[b, span] = torch.tensor(row.kinds, dtype=torch.long)
            if row.n_labels:
                answer = slice(start + length - row.n_labels, start + length)
                labels[b, answer] = input_ids[b, answer]
        slot_items = [[s.index for s in r.prompt.slots("item")] for r in rows]
        slot_behaviors = [[s.index for s in r.prompt.slots("behavior")] for r in rows]
        tasks = [r.prompt.task for r in rows]
        out = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "item_slot_mask": kinds == _ITEM,
            "behavior_slot_mask": kinds == _BEHAVIOR,
            "slot_items": _pad_rows(slot_items),
            "n_history_items": torch.tensor([r.prompt.n_history_items for r in rows], dtype=torch.long),
            "n_slot_items": torch.tensor([len(s) for s in slot_items], dtype=torch.long),
            "slot_behaviors": _pad_rows(slot_behaviors),
            "candidates": _pad_rows([r.prompt.candidates for r in rows]),
            "target_index": torch.tensor([-1 if r.prompt.target_index is None else r.prompt.target_index
                                          for r in rows], dtype=torch.long),
            "tasks": tasks,
            "task": tasks[0] if len(set(tasks)) == 1 else "mixed",
        }
        if self.with_answer:
            out["labels"] = labels
        return out


def _slot_kind(slot: Slot) -> int:
    return _ITEM if slot.kind == "item" else _BEHAVIOR


def _pad_rows(rows: list[list[int]]) -> torch.Tensor:
    """Ragged integer rows as a [B, max_len] long tensor padded with -1."""
    out = torch.full((len(rows), max((len(r) for r in rows), default=0)), -1, dtype=torch.long)
    for b, row in enumerate(rows):
        if row:
            out[b, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out
