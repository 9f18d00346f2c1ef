"""Per-row baseline predictions: llmrec infer's format, the evaluator's rows and exactly its scores."""

import numpy as np
import pytest

from graph_encoders.batching import SequenceBatcher
from graph_encoders.cli import FitGraphConfig, fit_graph, load_run
from graph_encoders.evaluation import EvalConfig
from graph_encoders.predictions import (
    baseline_prediction_records,
    catalog_names,
    prediction_records,
    predictions_path,
    written_protocols,
)
from llmrec.config import load_config
from llmrec.data.candidates import load_candidates
from llmrec.eval.report import evaluate_predictions, read_predictions

TINY_RUN = [
    "data=unused.yaml", "model={name: sasrec}", "model.hidden_size=16", "model.max_len=8", "train.epochs=2",
    "train.num_threads=1", "train.batch_size=16",
    "eval.protocols=[{name: uni5, sampler: uniform, size: 5, ks: [1, 3]}]",
    "eval.full_ks=[1, 5]", "train.monitor=uni5/NDCG@3",
]


def _fit(tmp_path, make_tiny, full_ranking: bool, batch_size: int = 1024):
    cfg = load_config(FitGraphConfig, None, [*TINY_RUN, f"output_dir={tmp_path}", f"eval.full_ranking={full_ranking}",
                                             f"eval.batch_size={batch_size}"])
    return fit_graph(cfg, dataset=make_tiny(), progress=False)


# scores gathered from score_all in one chunk; from score_candidates in chunks of 7 rows
@pytest.mark.parametrize("full_ranking, batch_size", [(True, 1024), (False, 7)])
def test_predictions_file_reproduces_the_run_metrics(tmp_path, make_tiny, full_ranking, batch_size):
    result = _fit(tmp_path, make_tiny, full_ranking, batch_size)
    for split in ("valid", "test"):
        path = predictions_path(result.run_dir, split, "uni5")
        assert path == tmp_path / f"predictions-{split}-uni5.jsonl" and path.is_file()
        preds = read_predictions(path)
        metrics = evaluate_predictions(preds, ks=(1, 3))
        assert metrics["n"] == 24 and metrics["n_candidates"] == [5]
        assert metrics["HR@1"] == result.metrics[split]["uni5/HR@1"]
        assert metrics["HR@3"] == pytest.approx(result.metrics[split]["uni5/HR@3"], abs=1e-12)
        assert metrics["NDCG@3"] == pytest.approx(result.metrics[split]["uni5/NDCG@3"], abs=1e-12)
        assert {r["model"] for r in preds.records} == {"sasrec"} and {r["split"] for r in preds.records} == {split}


def test_rows_users_and_targets_match_the_frozen_candidates(tmp_path, make_tiny):
    result = _fit(tmp_path, make_tiny, True)
    dataset = make_tiny()
    samples = dataset.samples["test"]
    cands = load_candidates(dataset, "test", sampler="uniform", size=5, seed=0)
    records = read_predictions(tmp_path / "predictions-test-uni5.jsonl").records
    assert [r["row"] for r in records] == list(range(len(samples)))
    for k, record in enumerate(records):
        assert record["user"] == dataset.user_ids[samples[k]["user"]]
        assert [c["item_id"] for c in record["candidates"]] == [dataset.item_ids[i] for i in cands.items[k]]
        assert record["target_index"] == cands.target_index[k]
        target = dataset.item_ids[samples[k]["target"]]
        assert record["candidates"][record["target_index"]]["item_id"] == target == record["target"]["item_id"]
        assert [c["title"] for c in record["candidates"]] == [f"item {i}" for i in cands.items[k]]
        assert record["ranked_index"] == int(np.argmax(record["scores"]))
    # a finished run scored again from its best weights gives the same lines
    model, dataset, config = load_run(result.run_dir, dataset=make_tiny())
    again = baseline_prediction_records(model, SequenceBatcher(dataset, model.config.max_len), "test",
                                        config.eval.protocols[0], config.eval)
    assert again == records


def test_switch_off_and_large_protocols_write_no_file(tmp_path, make_tiny):
    cfg = load_config(FitGraphConfig, None, [*TINY_RUN, f"output_dir={tmp_path}", "write_predictions=false",
                                             "train.epochs=1"])
    fit_graph(cfg, dataset=make_tiny(), progress=False)
    assert not list(tmp_path.glob("predictions-*.jsonl"))
    assert written_protocols(EvalConfig()) == ["uni10"]  # pop100 (101 candidates) is left out


def test_records_are_checked(tiny_dataset):
    cands = load_candidates(tiny_dataset, "test", sampler="uniform", size=5, seed=0)
    scores = np.zeros(cands.items.shape, dtype=np.float32)
    scores[3, 2] = np.nan
    with pytest.raises(ValueError, match="sasrec test: row 3 has a non-finite candidate score"):
        prediction_records(tiny_dataset, "test", cands, scores, "sasrec")
    with pytest.raises(ValueError, match="do not line up"):
        prediction_records(tiny_dataset, "test", cands, scores[:, :4], "sasrec")
    tiny_dataset.catalog.loc[4, "title"] = "  a\n title "
    tiny_dataset.catalog.loc[5, "title"] = ""
    names = catalog_names(tiny_dataset)
    assert names[4] == "a title" and names[5] == "item 5"

