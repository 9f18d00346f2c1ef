"""bench/llm_experiment.py carried_rows: rows of an earlier results file join today's table only for the same split
and candidates (same fingerprint, or equal per-user ranks of every recorded rule row)."""

import json
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def experiment(bench_script):
    return bench_script("llm_experiment")


def write(path: Path, fingerprint: str, popular: list[int], session: list[int]) -> Path:
    path.write_text(json.dumps({"fingerprint": fingerprint, "candidate_file": "x/test-uniform-n10-seed0.arrow",
                                "rows": {"LLaRA": {"HR@1": 0.5, "target_ranks": [1, 2, 1]},
                                         "popular": {"target_ranks": popular},
                                         "session category": {"target_ranks": session}}}))
    return path


def test_rows_carry_on_the_same_fingerprint_or_equal_rule_ranks(experiment, tmp_path):
    today = {"popular": np.array([1, 3, 2]), "session category": np.array([2, 1, 1])}
    cands = "y/test-uniform-n10-seed0.arrow"
    same = write(tmp_path / "a.json", "f" * 64, [9, 9, 9], [9, 9, 9])
    assert experiment.carried_rows(same, ["LLaRA"], "f" * 64, cands, today)["LLaRA"]["HR@1"] == 0.5
    moved = write(tmp_path / "b.json", "e" * 64, [1, 3, 2], [2, 1, 1])  # old fingerprint format, same ranks
    assert set(experiment.carried_rows(moved, ["LLaRA", "text-only LLM"], "f" * 64, cands, today)) == {"LLaRA"}
    other = write(tmp_path / "c.json", "e" * 64, [1, 3, 2], [1, 1, 2])  # one rule's ranks differ: other data
    assert experiment.carried_rows(other, ["LLaRA"], "f" * 64, cands, today) == {}
    assert experiment.carried_rows(moved, ["LLaRA"], "f" * 64, cands, {"popular": today["popular"]}) == {}  # one rule
    assert experiment.carried_rows(moved, ["LLaRA"], "f" * 64, "y/test-popular-n100.arrow", today) == {}


def test_every_experiment_row_has_a_recipe_and_the_category_first_table_its_titles(experiment):
    root = Path(__file__).resolve().parents[2]
    for name, table in experiment.EXPERIMENTS.items():
        for recipe in [*table["llm_rows"].values(), *table["conventional"].values()]:
            assert (root / recipe).is_file(), f"{name}: {recipe}"
        assert set(table["table3"]) <= set(table["llm_rows"]) and table["full"] in table["llm_rows"]
    shop, first = experiment.EXPERIMENTS["shop"]["llm_rows"], experiment.EXPERIMENTS["shop_category_first"]["llm_rows"]
    assert list(first) == list(shop)
    for recipe in first.values():
        assert "synthetic.title_order=category_first" in (root / recipe).read_text(encoding="utf-8"), recipe


def test_training_time_flags_a_paused_step_and_keeps_the_raw_sum(experiment, tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    seconds = [60.0, 58.0, 3600.0, 61.0, 59.0]  # step 3: the process was stopped for an hour inside it
    metrics.write_text("".join(json.dumps({"step": i + 1, "loss": 1.0, "seconds": s}) + "\n"
                               for i, s in enumerate(seconds)))
    time = experiment.training_time(metrics)
    assert time["train_minutes"] == pytest.approx(sum(seconds) / 60)  # the raw sum is reported, not corrected
    assert time["paused_steps"] == [{"step": 3, "seconds": 3600.0, "median_seconds": 60.0}]
    metrics.write_text("".join(json.dumps({"step": i + 1, "loss": 1.0, "seconds": s}) + "\n"
                               for i, s in enumerate([60.0, 90.0])))
    assert experiment.training_time(metrics)["paused_steps"] == []  # a slow step is not a pause
