"""Left-padded batched generation with Hugging Face ``generate`` from slot-filled ``inputs_embeds``.

TMF's generation process (§4.3, Fig. 1): the hybrid prompt (text tokens + item/behavior slot vectors,
built by :meth:`llmrec.tmf.model.TMFModel.embed_inputs`) is fed to the LoRA-adapted LLM, which writes the
name of the predicted item; the slot tokens are never part of the predicted tokens (they are not in
the vocabulary). Rows are left-padded (``TMFCollator(padding_side="left", with_answer=False)``), so
every row's next token follows its last prompt token; ``generate`` derives position ids from the
attention mask, hence a batched row generates exactly what it would alone (tested).

Stopping (choice, also in docs/inference.md): a row stops at the end token, after ``max_new_tokens``,
or as soon as its first non-blank line is complete (a token containing a line break after some
non-whitespace text). Blank lines before the answer do not stop it, because the parsing rule of
DESIGN.md (``llmrec.metrics.first_line``) skips them: the stored text always contains the whole first
line the metrics read. The decoded continuation is cut right after that stopping token.

``constrained=True`` restricts decoding to the candidates' answer token sequences (a prefix trie,
:mod:`llmrec.generation.constraints`): every output names exactly one candidate (guided choice).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, StoppingCriteriaList

from llmrec.config import ConfigError
from llmrec.devices import batch_to_device
from llmrec.generation.constraints import CandidateTrie

logger = logging.getLogger(__name__)


@dataclass
class GenerationSettings:
    """How continuations are decoded (shared by the HF and vLLM backends)."""

    max_new_tokens: int = 64
    """Upper bound on generated tokens per prompt (item names are short; 64 covers 80-character titles)."""
    do_sample: bool = False
    """False: greedy decoding (the default for HitRate@1); true: sampling with temperature / top_p."""
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    """Seeds sampling (batch ``k`` uses ``seed + k``; results depend on the batch size when sampling)."""
    constrained: bool = False
    """Decode only the candidates' names (guided choice): every output is valid."""

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0 or not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"temperature must be > 0 and top_p in (0, 1], got {self.temperature}, {self.top_p}")


