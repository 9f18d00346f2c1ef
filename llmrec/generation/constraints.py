"""Guided choice: decoding restricted to the candidates' answers (a prefix trie of token ids).

TMF asks the LLM to "choose only one item from the candidates" (Fig. 3) and measures how often it
does (the valid ratio, §5.1). Constrained decoding is an optional extra, not in the paper: at every
step only tokens that continue some candidate's answer are allowed, so every output names exactly one
candidate and the valid ratio is 1 by construction. The answers are tokenized exactly as in training
(``TMFCollator.encode`` with ``with_answer=True``: ``" <name>"`` then the end token), so the allowed
sequences are the ones the model was trained to emit. Report constrained and free runs separately.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any


def candidate_answer_ids(prompt: Any, answer_collator: Any) -> list[list[int]]:
    """Token ids of each candidate's answer (name + end token), as the collator appends them."""
    if not answer_collator.with_answer or answer_collator.renderer is None:
        raise ValueError("candidate_answer_ids needs a TMFCollator with with_answer=True and a renderer")
    renderer = answer_collator.renderer
    out = []
    for k, item in enumerate(prompt.candidates):
        encoded = answer_collator.encode(dataclasses.replace(prompt, answer=renderer.item_name(item),
                                                             target_index=k))
        out.append(list(encoded.input_ids[len(encoded.input_ids) - encoded.n_labels:]))
    return out


class CandidateTrie:
    """The next tokens allowed after each prefix of the candidates' answer token sequences."""

    def __init__(self, sequences: Sequence[Sequence[int]]):
        if not sequences or any(len(s) == 0 for s in sequences):
            raise ValueError("CandidateTrie needs at least one non-empty token sequence")
        self.next_tokens: dict[tuple[int, ...], list[int]] = {}
        children: dict[tuple[int, ...], set[int]] = {}
        for seq in sequences:
            seq = [int(t) for t in seq]
            for depth in range(len(seq)):
                children.setdefault(tuple(seq[:depth]), set()).add(seq[depth])
        self.next_tokens = {prefix: sorted(tokens) for prefix, tokens in children.items()}

    @classmethod
    def for_prompt(cls, prompt: Any, answer_collator: Any) -> CandidateTrie:
        return cls(candidate_answer_ids(prompt, answer_collator))

    def allowed(self, generated: Sequence[int], pad_id: int) -> list[int]:
        """Tokens allowed after ``generated``; a finished answer (past its end token) may only pad."""
        return self.next_tokens.get(tuple(int(t) for t in generated), [int(pad_id)])
