"""``protocol: rerank``: retrieve the top K of the whole catalog with a sequential recommender, re-rank with the LLM.

The deployment setting TMF itself was built for (candidate sets for downstream ranking): the sampled
protocols ask the LLM to find the target among 9 random items, this one among the ``k`` items a
trained recommender (SASRec, MBHT, ... from ``graph_encoders``) ranks highest out of every item the user
has not interacted with yet (:func:`graph_encoders.retrieval.retrieve`).

    llmrec infer checkpoint=runs/ablations/tmf_full_ml100k protocol=rerank mode=rank \\
        rerank.retriever=configs/graph/sasrec_ml100k.yaml rerank.k=20

Metrics are over the whole catalog and every selected user, for two orderings of the same list:

* **retriever**: the retriever's own order (its HR@K for K <= k equals fit-graph's ``full/HR@K``);
* **rerank**: the LLM's candidate log-likelihoods (``generation/ranking.py``) order the ``k`` items.

A user whose target was not retrieved is a miss for both at every K <= k: no re-ranking can recover it,
so the LLM is run only on users whose target was retrieved (the metrics are exactly those of running it on
everyone) and ``recall@k`` (the share of users whose target was retrieved) is the ceiling of every
two-stage HR@K. Ranks are pessimistic (ties put the target last), as everywhere in :mod:`llmrec.metrics`.

Choice: by default the retrieved items enter the prompt in a seeded random order per user
(``rerank.order: shuffled``), so the LLM's order is its own and not a copy of the retriever's; ``retriever``
keeps the retriever's order (best first), which a deployment may prefer.

One JSON line per selected user is written (fields in docs/inference.md, "Retrieve-then-rerank"), plus
``<output>.meta.json`` with the settings, both orderings' metrics and the timings.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from graph_encoders.retrieval import Retrieval
from llmrec.config import to_dict
from llmrec.data.types import CandidateSet
from llmrec.devices import autocast_dtype
from llmrec.eval.infer import (
    InferConfig,
    build_prompts,
    default_output,
    load_model,
    rank_prompts,
    resolve_device,
    resolve_run,
    select_rows,
)
from llmrec.io import write_json, write_jsonl
from llmrec.metrics import metrics_from_ranks, target_ranks
from llmrec.tmf.collator import TMFCollator
from llmrec.tmf.prompts.render import PromptRenderer
from llmrec.train.checkpoint import run_folder

logger = logging.getLogger(__name__)


def prompt_order(retrieval: Retrieval, order: str, seed: int) -> np.ndarray:
    """``[n_rows, k]`` column permutation of each row's retrieved items: identity, or a seeded shuffle per row."""
    n, k = retrieval.items.shape
    if order == "retriever":
        return np.tile(np.arange(k), (n, 1))
    if order != "shuffled":
        raise ValueError(f"rerank.order must be 'shuffled' or 'retriever', got {order!r}")
    return np.stack([np.random.default_rng([seed, row, k]).permutation(k) for row in range(n)]) if n else \
        np.zeros((0, k), dtype=np.int64)


def retrieved_candidates(retrieval: Retrieval, order: str, seed: int) -> tuple[CandidateSet, np.ndarray]:
    """The retrieved lists as a candidate set in prompt order (``target_index`` -1 where the target was missed),
    and the matching ``[n_rows, k]`` retriever scores."""
    perm = prompt_order(retrieval, order, seed)
    items = np.take_along_axis(retrieval.items, perm, axis=1)
    scores = np.take_along_axis(retrieval.scores, perm, axis=1)
    found = items == retrieval.targets[:, None]
    target_index = np.where(found.any(axis=1), found.argmax(axis=1), -1).astype(np.int64)
    if not np.array_equal(target_index >= 0, retrieval.hit):
        raise AssertionError("retrieval: the target's catalog rank and its presence in the list disagree")
    return CandidateSet(retrieval.split, f"retrieved-{retrieval.model}", retrieval.k, seed, items, target_index), scores