class FirstLineStopper:
    """Per-token facts for stopping once the first non-blank line is complete.

    ``ends_line_after_text[t]``: token ``t`` has a line break after non-whitespace text of its own
    (``"Alien\\n"``); ``has_text[t]``: it has any non-whitespace; ``has_break[t]``: it holds a line break.
    A row stops at the first token that ends a line after text (its own or earlier tokens').
    """

    def __init__(self, tokenizer: Any):
        pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        self.has_text = torch.tensor([bool(p.strip()) for p in pieces])
        self.has_break = torch.tensor(["\n" in p or "\r" in p for p in pieces])
        self.ends_line_after_text = torch.tensor([_breaks_after_text(p) for p in pieces])

    def stop_mask(self, generated: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` bool: positions at which a row's first non-blank line is complete."""
        ids = generated.clamp(0, self.has_text.numel() - 1).cpu()
        text_before = torch.cumsum(self.has_text[ids].long(), dim=1) - self.has_text[ids].long() > 0
        return ((text_before & self.has_break[ids]) | self.ends_line_after_text[ids]).to(generated.device)

    def lengths(self, generated: torch.Tensor, eos_ids: Sequence[int]) -> list[int]:
        """Tokens to keep per row: up to and including the first stop or end token, else all."""
        ends = self.stop_mask(generated) | torch.isin(generated, torch.tensor(list(eos_ids), device=generated.device))
        any_end = ends.any(dim=1)
        first = ends.long().argmax(dim=1) + 1
        return torch.where(any_end, first, torch.full_like(first, generated.shape[1])).tolist()


def _breaks_after_text(piece: str) -> bool:
    stripped = piece.lstrip()
    return "\n" in stripped or "\r" in stripped


class _StopCriterion:
    """``StoppingCriteria`` adapter: a row is done once its last token completes the first line."""

    def __init__(self, stopper: FirstLineStopper, n_prompt_ids: int):
        self.stopper = stopper
        self.n_prompt_ids = n_prompt_ids

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **kwargs: Any) -> torch.Tensor:
        generated = input_ids[:, self.n_prompt_ids:]
        if generated.shape[1] == 0:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        return self.stopper.stop_mask(generated)[:, -1]


def _end_token_ids(eos_id: int | None, generation_config: Any) -> list[int]:
    """The collator's end token (what the model is trained to emit) plus the LM's own end tokens."""
    ids = [] if eos_id is None else [int(eos_id)]
    extra = getattr(generation_config, "eos_token_id", None)
    for token in [extra] if isinstance(extra, int) else list(extra or []):
        if int(token) not in ids:
            ids.append(int(token))
    return ids


class HFGenerator:
    """Generates answers for rendered prompts with ``model.peft_model.generate(inputs_embeds=...)``.

    ``collator`` must pad on the left and omit answers; ``answer_collator`` (``with_answer=True``) is
    needed only for ``constrained`` decoding (it tokenizes the candidates' answers exactly as in training).
    ``autocast_dtype`` (e.g. ``torch.bfloat16``) runs generation under autocast.
    """

    def __init__(self, model: Any, collator: Any, settings: GenerationSettings | None = None, *,
                 answer_collator: Any = None, autocast_dtype: torch.dtype | None = None):
        if collator.padding_side != "left" or collator.with_answer:
            raise ValueError("generation needs TMFCollator(padding_side='left', with_answer=False); got "
                             f"padding_side={collator.padding_side!r}, with_answer={collator.with_answer}")
        self.settings = settings or GenerationSettings()
        if self.settings.constrained and (answer_collator is None or not answer_collator.with_answer):
            raise ValueError("constrained decoding needs answer_collator=TMFCollator(..., with_answer=True)")
        self.model = model
        self.collator = collator
        self.answer_collator = answer_collator
        self.autocast_dtype = autocast_dtype
        tokenizer = model.tokenizer
        self.tokenizer = tokenizer
        self.eos_ids = _end_token_ids(collator.eos_id, model.causal_lm.generation_config)
        self.pad_id = collator.pad_id
        self.stopper = FirstLineStopper(tokenizer)

    def _generation_config(self) -> Any:
        s = self.settings
        sampling = {"temperature": s.temperature, "top_p": s.top_p} if s.do_sample else {}
        return GenerationConfig(max_new_tokens=s.max_new_tokens, do_sample=s.do_sample, num_beams=1,
                                eos_token_id=self.eos_ids or None, pad_token_id=self.pad_id, **sampling)

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    @torch.no_grad()
    def generate_ids(self, prompts: Sequence[Any], batch_index: int = 0) -> list[list[int]]:
        """Generated token ids of one batch of prompts (cut after the stopping token)."""
        device = next(self.model.parameters()).device
        batch = batch_to_device(self.collator(list(prompts)), device)
        allowed = None
        if self.settings.constrained:
            tries = [CandidateTrie.for_prompt(p, self.answer_collator) for p in prompts]
            allowed = lambda row, ids: tries[row].allowed(ids.tolist(), self.pad_id)  # noqa: E731
        rng = torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])
        with rng, self._autocast(device):
            torch.manual_seed(self.settings.seed + batch_index)
            embeds = self.model.embed_inputs(batch)
            out = self.model.peft_model.generate(
                inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                generation_config=self._generation_config(),
                stopping_criteria=StoppingCriteriaList([_StopCriterion(self.stopper, 0)]),
                prefix_allowed_tokens_fn=allowed)
        sequences = out if isinstance(out, torch.Tensor) else out.sequences
        if sequences.shape[1] > self.settings.max_new_tokens:  # some versions prepend the (empty) prompt ids
            raise RuntimeError(f"generate returned {sequences.shape[1]} tokens per row for max_new_tokens="
                               f"{self.settings.max_new_tokens}; expected only the new tokens")
        if sequences.shape[1] == 0:
            return [[] for _ in prompts]
        keep = self.stopper.lengths(sequences, self.eos_ids)
        return [row[:n].tolist() for row, n in zip(sequences.cpu(), keep, strict=True)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def generate(self, prompts: Sequence[Any], batch_size: int = 8, progress: bool = True) -> list[str]:
        """Decoded continuations, one per prompt, in order."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        was_training = self.model.training
        self.model.eval()
        texts: list[str] = []
        try:
            starts = range(0, len(prompts), batch_size)
            for k, start in enumerate(tqdm(starts, desc="generate", unit="batch", disable=not progress,
                                           leave=False)):
                texts.extend(self.decode(ids) for ids in self.generate_ids(prompts[start:start + batch_size], k))
        finally:
            self.model.train(was_training)
        logger.info("generated %d continuations (batch size %d, max_new_tokens %d, %s)", len(texts), batch_size,
                    self.settings.max_new_tokens, "sampling" if self.settings.do_sample else "greedy")
        return texts
