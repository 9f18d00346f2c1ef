"""Candidate ranking by log-likelihood: score each candidate's name as the answer to the prompt.

For a prompt with candidates ``c_1..c_C`` the score of ``c_k`` is
``sum_t log P(y_t | prompt, y_<t)`` over the tokens of the answer ``" <name of c_k>"`` plus the end
token, exactly the tokens (and the loss positions) the model is trained on (Eq. 9-11). The
prediction is the arg-max; HitRate@1 is the fraction whose arg-max is the target. Unlike greedy
generation this is exact (no parsing, every output valid), with logits only at the answer positions.

Cost: the C candidates of a prompt share every token before the answer. By default
(``method="packed"``) each prompt runs through the LM once, packed with its C answers into one row
(``prompt | answer_1 | ... | answer_C``) whose attention mask keeps the answers apart and whose position
ids restart after the prompt for every answer: one forward pass, no KV cache to copy.
``method="prefix"`` runs the prompt with ``use_cache=True``, repeats the KV cache C times and runs the C
answers over it (1.65x slower on CPU in bench/ranking.py: it copies the cache and expands its grouped-query heads). The
original one-full-sequence-per-(prompt, candidate) path stays as ``method="full"``: it is the reference
both are tested against, and the fallback for an LM that returns no KV cache. All three sum the same
tokens with the same LM head, so they agree up to float rounding (~1e-5 in fp32).

The summed (not length-normalized) log-likelihood is the probability of generating that exact name,
so the ranking agrees with what sampling the model would prefer; longer names are not favoured.
When a prompt must be shortened to fit ``max_length`` the history is cut once, for the candidate
with the longest answer, and every candidate is scored on that same shortened prompt.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from llmrec.devices import batch_to_device
from llmrec.metrics import candidate_ranking_metrics

logger = logging.getLogger(__name__)


def candidate_rows(prompt: Any, collator: Any, renderer: Any) -> list[Any]:
    """One RenderedPrompt per candidate (answer = that candidate), sharing one fitted prompt."""
    variants = [dataclasses.replace(prompt, answer=renderer.item_name(c), target_index=k)
                for k, c in enumerate(prompt.candidates)]
    longest = max(variants, key=lambda v: len(collator.encode(v).input_ids))
    fitted = collator.fit(longest).prompt
    return [dataclasses.replace(fitted, answer=v.answer, target_index=v.target_index) for v in variants]


RANKING_METHODS = ("packed", "prefix", "full")


def shared_prompt_answers(prompt: Any, collator: Any, renderer: Any) -> tuple[Any, int, list[list[int]]]:
    """``(fitted prompt, its length in tokens, each candidate's answer token ids)``: the shared prompt (history cut
    once, for the longest answer) and exactly the ids ``packed`` / ``prefix`` sum (the answer + end token)."""
    rows, encoded = _fitted_rows(prompt, collator, renderer)
    answers = [list(e.input_ids[len(e.input_ids) - e.n_labels:]) for e in encoded]
    return rows[0], len(_shared_prefix_ids(encoded)), answers


def _fitted_rows(prompt: Any, collator: Any, renderer: Any) -> tuple[list[Any], list[Any]]:
    """The candidate rows of one prompt and their encodings (collator.fit, as collating them would)."""
    rows = candidate_rows(prompt, collator, renderer)
    return rows, [collator.fit(row) for row in rows]


def _shared_prefix_ids(encoded: Sequence[Any]) -> list[int]:
    """Prompt ids shared by every candidate row of one prompt (everything before the labels)."""
    prefixes = {tuple(e.input_ids[:len(e.input_ids) - e.n_labels]) for e in encoded}
    if len(prefixes) != 1:
        raise ValueError("the candidate rows of one prompt do not share their prompt tokens; "
                         "use method='full'")
    return list(prefixes.pop())


def _score_prefix_group(model: Any, collator: Any, rows: list[list[Any]], encoded: list[list[Any]],
                        device: torch.device) -> torch.Tensor | None:
    """``[P, C]`` scores of P prompts: one prefix forward, then all P*C answers over the cached prefix.

    Prompts are right-padded, so every real prefix position keeps the position id it has in the full
    sequence; answer k of prompt b gets positions ``L_b, L_b+1, ...`` and an attention mask covering the
    real prefix positions and its own (right-padded) answer tokens. The first answer token is predicted
    from the prefix's last real position, the others from the answer pass. Returns ``None`` when the LM
    returns no KV cache (the caller then falls back to ``method="full"``).
    """
    n_candidates = len(rows[0])
    prefix_lengths = torch.tensor([len(_shared_prefix_ids(e)) for e in encoded], device=device)
    # the first candidate row of every prompt carries the prompt's slots; its answer tail is masked out
    batch = batch_to_device(collator([r[0] for r in rows]), device)
    width = int(prefix_lengths.max())
    embeds = model.embed_inputs(batch)[:, :width]
    positions = torch.arange(width, device=device)
    prefix_mask = (positions.unsqueeze(0) < prefix_lengths.unsqueeze(1)).long()
    decoder = model.causal_lm.get_decoder()
    prefix_out = decoder(inputs_embeds=embeds, attention_mask=prefix_mask, use_cache=True)
    cache = getattr(prefix_out, "past_key_values", None)
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    last_prefix_hidden = prefix_out.last_hidden_state[torch.arange(len(rows), device=device), prefix_lengths - 1]

    answers = [e.input_ids[len(e.input_ids) - e.n_labels:] for prompt_rows in encoded for e in prompt_rows]
    answer_width = max(len(a) for a in answers)
    answer_ids = torch.full((len(answers), answer_width), collator.pad_id, dtype=torch.long)
    for r, answer in enumerate(answers):
        answer_ids[r, :len(answer)] = torch.tensor(answer, dtype=torch.long)
    answer_ids = answer_ids.to(device)
    answer_mask = (torch.arange(answer_width, device=device).unsqueeze(0)
                   < torch.tensor([len(a) for a in answers], device=device).unsqueeze(1))
    cache.batch_repeat_interleave(n_candidates)
    answer_out = decoder(
        inputs_embeds=model.causal_lm.get_input_embeddings()(answer_ids),
        attention_mask=torch.cat([prefix_mask.repeat_interleave(n_candidates, 0), answer_mask.long()], dim=1),
        position_ids=prefix_lengths.repeat_interleave(n_candidates).unsqueeze(1)
        + torch.arange(answer_width, device=device).unsqueeze(0),
        past_key_values=cache, use_cache=True)
    # hidden state that predicts answer token j: the prefix's last one for j = 0, answer token j-1 after
    predictors = torch.cat([last_prefix_hidden.repeat_interleave(n_candidates, 0).unsqueeze(1),
                            answer_out.last_hidden_state[:, :-1]], dim=1)
    log_probs = -F.cross_entropy(model.logits_at(predictors[answer_mask]), answer_ids[answer_mask],
                                 reduction="none")
    row_index = answer_mask.nonzero()[:, 0]
    total = torch.zeros(len(answers), dtype=log_probs.dtype, device=device).index_add(0, row_index, log_probs)
    return total.view(len(rows), n_candidates)


def _packed_attention_mask(prefix_lengths: list[int], answer_lengths: list[list[int]], width: int,
                           additive_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``[P, 1, width, width]`` mask of packed rows ``prefix | answer_1 | ... | answer_C | pad``.

    Boolean (True = attend), as transformers builds for SDPA, or, with ``additive_dtype``, additive
    (0 / dtype min) for eager attention, which adds the mask to the scores.

    Prefix tokens attend causally to the prefix; a token of answer ``k`` attends to the whole prefix and
    causally to the earlier tokens of answer ``k`` only (never to another answer), so every answer sees
    exactly what it sees as the one answer of a full sequence. Padding queries attend to position 0 (a
    row with nothing to attend to would give NaN; their outputs are never read).
    """
    allowed = torch.zeros(len(prefix_lengths), width, width, dtype=torch.bool)
    for b, (n_prefix, lengths) in enumerate(zip(prefix_lengths, answer_lengths, strict=True)):
        allowed[b, :n_prefix, :n_prefix] = torch.ones(n_prefix, n_prefix, dtype=torch.bool).tril()
        start = n_prefix
        for length in lengths:
            end = start + length
            allowed[b, start:end, :n_prefix] = True
            allowed[b, start:end, start:end] = torch.ones(length, length, dtype=torch.bool).tril()
            start = end
        allowed[b, start:, 0] = True
    if additive_dtype is None:
        return allowed.unsqueeze(1)
    mask = torch.zeros(allowed.shape, dtype=additive_dtype)
    return mask.masked_fill_(~allowed, torch.finfo(additive_dtype).min).unsqueeze(1)


