"""``llmrec.stages.ensure_graph_run``: one run per (config, dataset), reused, predictions written without retraining."""

import yaml

from graph_encoders.predictions import predictions_path
from llmrec.stages import ensure_graph_run, ensure_graph_table

TINY = {
    "data": "unused.yaml", "model": {"name": "sasrec", "hidden_size": 16, "max_len": 8},
    "train": {"epochs": 2, "num_threads": 1, "batch_size": 16, "monitor": "uni5/NDCG@3"},
    "eval": {"protocols": [{"name": "uni5", "sampler": "uniform", "size": 5, "ks": [1, 3]}], "full_ks": [1, 5]},
}


def _config(tmp_path, **changes):
    cfg = {**TINY, "output_dir": str(tmp_path / "runs" / "{model}_{dataset}"), **changes}
    path = tmp_path / "graph.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_matching_run_is_reused_not_trained_again(tmp_path, make_tiny):
    dataset = make_tiny()
    path = _config(tmp_path)
    run_dir = ensure_graph_run(path, dataset, predictions=(("test", "uni5"),))
    metrics = run_dir / "metrics.json"
    stamp = metrics.stat().st_mtime_ns
    assert predictions_path(run_dir, "test", "uni5").is_file()
    assert ensure_graph_run(path, dataset, predictions=(("test", "uni5"),)) == run_dir
    assert metrics.stat().st_mtime_ns == stamp  # not trained again
    assert ensure_graph_table(path, dataset).item.shape == (dataset.n_items, 16)  # the graph stage: the same run
    assert metrics.stat().st_mtime_ns == stamp


def test_missing_predictions_come_from_the_best_weights(tmp_path, make_tiny):
    dataset = make_tiny()
    path = _config(tmp_path, write_predictions=False)
    run_dir = ensure_graph_run(path, dataset)
    target = predictions_path(run_dir, "test", "uni5")
    assert not target.exists()
    stamp = (run_dir / "metrics.json").stat().st_mtime_ns
    ensure_graph_run(path, dataset, predictions=(("test", "uni5"),))
    assert target.is_file() and (run_dir / "metrics.json").stat().st_mtime_ns == stamp
    # the restored model reproduces the run's metric on those rows
    from llmrec.evaluation import evaluate_predictions, read_predictions

    recorded = yaml.safe_load((run_dir / "metrics.json").read_text())["test"]["uni5/HR@1"]
    assert evaluate_predictions(read_predictions(target), ks=(1,))["HR@1"] == recorded


def test_another_config_trains_again(tmp_path, make_tiny):
    dataset = make_tiny()
    run_dir = ensure_graph_run(_config(tmp_path), dataset)
    stamp = (run_dir / "metrics.json").stat().st_mtime_ns
    changed = _config(tmp_path, train={**TINY["train"], "epochs": 1})
    assert ensure_graph_run(changed, dataset) == run_dir
    assert (run_dir / "metrics.json").stat().st_mtime_ns != stamp
