"""``llmrec.pipeline.stages.ensure_graph_run``: one run per (config, dataset), reused, predictions written without
retraining."""

import logging

import pytest
import torch
import yaml

from graph_encoders.predictions import predictions_path
from llmrec.pipeline.stages import ensure_graph_run, ensure_graph_table

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
    from llmrec.eval.report import evaluate_predictions, read_predictions

    recorded = yaml.safe_load((run_dir / "metrics.json").read_text())["test"]["uni5/HR@1"]
    assert evaluate_predictions(read_predictions(target), ks=(1,))["HR@1"] == recorded


def _metrics(run_dir):
    return yaml.safe_load((run_dir / "metrics.json").read_text())


def test_another_config_trains_again_from_scratch(tmp_path, make_tiny):
    dataset = make_tiny()
    run_dir = ensure_graph_run(_config(tmp_path, write_predictions=False), dataset, predictions=(("test", "uni5"),))
    assert _metrics(run_dir)["epochs_trained"] == 2 and predictions_path(run_dir, "test", "uni5").is_file()
    changed = _config(tmp_path, train={**TINY["train"], "epochs": 1}, write_predictions=False)
    assert ensure_graph_run(changed, dataset) == run_dir
    # not the old 2-epoch checkpoint continued (which would report 2 epochs and write nothing new)
    assert _metrics(run_dir)["epochs_trained"] == 1 and len(_metrics(run_dir)["history"]) == 1
    assert not predictions_path(run_dir, "test", "uni5").exists()  # the old run's predictions are gone


def test_another_dataset_version_trains_into_its_own_folder(tmp_path, make_tiny):
    """Same shape (same window count) but other data: neither the old checkpoint is continued nor the old run lost."""
    path = _config(tmp_path)
    old_data, new_data = make_tiny(seed=0), make_tiny(seed=1)
    run_dir = ensure_graph_run(path, old_data)
    stamp = (run_dir / "metrics.json").stat().st_mtime_ns
    new_dir = ensure_graph_run(path, new_data)
    assert new_dir == run_dir.with_name(f"{run_dir.name}-tiny-1")
    assert (run_dir / "metrics.json").stat().st_mtime_ns == stamp  # the other version's run is kept as it was
    metrics = _metrics(new_dir)
    assert metrics["dataset_fingerprint"] == "tiny-1" and metrics["epochs_trained"] == 2
    (tmp_path / "ref").mkdir()
    reference = _config(tmp_path / "ref")  # a run on the new data alone, in its own folder
    assert torch.equal(ensure_graph_table(path, new_data).item, ensure_graph_table(reference, new_data).item)
    new_stamp = (new_dir / "metrics.json").stat().st_mtime_ns
    assert ensure_graph_run(path, old_data) == run_dir and ensure_graph_run(path, new_data) == new_dir
    assert (run_dir / "metrics.json").stat().st_mtime_ns == stamp  # both reused, neither trained again
    assert (new_dir / "metrics.json").stat().st_mtime_ns == new_stamp


def test_an_unfinished_run_continues_from_its_checkpoint(tmp_path, make_tiny, caplog):
    dataset = make_tiny()
    path = _config(tmp_path)
    run_dir = ensure_graph_run(path, dataset)
    table = ensure_graph_table(path, dataset).item
    for name in ("metrics.json", "embeddings.safetensors", "embeddings.json"):  # as if killed after training
        (run_dir / name).unlink()
    with caplog.at_level(logging.INFO, logger="graph_encoders.trainer"):
        assert ensure_graph_run(path, dataset) == run_dir
    assert "resumed from" in caplog.text
    assert _metrics(run_dir)["epochs_trained"] == 2
    assert torch.equal(ensure_graph_table(path, dataset).item, table)


def test_a_run_saved_before_a_config_key_existed_is_reused(tmp_path, make_tiny):
    dataset = make_tiny()
    path = _config(tmp_path)
    run_dir = ensure_graph_run(path, dataset)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    del saved["encode"]  # as written before fit-graph had the key
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    stamp = (run_dir / "metrics.json").stat().st_mtime_ns
    assert ensure_graph_run(path, dataset) == run_dir
    assert (run_dir / "metrics.json").stat().st_mtime_ns == stamp  # not trained again


def test_behavior_config_takes_another_runs_behavior_table(tmp_path, make_tiny):
    from llmrec.config import ConfigError
    from llmrec.pipeline.stages import with_behaviors_of

    dataset = make_tiny()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    items = ensure_graph_table(_config(tmp_path / "a"), dataset)  # SASRec without behaviors: no behavior table
    behaviors = ensure_graph_table(_config(tmp_path / "b", model={**TINY["model"], "use_behaviors": True}), dataset)
    assert items.behavior is None and behaviors.behavior.shape == (dataset.n_behaviors, 16)
    merged = with_behaviors_of(items, behaviors, "b.yaml")
    assert torch.equal(merged.item, items.item) and torch.equal(merged.behavior, behaviors.behavior)
    assert merged.metadata["behavior_source"] == {"config": "b.yaml", "model": "sasrec"}
    with pytest.raises(ConfigError, match="behavior_config"):
        with_behaviors_of(behaviors, items, "a.yaml")  # that run has no behavior table
