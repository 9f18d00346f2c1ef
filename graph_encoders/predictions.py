"""Per-row predictions of a sequential recommender, in the format ``llmrec infer`` writes.

One JSON object per row of ``dataset.samples[split]``, with the fields of a rank-mode
line of :func:`llmrec.eval.infer.prediction_records` (docs/inference.md): ``user`` (raw
id), ``split``, ``row``, ``candidates`` (``[{"item_id", "title"}]`` in the frozen set's
column order), ``target_index``, ``target``, ``scores`` (one per candidate),
``ranked_index`` (their arg-max), plus ``model`` (the recommender's registered name).
So ``llmrec evaluate`` scores a baseline and TMF on exactly the same rows.

The scores are the arrays :func:`graph_encoders.evaluation.evaluate_split` computes its
metrics from (same batching, same ``score_all`` / ``score_candidates`` choice), so HR@1
of a file equals ``metrics.json``'s ``<protocol>/HR@1`` up to float summation order.
Titles are the catalog titles, whitespace-normalized (``item <id>`` when empty); pass
``names`` (e.g. a prompt renderer's ``item_names``) to use other ones.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from graph_encoders.base import SequentialRecommender
from graph_encoders.batching import SequenceBatcher
from graph_encoders.evaluation import CandidateProtocol, EvalConfig, SplitEvaluation, evaluate_split
from llmrec.data.types import CandidateSet

MAX_PREDICTION_CANDIDATES = 20  # fit-graph writes files only for protocols this small (pop100 would be large)


def predictions_path(run_dir: str | Path, split: str, protocol: str) -> Path:
    """``<run_dir>/predictions-<split>-<protocol>.jsonl``."""
    return Path(run_dir) / f"predictions-{split}-{protocol}.jsonl"


def catalog_names(dataset: Any) -> list[str]:
    """Whitespace-normalized catalog titles in internal item order; ``item <id>`` when a title is empty."""
    titles = dataset.catalog["title"].tolist() if "title" in dataset.catalog else [""] * dataset.n_items
    names = []
    for title, item_id in zip(titles, dataset.item_ids, strict=True):
        name = "" if title is None or (isinstance(title, float) and math.isnan(title)) else " ".join(str(title).split())
        names.append(name or f"item {item_id}")
    return names


def prediction_records(
    dataset: Any, split: str, candidates: CandidateSet, scores: np.ndarray, model_name: str,
    names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One rank-mode predictions line per row of ``samples[split]`` from a ``[n_rows, size]`` score matrix."""
    users = dataset.samples[split].data.column("user").to_pylist()
    scores = np.asarray(scores)
    if scores.shape != candidates.items.shape or len(users) != len(scores):
        raise ValueError(f"{model_name} {split}: scores {scores.shape}, candidates {candidates.items.shape} and "
                         f"{len(users)} samples[{split!r}] rows do not line up")
    bad = ~np.isfinite(scores).all(axis=1)
    if bad.any():
        raise ValueError(f"{model_name} {split}: row {int(np.flatnonzero(bad)[0])} has a non-finite candidate score")
    names = catalog_names(dataset) if names is None else names
    if len(names) != dataset.n_items:
        raise ValueError(f"names: {len(names)} names for {dataset.n_items} items")
    records = []
    for row, (user, items, target, row_scores) in enumerate(
            zip(users, candidates.items.tolist(), candidates.target_index.tolist(), scores.tolist(), strict=True)):
        records.append({
            "user": dataset.user_ids[user], "split": split, "row": row, "model": model_name,
            "candidates": [{"item_id": dataset.item_ids[c], "title": names[c]} for c in items],
            "target_index": int(target),
            "target": {"item_id": dataset.item_ids[items[target]], "title": names[items[target]]},
            "scores": row_scores,
            "ranked_index": int(np.argmax(row_scores)),
        })
    return records


def baseline_prediction_records(
    model: SequentialRecommender, batcher: SequenceBatcher, split: str, protocol: CandidateProtocol,
    eval_config: EvalConfig | None = None, names: Sequence[str] | None = None, progress: bool = False,
) -> list[dict[str, Any]]:
    """Score a finished ``model`` on ``protocol``'s frozen candidates of ``split``; one record per row.

    ``eval_config`` (the run's ``config.eval``) supplies the batch size and the
    ``full_ranking`` switch, so the scores equal the ones its metrics were computed from.
    """
    base = eval_config or EvalConfig()
    config = dataclasses.replace(base, protocols=[protocol])
    result = evaluate_split(model, batcher, split, config, progress=progress, keep_scores=[protocol.name])
    return records_of(result, batcher.dataset, split, protocol.name, model.name or type(model).__name__, names)


def records_of(result: SplitEvaluation, dataset: Any, split: str, protocol: str, model_name: str,
               names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The predictions records of one kept protocol of an :func:`evaluate_split` result."""
    if protocol not in result.scores:
        raise KeyError(f"protocol {protocol!r}: no kept scores (evaluate_split kept {sorted(result.scores)})")
    return prediction_records(dataset, split, result.candidates[protocol], result.scores[protocol], model_name, names)


def written_protocols(config: EvalConfig) -> list[str]:
    """The protocols fit-graph writes predictions for: those with at most MAX_PREDICTION_CANDIDATES candidates."""
    return [p.name for p in config.protocols if p.size <= MAX_PREDICTION_CANDIDATES]