PACKED_MASK_IMPLEMENTATIONS = ("sdpa_gqa", "sdpa", "eager")  # attention implementations that take a custom 4D mask


def _attention_implementation(model: Any) -> str:
    return str(getattr(model.causal_lm.config, "_attn_implementation", None) or "eager")


def _score_packed_group(model: Any, collator: Any, rows: list[list[Any]], encoded: list[list[Any]],
                        device: torch.device) -> torch.Tensor:
    """``[P, C]`` scores of P prompts in one forward pass, each prompt packed with its C answers.

    Row ``b`` is ``prefix_b | answer_1 | ... | answer_C`` (right-padded); :func:`_packed_attention_mask`
    keeps the answers apart and position ids restart at ``L_b`` for every answer, so each answer token
    gets the hidden state it has in its own full sequence (RoPE sees the same positions). The prompt
    runs once; there is no KV cache to copy. The first token of every answer is predicted from the
    prefix's last position, answer token ``t`` from answer token ``t-1``; the LM head runs only there.
    """
    n_prompts = len(rows)
    prefix_lengths = [len(_shared_prefix_ids(e)) for e in encoded]
    answers = [[e.input_ids[len(e.input_ids) - e.n_labels:] for e in prompt_rows] for prompt_rows in encoded]
    answer_lengths = [[len(a) for a in prompt_answers] for prompt_answers in answers]
    width = max(n + sum(lengths) for n, lengths in zip(prefix_lengths, answer_lengths, strict=True))
    # the first candidate row of every prompt carries the prompt's slots; its answer tail is not used
    prefix_embeds = model.embed_inputs(batch_to_device(collator([r[0] for r in rows]), device))
    ids = torch.full((n_prompts, width), collator.pad_id, dtype=torch.long)
    positions = torch.zeros(n_prompts, width, dtype=torch.long)
    predictor_index, target_ids, answer_of_target = [], [], []
    for b in range(n_prompts):
        n_prefix, start = prefix_lengths[b], prefix_lengths[b]
        positions[b, :n_prefix] = torch.arange(n_prefix)
        for k, answer in enumerate(answers[b]):
            end = start + len(answer)
            ids[b, start:end] = torch.tensor(answer, dtype=torch.long)
            positions[b, start:end] = torch.arange(n_prefix, n_prefix + len(answer))
            predictor_index += [b * width + n_prefix - 1] + [b * width + i for i in range(start, end - 1)]
            target_ids += answer
            answer_of_target += [b * len(answers[b]) + k] * len(answer)
            start = end
    ids, positions = ids.to(device), positions.to(device)
    embeds = model.causal_lm.get_input_embeddings()(ids)  # the answers' tokens (prefix positions overwritten)
    for b, n_prefix in enumerate(prefix_lengths):
        embeds[b, :n_prefix] = prefix_embeds[b, :n_prefix].to(embeds.dtype)
    additive = None if _attention_implementation(model) == "sdpa" else embeds.dtype
    mask = _packed_attention_mask(prefix_lengths, answer_lengths, width, additive).to(device)
    hidden = model.causal_lm.get_decoder()(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                           use_cache=False).last_hidden_state
    predictors = hidden.reshape(n_prompts * width, -1)[torch.tensor(predictor_index, device=device)]
    log_probs = -F.cross_entropy(model.logits_at(predictors), torch.tensor(target_ids, device=device),
                                 reduction="none")
    n_candidates = len(answers[0])
    total = torch.zeros(n_prompts * n_candidates, dtype=log_probs.dtype, device=device)
    total.index_add_(0, torch.tensor(answer_of_target, device=device), log_probs)
    return total.view(n_prompts, n_candidates)


