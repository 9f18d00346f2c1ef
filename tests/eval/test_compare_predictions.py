"""bench/compare_predictions.py --against-row: a prediction file paired with a committed row's per-user ranks."""

import json
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def compare(bench_script):
    return bench_script("compare_predictions")


def write_predictions(path: Path, scores: np.ndarray, targets: list[int], order: list[int]) -> Path:
    lines = [json.dumps({"split": "test", "row": row, "user": 100 + row, "target_index": targets[row],
                         "scores": scores[row].tolist(),
                         "candidates": [{"item_id": j} for j in range(scores.shape[1])]}) for row in order]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_against_row_pairs_users_in_split_row_order(compare, tmp_path):
    scores = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
    targets = [0, 2, 1, 2]  # hits at 1: yes, no, tie (pessimistic: no), yes
    preds = write_predictions(tmp_path / "a.jsonl", scores, targets, order=[2, 0, 3, 1])  # file order is not row order
    experiment = tmp_path / "exp.json"
    experiment.write_text(json.dumps({"rows": {"old": {"target_ranks": [1, 1, 1, 3]}, "no ranks": {"HR@1": 0.5}}}))
    result = compare.against_row(compare.read(preds), "a", experiment, "old")
    assert result["HR@1_a"] == 0.5 and result["HR@1_b"] == 0.75 and result["n_users"] == 4
    assert result["same_hit"] == 1  # user 0; users 1 and 2 are hits only in the row, user 3 only in A
    paired = result["a_minus_b"]
    assert paired["difference"] == pytest.approx(-0.25) and (paired["a_better"], paired["b_better"]) == (1, 2)
    with pytest.raises(SystemExit, match="no row 'no ranks' with per-user target_ranks"):
        compare.against_row(compare.read(preds), "a", experiment, "no ranks")
    experiment.write_text(json.dumps({"rows": {"old": {"target_ranks": [1, 1, 1, 3, 2]}}}))
    with pytest.raises(SystemExit, match="5 users"):
        compare.against_row(compare.read(preds), "a", experiment, "old")
