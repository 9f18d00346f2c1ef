"""The pipeline's report compares baselines and TMF on identical rows: the row filter and the config check."""

from pathlib import Path

import numpy as np
import pytest

from graph_encoders.cli import FitGraphConfig
from graph_encoders.predictions import prediction_records
from llmrec.config import ConfigError, load_config
from llmrec.data.candidates import load_candidates
from llmrec.eval.report import PredictionsError, read_predictions
from llmrec.io import write_jsonl
from llmrec.pipeline.run import PipelineConfig, check_baseline_config, restrict_to_rows

ROOT = Path(__file__).resolve().parents[2]


def _tmf_like(record: dict) -> dict:
    """A rank-mode ``llmrec infer`` line for the same row (other titles and scores, same candidates)."""
    return {"user": record["user"], "split": record["split"], "row": record["row"], "task": "hard", "paraphrase": 0,
            "candidates": [{"item_id": c["item_id"], "title": f"Name {c['item_id']}"} for c in record["candidates"]],
            "target_index": record["target_index"], "target": record["target"],
            "scores": [-1.0] * len(record["candidates"]), "ranked_index": 0}


@pytest.fixture
def baseline(tmp_path, tiny_dataset):
    cands = load_candidates(tiny_dataset, "test", sampler="uniform", size=5, seed=0)
    scores = np.random.default_rng(0).normal(size=cands.items.shape).astype(np.float32)
    records = prediction_records(tiny_dataset, "test", cands, scores, "sasrec")
    return records, write_jsonl(tmp_path / "predictions-test-uni5.jsonl", records)


def test_baseline_lines_are_restricted_to_the_rows_tmf_ranked(tmp_path, baseline):
    records, path = baseline
    rows = [3, 7, 19]
    reference = write_jsonl(tmp_path / "predictions-rank.jsonl", [_tmf_like(records[r]) for r in rows])
    out = restrict_to_rows(path, reference, tmp_path / "eval" / "sasrec-test-uni5.jsonl")
    kept = read_predictions(out).records
    assert [r["row"] for r in kept] == rows and kept == [records[r] for r in rows]
    # every row: the filter is the identity
    everything = write_jsonl(tmp_path / "all.jsonl", [_tmf_like(r) for r in records])
    assert read_predictions(restrict_to_rows(path, everything, tmp_path / "same.jsonl")).records == records


def test_rows_on_other_candidates_or_missing_are_errors(tmp_path, baseline):
    records, path = baseline
    other = _tmf_like(records[5])
    other["candidates"] = other["candidates"][::-1]
    reference = write_jsonl(tmp_path / "rank.jsonl", [_tmf_like(records[2]), other])
    with pytest.raises(PredictionsError, match=r"rank.jsonl:2: row \('test', 5, '5'\) has other candidates"):
        restrict_to_rows(path, reference, tmp_path / "out.jsonl")
    missing = _tmf_like(records[1]) | {"row": 99}
    reference = write_jsonl(tmp_path / "rank.jsonl", [missing])
    with pytest.raises(PredictionsError, match=r"rank.jsonl:1: \(split, row, user\) \('test', 99, '1'\) is not in"):
        restrict_to_rows(path, reference, tmp_path / "out.jsonl")


def test_quickstart_baselines_write_the_predictions_the_report_needs(monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = load_config(PipelineConfig, ROOT / "configs" / "quickstart.yaml")
    for path in cfg.baselines:
        graph_cfg = load_config(FitGraphConfig, path)
        check_baseline_config(graph_cfg, path, cfg.split, cfg.baseline_protocol)
        with pytest.raises(ConfigError, match=f"{path}: eval.protocols has no 'pop100'"):
            check_baseline_config(graph_cfg, path, cfg.split, "pop100")
    big = load_config(FitGraphConfig, None, ["data=x.yaml", "model={name: sasrec}", "splits=[valid]"])
    with pytest.raises(ConfigError, match="big.yaml: protocol 'pop100' has 101 candidates"):
        check_baseline_config(big, "big.yaml", "valid", "pop100")
    with pytest.raises(ConfigError, match=r"big.yaml: splits \['valid'\] lacks 'test'"):
        check_baseline_config(big, "big.yaml", "test", "uni10")