def _score_full(model: Any, collator: Any, rows: list[Any], device: torch.device) -> torch.Tensor:
    """``[len(rows)]`` scores, every (prompt, candidate) row as one full sequence."""
    return model.sequence_log_likelihood(batch_to_device(collator(rows), device))


@torch.no_grad()
def candidate_log_likelihoods(model: Any, collator: Any, renderer: Any, prompts: Sequence[Any],
                              batch_size: int = 16, progress: bool = True, method: str = "packed") -> np.ndarray:
    """``[n_prompts, C]`` summed answer log-likelihood of every candidate (needs a common C).

    ``method="packed"`` (default) runs each prompt once, packed with its C answers (module docstring);
    ``"prefix"`` scores the C answers over a repeated KV cache of the prompt; both put about C times
    fewer prompt tokens through the LM than ``"full"``, which runs every (prompt, candidate) row as its
    own sequence. Same scores up to float rounding. ``batch_size`` counts (prompt, candidate) rows per
    forward pass (packed and prefix: ``max(1, batch_size // C)`` prompts per pass).
    """
    if method not in RANKING_METHODS:
        raise ValueError(f"method must be one of {RANKING_METHODS}, got {method!r}")
    sizes = {len(p.candidates) for p in prompts}
    if len(sizes) != 1:
        raise ValueError(f"every prompt needs the same number of candidates, got sizes {sorted(sizes)}")
    if not collator.with_answer:
        raise ValueError("candidate scoring needs a collator with with_answer=True")
    n_candidates = sizes.pop()
    device = next(model.parameters()).device
    per_group = max(1, batch_size // n_candidates)
    if method == "packed" and _attention_implementation(model) not in PACKED_MASK_IMPLEMENTATIONS:
        logger.warning("attention implementation %r takes no custom 4D mask: ranking uses method='prefix'",
                       _attention_implementation(model))
        method = "prefix"
    was_training = model.training
    model.eval()
    scores: list[torch.Tensor] = []
    try:
        if method in ("packed", "prefix"):
            groups = [prompts[s:s + per_group] for s in range(0, len(prompts), per_group)]
            for group in tqdm(groups, desc=f"rank candidates ({method})", unit="batch", disable=not progress,
                              leave=False):
                fitted = [_fitted_rows(p, collator, renderer) for p in group]
                rows, encoded = [r for r, _ in fitted], [e for _, e in fitted]
                group_scores = None
                if method == "packed":
                    group_scores = _score_packed_group(model, collator, rows, encoded, device)
                elif method == "prefix":
                    group_scores = _score_prefix_group(model, collator, rows, encoded, device)
                    if group_scores is None:
                        logger.warning("%s returned no KV cache: ranking falls back to method='full'",
                                       type(model.causal_lm).__name__)
                        method = "full"
                if group_scores is None:
                    group_scores = _score_full(model, collator, [r for p in rows for r in p], device)
                scores.append(group_scores.reshape(-1).float().cpu())
        else:
            rows = [row for prompt in prompts for row in candidate_rows(prompt, collator, renderer)]
            for start in tqdm(range(0, len(rows), batch_size), desc="rank candidates", unit="batch",
                              disable=not progress, leave=False):
                scores.append(_score_full(model, collator, rows[start:start + batch_size], device).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(scores).view(len(prompts), n_candidates).numpy()


def ranking_hit_rate(model: Any, collator: Any, renderer: Any, prompts: Sequence[Any], batch_size: int = 16,
                     ks: Sequence[int] = (1,), progress: bool = True, method: str = "packed") -> dict[str, float]:
    """HR@K / NDCG@K / MRR@K of log-likelihood ranking on prompts with known ``target_index``."""
    if any(p.target_index is None for p in prompts):
        raise ValueError("ranking_hit_rate needs prompts with a target_index")
    scores = candidate_log_likelihoods(model, collator, renderer, prompts, batch_size, progress, method)
    targets = np.array([p.target_index for p in prompts], dtype=np.int64)
    return candidate_ranking_metrics(scores, targets, ks)
