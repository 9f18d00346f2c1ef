"""Candidate ranking on a vLLM engine: the summed log-likelihood of each candidate's answer tokens after prompt
embeddings, exactly as :func:`llmrec.generation.ranking.candidate_log_likelihoods` computes it on the HF model.

vLLM returns no prompt logprobs for a pure ``{"prompt_embeds": ...}`` prompt (its model runner skips requests
without prompt token ids). A *mixed* prompt works (``EmbedsPrompt`` with ``prompt_token_ids`` and
``prompt_is_token_ids``, vLLM >= 0.32): the prompt's ``L`` embedding rows followed by the ``A`` answer tokens as
real token ids, one request per (prompt, candidate)::

    {"prompt_embeds": cat([embeds, zeros(A, hidden)]),       # the answer rows are looked up from the ids
     "prompt_token_ids": [0] * L + answer_ids,                # 0: placeholders, never read as input
     "prompt_is_token_ids": [False] * L + [True] * A}
    SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0, detokenize=False)

``out.prompt_logprobs[L + j][answer_ids[j]].logprob`` is then ``log P(answer_j | prompt, answer_<j)`` over the
full vocabulary: prompt logprobs skip the sampler's processors and the structured-output bitmask, and with the
default ``logprobs_mode="raw_logprobs"`` they are the log-softmax of the raw logits (``*_logits`` modes would
return logits instead). The score is their sum, not length-normalised, over the answer ids including the end
token: the tokens training puts its loss on. bench/vllm_score_probe.py measured it against HF (fp32, merged LoRA):
max 4.7e-5 per summed answer.

Cost: every request runs its whole prompt (C prompt passes per user), and vLLM skips prefix-cache reads for
requests with ``prompt_logprobs`` (``SamplingParams.skip_reading_prefix_cache``), so the shared prompt is not
reused across candidates.

Like :mod:`llmrec.generation.vllm_worker`, this module needs only torch (no llmrec model code), so the worker in
vLLM's own environment imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

SCORING_SAMPLING: dict[str, Any] = {"max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0,
                                    "detokenize": False}
"""``SamplingParams`` of a scoring request: the one generated token is ignored; ``prompt_logprobs=0`` returns the
logprob of each prompt token itself; ``detokenize=False`` skips decoding the prompt's logprob tokens."""
PLACEHOLDER_ID = 0
"""Token id listed for the embedding rows of a mixed prompt (vLLM reads their embeddings, not this id)."""


def mixed_request(embeds: torch.Tensor, answer_ids: Sequence[int]) -> dict[str, Any]:
    """One scoring request: ``embeds`` (``[L, hidden]``) followed by ``answer_ids`` as token ids."""
    if embeds.dim() != 2 or embeds.shape[0] == 0:
        raise ValueError(f"prompt embeddings must be a non-empty [L, hidden] tensor, got shape {tuple(embeds.shape)}")
    answer = [int(t) for t in answer_ids]
    if not answer:
        raise ValueError("an answer to score needs at least one token id")
    n_prompt = embeds.shape[0]
    padding = torch.zeros(len(answer), embeds.shape[1], dtype=embeds.dtype)
    return {"prompt_embeds": torch.cat([embeds, padding]),
            "prompt_token_ids": [PLACEHOLDER_ID] * n_prompt + answer,
            "prompt_is_token_ids": [False] * n_prompt + [True] * len(answer)}


def answer_log_likelihood(prompt_logprobs: Any, n_prompt: int, answer_ids: Sequence[int], where: str) -> float:
    """``sum_j log P(answer_j | ...)`` read from one request's ``prompt_logprobs`` (``where`` names it in errors)."""
    if prompt_logprobs is None:
        raise RuntimeError(f"vLLM returned no prompt logprobs for {where} (prompt_logprobs is None); candidate "
                           "scoring needs a vLLM whose EmbedsPrompt takes prompt_token_ids + prompt_is_token_ids "
                           "(mixed mode, vLLM >= 0.32)")
    if len(prompt_logprobs) != n_prompt + len(answer_ids):
        raise RuntimeError(f"vLLM returned {len(prompt_logprobs)} prompt logprobs for {where}, expected "
                           f"{n_prompt + len(answer_ids)} ({n_prompt} prompt + {len(answer_ids)} answer tokens)")
    total = 0.0
    for j, token in enumerate(answer_ids):
        step = prompt_logprobs[n_prompt + j]
        if step is None or int(token) not in step:
            raise RuntimeError(f"vLLM returned no logprob of answer token {j} (id {token}) for {where}")
        total += float(step[int(token)].logprob)
    return total


def score_answers(llm: Any, vllm: Any, embeds: Sequence[torch.Tensor], answers: Sequence[Sequence[Sequence[int]]],
                  lora_request: Any = None, first_prompt: int = 0) -> list[list[float]]:
    """Per prompt, the summed log-likelihood of each of its candidates' answers (``answers[i][k]``: the token ids of
    candidate ``k`` of prompt ``i``, end token included), in one ``llm.generate`` call. ``first_prompt``: the index
    of ``embeds[0]`` among all prompts, for error messages."""
    if len(answers) != len(embeds):
        raise ValueError(f"{len(answers)} candidate answer lists for {len(embeds)} prompts")
    requests, owners = [], []
    for i, (tensor, candidates) in enumerate(zip(embeds, answers, strict=True)):
        if not candidates:
            raise ValueError(f"prompt {first_prompt + i} has no candidates to score")
        for k, ids in enumerate(candidates):
            requests.append(mixed_request(tensor, ids))
            owners.append((i, k))
    if not requests:
        return []
    outputs = llm.generate(requests, vllm.SamplingParams(**SCORING_SAMPLING), lora_request=lora_request,
                           use_tqdm=False)
    if len(outputs) != len(requests):
        raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(requests)} scoring requests")
    scores: list[list[float]] = [[] for _ in embeds]
    for (i, k), out in zip(owners, outputs, strict=True):
        where = f"prompt {first_prompt + i}, candidate {k}"
        scores[i].append(answer_log_likelihood(out.prompt_logprobs, embeds[i].shape[0], answers[i][k], where))
    return scores
