"""Rule rows: simple heuristics scored on the same frozen candidate sets as every model.

A model that does not beat them has not learned more than they encode. Each rule returns scores
``[n_rows, C]`` (higher is better) for the candidate matrix of a split:

* ``popular``: the candidate with the most training interactions (every behavior, in each user's sequence
  before the validation target: what the models train on);
* ``seen in history``: a candidate in the row's history (the ``max_history`` newest interactions a model
  sees), strongest behavior first (carted before viewed), then the most recent; the others by popularity.
  Negatives are items the user never interacted with, so a candidate in the history is always the target;
* ``session category`` (catalogs with a ``category`` column): a candidate of the current session's category
  first (the most frequent category after the history's last target-behavior interaction), then by popularity.

Ties left after all keys go to the earlier candidate of the row, so every rule is deterministic.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llmrec.data.types import SequenceDataset


def lexicographic_scores(*keys: np.ndarray) -> np.ndarray:
    """Scores ordering each row's candidates by ``keys`` (first key most significant; higher is better; remaining
    ties: the earlier candidate first)."""
    n, c = keys[0].shape
    scores = np.zeros((n, c))
    for row in range(n):
        order = np.lexsort(tuple(-k[row] for k in reversed(keys)))  # best first
        scores[row, order] = np.arange(c, 0, -1, dtype=float)
    return scores


def training_popularity(dataset: SequenceDataset) -> np.ndarray:
    """Interactions of every behavior per item in each user's sequence before the validation target."""
    counts = np.zeros(dataset.n_items, dtype=np.int64)
    for seq in dataset.sequences:
        np.add.at(counts, seq.items[:seq.valid_pos], 1)
    return counts


def history_features(samples: Any, items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per candidate: in the history (0/1), strongest behavior there (-1: absent), last position (-1: absent)."""
    n, c = items.shape
    seen, strongest, last = np.zeros((n, c)), np.full((n, c), -1.0), np.full((n, c), -1.0)
    for row in range(n):
        history, behaviors = samples[row]["history_items"], samples[row]["history_behaviors"]
        for pos, (item, behavior) in enumerate(zip(history, behaviors, strict=True)):
            hit = items[row] == item
            seen[row, hit] = 1.0
            strongest[row, hit] = np.maximum(strongest[row, hit], behavior)
            last[row, hit] = pos
    return seen, strongest, last


def has_categories(dataset: SequenceDataset) -> bool:
    return "category" in dataset.catalog.columns and bool(dataset.catalog["category"].astype(str).ne("").any())


def session_category(dataset: SequenceDataset, samples: Any, items: np.ndarray) -> np.ndarray:
    """Per candidate: 1 if its category is the current session's (most frequent after the last target behavior)."""
    category = dataset.catalog["category"].astype(str).to_numpy()
    target_behavior = dataset.target_behavior_index
    same = np.zeros(items.shape)
    for row in range(items.shape[0]):
        history = np.asarray(samples[row]["history_items"], dtype=np.int64)
        behaviors = np.asarray(samples[row]["history_behaviors"], dtype=np.int64)
        bought = np.flatnonzero(behaviors == target_behavior)
        session = history[bought[-1] + 1:] if bought.size else history
        if session.size:
            values, counts = np.unique(category[session], return_counts=True)  # ties: the first value in order
            same[row] = category[items[row]] == values[np.argmax(counts)]
    return same


def rule_scores(dataset: SequenceDataset, split: str, items: np.ndarray,
                rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Scores of every rule that applies to ``dataset``, for the candidate matrix ``items`` of ``split`` (of its
    rows ``rows`` when given, one per line of ``items``)."""
    samples = dataset.samples[split] if rows is None else dataset.samples[split].select(rows.tolist())
    popularity = training_popularity(dataset)[items].astype(float)
    seen, strongest, last = history_features(samples, items)
    rules = {"popular": lexicographic_scores(popularity),
             "seen in history": lexicographic_scores(seen, strongest, last, popularity)}
    if has_categories(dataset):
        rules["session category"] = lexicographic_scores(session_category(dataset, samples, items), popularity)
    return rules
