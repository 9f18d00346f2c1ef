"""Rule rows (``llmrec.eval.rules``) on the prepared tiny shop: what each rule promises, row by row."""

from __future__ import annotations

import numpy as np

from llmrec.data.candidates import load_candidates
from llmrec.eval.rules import lexicographic_scores, rule_scores, training_popularity
from llmrec.metrics import target_ranks


def test_lexicographic_scores_order_by_keys_then_lower_index():
    first = np.array([[0.0, 1.0, 1.0, 0.0]])
    second = np.array([[5.0, 1.0, 2.0, 5.0]])
    scores = lexicographic_scores(first, second)
    assert np.argsort(-scores[0]).tolist() == [2, 1, 0, 3]


def test_rules_keep_their_promises_on_every_row(shop):
    cands = load_candidates(shop, "test", size=5)
    items, target = np.asarray(cands.items), np.asarray(cands.target_index)
    rules = rule_scores(shop, "test", items)
    assert set(rules) == {"popular", "seen in history", "session category"}  # the shop's catalog has categories
    popularity = training_popularity(shop)[items]
    best_popular = np.argmax(rules["popular"], axis=1)
    assert (popularity[np.arange(len(items)), best_popular] == popularity.max(axis=1)).all()
    samples = shop.samples["test"]
    in_history = np.array([items[r, target[r]] in set(samples[r]["history_items"]) for r in range(len(items))])
    seen_hits = target_ranks(rules["seen in history"], target) == 1
    assert in_history.any() and seen_hits[in_history].all()  # negatives are never interacted: a seen one is the target
    for scores in rules.values():
        assert scores.shape == items.shape and all(len(set(row)) == items.shape[1] for row in scores)  # no ties