def two_stage_ranks(retrieval: Retrieval, rows: np.ndarray, scored_rows: np.ndarray, llm_scores: np.ndarray,
                    target_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per selected row, the target's 1-based rank under the retriever and after re-ranking, both capped at
    ``k + 1`` (= not among the ``k``; every metric cut-off is <= k, so the cap changes no metric)."""
    k = retrieval.k
    retriever = np.minimum(retrieval.target_rank[rows], k + 1)
    rerank = np.full(len(rows), k + 1, dtype=np.int64)
    if len(scored_rows):
        position = {int(r): i for i, r in enumerate(rows.tolist())}
        at = np.asarray([position[int(r)] for r in scored_rows], dtype=np.int64)
        rerank[at] = target_ranks(torch.as_tensor(llm_scores), torch.as_tensor(target_index[scored_rows]))
    return retriever, rerank


def rerank_metrics(retriever_ranks: np.ndarray, rerank_ranks: np.ndarray, k: int, ks: list[int]) -> dict[str, Any]:
    """HR@K / NDCG@K of both orderings and the recall@k ceiling, from the capped ranks."""
    keep = [f"{m}@{x}" for x in ks for m in ("HR", "NDCG")]
    retriever = metrics_from_ranks(retriever_ranks, ks)
    rerank = metrics_from_ranks(rerank_ranks, ks)
    return {"retriever": {m: retriever[m] for m in keep}, "rerank": {m: rerank[m] for m in keep},
            f"recall@{k}": float((retriever_ranks <= k).mean()), "n_users": len(retriever_ranks)}


def rerank_records(dataset: Any, renderer: Any, retrieval: Retrieval, candidates: CandidateSet,
                   retriever_scores: np.ndarray, rows: np.ndarray, llm_scores: dict[int, list[float]],
                   retriever_ranks: np.ndarray, rerank_ranks: np.ndarray, task: str) -> list[dict[str, Any]]:
    """One JSON-able dict per selected row (docs/inference.md, "Retrieve-then-rerank")."""
    users = dataset.samples[retrieval.split].data.column("user").to_pylist()
    records = []
    for row, r_rank, l_rank in zip(rows.tolist(), retriever_ranks.tolist(), rerank_ranks.tolist(), strict=True):
        items = candidates.items[row].tolist()
        target = int(retrieval.targets[row])
        records.append({
            "user": dataset.user_ids[users[row]], "split": retrieval.split, "row": row, "task": task,
            "retriever": retrieval.model,
            "candidates": [{"item_id": dataset.item_ids[c], "title": renderer.item_name(c)} for c in items],
            "retriever_scores": [float(s) for s in retriever_scores[row]],
            "target": {"item_id": dataset.item_ids[target], "title": renderer.item_name(target)},
            "target_index": int(candidates.target_index[row]),
            "target_catalog_rank": int(retrieval.target_rank[row]),
            "scores": llm_scores.get(row),
            "retriever_rank": int(r_rank), "rerank_rank": int(l_rank),
        })
    return records


def default_rerank_output(checkpoint: Path | None, split: str, task: str, retrieval: Retrieval) -> Path:
    """``<run>/predictions/<step-…>-<split>-<task>-rerank<k>-<retriever>.jsonl``."""
    base = default_output(checkpoint, split, task)
    return run_folder(checkpoint) / "predictions" / f"{base.stem}-rerank{retrieval.k}-{retrieval.model}.jsonl"


def run_rerank(cfg: InferConfig, dataset: Any, tables: Any, retrieval: Retrieval, *, progress: bool = True) -> Path:
    """Re-rank ``retrieval``'s lists with the checkpoint of ``cfg`` (``protocol: rerank``); return the output path."""
    start = time.perf_counter()
    if cfg.protocol != "rerank" or cfg.mode not in ("rank", "auto"):
        raise ValueError(f"run_rerank needs protocol: rerank and mode: rank, got {cfg.protocol!r} / {cfg.mode!r}")
    if retrieval.split != cfg.split or retrieval.k != cfg.rerank.k:
        raise ValueError(f"retrieval is {retrieval.split}/k={retrieval.k}; "
                         f"the config asks {cfg.split}/k={cfg.rerank.k}")
    checkpoint, train_cfg, task = resolve_run(cfg)
    if checkpoint is None and cfg.output is None:
        raise ValueError("a zero-shot re-ranking needs an explicit output path")
    output = Path(cfg.output) if cfg.output else default_rerank_output(checkpoint, cfg.split, task, retrieval)
    rows = select_rows(len(dataset.samples[cfg.split]), cfg.n_users, cfg.seed, cfg.split)
    candidates, retriever_scores = retrieved_candidates(retrieval, cfg.rerank.order, cfg.seed)
    scored_rows = rows[retrieval.hit[rows]]
    logger.info("rerank: %d %s users, %s top %d, target retrieved for %d (recall@%d %.3f); the LLM scores those",
                len(rows), cfg.split, retrieval.model, retrieval.k, len(scored_rows), retrieval.k,
                len(scored_rows) / max(len(rows), 1))

    device = resolve_device(cfg)
    model = load_model(cfg, checkpoint, train_cfg, tables).to(device).eval()
    autocast = autocast_dtype(cfg.precision, device)
    renderer = PromptRenderer(train_cfg.prompts, dataset)
    prompts = build_prompts(cfg, renderer, dataset, candidates, task, scored_rows)
    collator = TMFCollator(model.tokenizer, renderer, train_cfg.max_length, padding_side="right", with_answer=True)
    t0 = time.perf_counter()
    llm = rank_prompts(cfg, model, collator, renderer, prompts, autocast, progress) if len(prompts) else \
        np.zeros((0, retrieval.k), dtype=np.float32)
    rank_s = time.perf_counter() - t0

    retriever_ranks, rerank_ranks = two_stage_ranks(retrieval, rows, scored_rows, llm, candidates.target_index)
    metrics = rerank_metrics(retriever_ranks, rerank_ranks, retrieval.k, cfg.rerank.ks)
    by_row = {int(r): [float(s) for s in llm[i]] for i, r in enumerate(scored_rows.tolist())}
    records = rerank_records(dataset, renderer, retrieval, candidates, retriever_scores, rows, by_row,
                             retriever_ranks, rerank_ranks, task)
    write_jsonl(output, records)
    meta = {"config": to_dict(cfg), "checkpoint": None if checkpoint is None else str(checkpoint), "task": task,
            "retriever": retrieval.model, "k": retrieval.k, "order": cfg.rerank.order,
            "n_users": len(rows), "n_split_users": len(dataset.samples[cfg.split]), "n_scored": len(scored_rows),
            "dataset": dataset.name, "dataset_fingerprint": dataset.fingerprint, "metrics": metrics,
            "truncated_prompts": collator.truncations, "rank_s": rank_s, "seconds": time.perf_counter() - start}
    write_json(output.with_name(output.name + ".meta.json"), meta, indent=1)
    logger.info("rerank: HR@1 %.3f (retriever %.3f), recall@%d %.3f; wrote %d lines to %s",
                metrics["rerank"].get("HR@1", float("nan")), metrics["retriever"].get("HR@1", float("nan")),
                retrieval.k, metrics[f"recall@{retrieval.k}"], len(records), output)
    return output
