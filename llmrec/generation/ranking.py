"""Candidate ranking by log-likelihood: score each candidate's name as the answer to the prompt.

For a prompt with candidates ``c_1..c_C`` the score of ``c_k`` is
``sum_t log P(y_t | prompt, y_<t)`` over the tokens of the answer ``" <name of c_k>"`` plus the end
token, exactly the tokens (and the loss positions) the model is trained on (Eq. 9-11). The
prediction is the arg-max; HitRate@1 is the fraction whose arg-max is the target. Unlike greedy
generation this is exact (no parsing, every output valid) and needs one forward pass per
(prompt, candidate) pair, with logits only at the answer positions.

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
from tqdm.auto import tqdm

from llmrec.metrics import candidate_ranking_metrics

logger = logging.getLogger(__name__)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def candidate_rows(prompt: Any, collator: Any, renderer: Any) -> list[Any]:
    """One RenderedPrompt per candidate (answer = that candidate), sharing one fitted prompt."""
    variants = [dataclasses.replace(prompt, answer=renderer.item_name(c), target_index=k)
                for k, c in enumerate(prompt.candidates)]
    longest = max(variants, key=lambda v: len(collator.encode(v).input_ids))
    fitted = collator.fit(longest).prompt
    return [dataclasses.replace(fitted, answer=v.answer, target_index=v.target_index) for v in variants]


@torch.no_grad()
def candidate_log_likelihoods(model: Any, collator: Any, renderer: Any, prompts: Sequence[Any],
                              batch_size: int = 16, progress: bool = True) -> np.ndarray:
    """``[n_prompts, C]`` summed answer log-likelihood of every candidate (needs a common C)."""
    sizes = {len(p.candidates) for p in prompts}
    if len(sizes) != 1:
        raise ValueError(f"every prompt needs the same number of candidates, got sizes {sorted(sizes)}")
    if not collator.with_answer:
        raise ValueError("candidate scoring needs a collator with with_answer=True")
    n_candidates = sizes.pop()
    rows = [row for prompt in prompts for row in candidate_rows(prompt, collator, renderer)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores = []
    try:
        for start in tqdm(range(0, len(rows), batch_size), desc="rank candidates", unit="batch",
                          disable=not progress, leave=False):
            batch = _to_device(collator(rows[start:start + batch_size]), device)
            scores.append(model.sequence_log_likelihood(batch).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(scores).view(len(prompts), n_candidates).numpy()


def ranking_hit_rate(model: Any, collator: Any, renderer: Any, prompts: Sequence[Any], batch_size: int = 16,
                     ks: Sequence[int] = (1,), progress: bool = True) -> dict[str, float]:
    """HR@K / NDCG@K / MRR@K of log-likelihood ranking on prompts with known ``target_index``."""
    if any(p.target_index is None for p in prompts):
        raise ValueError("ranking_hit_rate needs prompts with a target_index")
    scores = candidate_log_likelihoods(model, collator, renderer, prompts, batch_size, progress)
    targets = np.array([p.target_index for p in prompts], dtype=np.int64)
    return candidate_ranking_metrics(scores, targets, ks)
