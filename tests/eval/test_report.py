"""llmrec evaluate on hand-written predictions files: metrics, table, chart, and bad input."""

from __future__ import annotations

import json

import pytest

from llmrec.eval.report import PredictionsError, evaluate_files, read_predictions, run_names
from llmrec.pipeline.cli import main as cli_main

CANDIDATES = [{"item_id": "m1", "title": "Alien (1979)"}, {"item_id": "m2", "title": "Aliens (1986)"},
              {"item_id": "m3", "title": "Toy Story (1995)"}]


def record(user, target, generation=None, scores=None):
    out = {"user": user, "candidates": CANDIDATES, "target_index": target,
           "target": dict(CANDIDATES[target])}
    if generation is not None:
        out["generation"] = generation
    if scores is not None:
        out["scores"] = scores
    return out


def write(path, records, extra_lines=()):
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_generative_and_ranking_metrics(tmp_path):
    records = [
        record("u1", 0, " Alien (1979)\n", [-1.0, -3.0, -2.0]),        # correct; ranked 1st
        record("u2", 1, " toy story (1995).", [-2.0, -2.0, -5.0]),     # valid, wrong; tie -> rank 2
        record("u3", 2, " Blade Runner", [-1.0, -4.0, -0.5]),          # invalid; ranked 1st
        record("u4", 1, "\n\n\"Aliens (1986)\"", [-0.1, -3.0, -2.0]),  # correct after blank lines; rank 3
    ]
    path = write(tmp_path / "run.jsonl", records)
    payload = evaluate_files([path], tmp_path / "out", ks=(1, 2, 3, 5))
    metrics = payload["runs"]["run"]
    assert metrics["n"] == 4 and metrics["n_valid"] == 3 and metrics["n_correct"] == 2
    assert metrics["HitRate@1"] == pytest.approx(2 / 4)
    assert metrics["HitRate@1_valid"] == pytest.approx(2 / 3)
    assert metrics["ValidRatio"] == pytest.approx(3 / 4)
    ranks = [1, 2, 1, 3]  # ties count against the target
    assert metrics["HR@1"] == pytest.approx(sum(r <= 1 for r in ranks) / 4)
    assert metrics["HR@2"] == pytest.approx(sum(r <= 2 for r in ranks) / 4)
    assert metrics["MRR@2"] == pytest.approx(sum(1 / r for r in ranks if r <= 2) / 4)
    assert "HR@3" not in metrics and "HR@5" not in metrics  # 3 candidates: HR@3 would be 1 by construction
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["runs"]["run"]["HitRate@1"] == metrics["HitRate@1"]
    table = (tmp_path / "out" / "metrics.md").read_text()
    assert table.splitlines()[2].startswith("| run | 4 | 0.5000 | 0.6667 | 0.7500 |")
    assert (tmp_path / "out" / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_two_runs_share_one_table_and_chart(tmp_path, capsys):
    a = write(tmp_path / "a.jsonl", [record("u1", 0, "Alien (1979)"), record("u2", 2, "Aliens (1986)")])
    b = write(tmp_path / "b.jsonl", [record("u1", 0, scores=[0.0, -1.0, -2.0]),
                                     record("u2", 2, scores=[0.0, -1.0, -2.0])])
    code = cli_main(["evaluate", "--predictions", str(a), "--predictions", str(b), "--names", "gen", "rank",
                     "--out", str(tmp_path / "cmp")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| gen | 2 | 0.5000 |" in printed and "| rank | 2 | — |" in printed
    runs = json.loads((tmp_path / "cmp" / "metrics.json").read_text())["runs"]
    assert runs["gen"]["HitRate@1"] == 0.5 and "HR@1" not in runs["gen"]
    assert runs["rank"]["HR@1"] == 0.5 and "HitRate@1" not in runs["rank"]


def test_malformed_line_names_file_and_line(tmp_path, capsys):
    path = write(tmp_path / "bad.jsonl", [record("u1", 0, "Alien (1979)")], ["", "{not json"])
    with pytest.raises(PredictionsError, match=r"bad\.jsonl:3: not valid JSON"):
        read_predictions(path)
    assert cli_main(["evaluate", "--predictions", str(path), "--out", str(tmp_path / "o")]) == 1
    assert "bad.jsonl:3" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    (lambda r: r.pop("target_index"), "missing key 'target_index'"),
    (lambda r: r.update(target_index=3), "'target_index' must be an integer in 0..2"),
    (lambda r: r.update(scores=[1.0, 2.0]), "'scores' must be 3 finite numbers"),
    (lambda r: r.update(generation=7), "'generation' must be a string"),
    (lambda r: r.update(candidates=[{"item_id": "x"}]), r"candidates\[0\] must be an object"),
])
def test_bad_records_are_errors_naming_the_line(tmp_path, change, message):
    bad = record("u2", 1, "Aliens (1986)")
    change(bad)
    path = write(tmp_path / "p.jsonl", [record("u1", 0, "Alien (1979)"), bad])
    with pytest.raises(PredictionsError, match=rf"p\.jsonl:2: {message}"):
        read_predictions(path)


def test_mixed_kinds_and_empty_files_are_errors(tmp_path):
    mixed = write(tmp_path / "mixed.jsonl", [record("u1", 0, "Alien (1979)"), record("u2", 0, scores=[0, 1, 2])])
    with pytest.raises(PredictionsError, match=r"mixed\.jsonl:2: some lines have 'generation'"):
        evaluate_files([mixed], tmp_path / "o")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(PredictionsError, match="no predictions"):
        read_predictions(empty)


def test_run_names(tmp_path):
    paths = [tmp_path / "a" / "predictions.jsonl", tmp_path / "b" / "predictions.jsonl"]
    assert run_names(paths, None) == ["a/predictions", "b/predictions"]
    assert run_names(paths, ["x", "y"]) == ["x", "y"]
    with pytest.raises(ValueError, match="2 predictions files"):
        run_names(paths, ["x"])
