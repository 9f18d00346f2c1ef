"""``llmrec fit-graph`` end to end: a real CSV through llmrec.data, training, metrics.json and the table."""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from graph_encoders.batching import SequenceBatcher
from graph_encoders.cli import FitGraphConfig, fit_graph, load_run, main
from graph_encoders.evaluation import evaluate
from llmrec.config import ConfigError, load_config
from llmrec.tables import load_table

CONFIGS = sorted(Path(__file__).resolve().parents[2].joinpath("configs", "graph").glob("*.yaml"))
TINY_RUN = [
    "model.hidden_size=16", "model.max_len=8", "train.epochs=2", "train.num_threads=1", "train.batch_size=16",
    "eval.protocols=[{name: uni5, sampler: uniform, size: 5, ks: [1, 3]}]", "eval.full_ks=[1, 5]",
    "train.monitor=uni5/NDCG@3",
]


def _write_csv_dataset(tmp_path: Path, tiny) -> Path:
    rows = [
        {"user_id": f"u{s.user}", "item_id": int(i), "behavior": tiny.behaviors[b], "timestamp": int(t)}
        for s in tiny.sequences for i, b, t in zip(s.items, s.behaviors, s.timestamps, strict=True)
    ]
    csv = tmp_path / "interactions.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    data_config = {
        "name": "tinycsv", "source": "csv", "path": str(csv), "behaviors": tiny.behaviors,
        "target_behavior": "buy", "k_core": 1, "candidates": [], "cache_dir": str(tmp_path / "cache"),
    }
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(data_config))
    return path


@pytest.mark.parametrize("model", ["sasrec", "gru4rec", "bert4rec"])
def test_fit_graph_command_writes_metrics_and_tables(tmp_path, model, capsys, tiny_dataset):
    data = _write_csv_dataset(tmp_path, tiny_dataset)
    config = tmp_path / "fit.yaml"
    config.write_text(yaml.safe_dump({"data": str(data), "model": {"name": model, "use_behaviors": True}}))
    out = tmp_path / "run"
    assert main(["--config", str(config), "--quiet", f"output_dir={out}", *TINY_RUN]) == 0
    printed = json.loads(capsys.readouterr().out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert printed["test"] == metrics["test"] and metrics["model"] == model and metrics["dataset"] == "tinycsv"
    assert set(metrics["valid"]) >= {"uni5/HR@1", "uni5/NDCG@3", "full/HR@5"}
    assert metrics["epochs_trained"] == 2 and len(metrics["history"]) == 2 and metrics["seed"] == 42
    assert metrics["config"]["model"]["hidden_size"] == 16 and metrics["wall_seconds"] > 0
    assert 100 < metrics["peak_rss_mib"] < 64 * 1024  # the process holds torch: more than 100 MiB, less than the RAM
    assert metrics["cpu_capability"] == torch.backends.cpu.get_cpu_capability()  # the kernels the floats came from
    assert isinstance(metrics["kernel_variables"], dict)
    table = load_table(out / "embeddings.safetensors")
    assert table.item.shape == (30, 16) and table.behavior.shape == (3, 16)
    assert table.metadata["model"] == model and len(table.metadata["item_ids"]) == 30
    assert table.metadata["dataset_fingerprint"] == metrics["dataset_fingerprint"]
    assert (out / "config.yaml").is_file() and (out / "checkpoint" / "trainer_state.json").is_file()
    for split in ("valid", "test"):  # per-row target ranks: the protocol's metrics come back from them
        with np.load(out / f"target_ranks-{split}.npz") as ranks:
            names = sorted(ranks.files)
            assert names and all(f"{name}/HR@1" in metrics[split] for name in names)
            for name in names:
                assert ranks[name].dtype == np.int64 and ranks[name].min() >= 1
                assert np.isclose((ranks[name] == 1).mean(), metrics[split][f"{name}/HR@1"])


def test_fit_graph_with_a_prepared_dataset_is_reproducible(tmp_path, make_tiny):
    runs = []
    for name in ("a", "b"):
        cfg = load_config(FitGraphConfig, None, [
            "data=unused.yaml", "model={name: sasrec}", f"output_dir={tmp_path / name}", *TINY_RUN])
        runs.append(fit_graph(cfg, dataset=make_tiny(), progress=False))
    assert runs[0].metrics["test"] == runs[1].metrics["test"]
    a, b = load_table(runs[0].table_path), load_table(runs[1].table_path)
    assert b.behavior is None and (a.item == b.item).all()
    # a finished run loads back with its best weights and reproduces its test metrics
    model, dataset, config = load_run(runs[0].run_dir, dataset=make_tiny())
    assert (model.item_embeddings() == a.item).all() and not model.training
    again = evaluate(model, SequenceBatcher(dataset, model.config.max_len), "test", config.eval, progress=False)
    assert again == runs[0].metrics["test"]


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="model.name is required"):
        load_config(FitGraphConfig, None, ["data=x.yaml", "model={hidden_size: 8}"])
    with pytest.raises(ConfigError, match="model.num_heads"):
        load_config(FitGraphConfig, None, ["data=x.yaml", "model={name: sasrec, num_heads: two}"])
    with pytest.raises(ConfigError, match="unknown config key 'train.epoch'"):
        load_config(FitGraphConfig, None, ["data=x.yaml", "model={name: gru4rec}", "train.epoch=3"])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_graph_config_loads(path):
    config = load_config(FitGraphConfig, path)
    assert path.stem.startswith(config.model_name)
    data_config = Path(__file__).resolve().parents[2] / config.data
    assert data_config.is_file(), f"{path}: data config {config.data} does not exist"
    monitor_protocol = config.train.monitor.split("/")[0]
    assert monitor_protocol in {p.name for p in config.eval.protocols} | {"full"}


def test_sasrec_ml100k_config_runs_on_the_real_data(tmp_path):
    if not os.environ.get("LLMREC_DATA_DIR"):
        pytest.skip("LLMREC_DATA_DIR is not set (the folder holding ml-100k/)")
    root = Path(__file__).resolve().parents[2]
    overrides = [
        f"output_dir={tmp_path}", "train.epochs=1", "train.num_threads=1", "eval.full_ranking=false",
        f"data_overrides=[cache_dir={tmp_path / 'cache'}]", "model.num_layers=1",
    ]
    cfg = load_config(FitGraphConfig, root / "configs/graph/sasrec_ml100k.yaml", overrides)
    cfg.data = str(root / cfg.data)
    result = fit_graph(cfg, progress=False)
    assert result.metrics["dataset"] == "ml100k"
    assert 0.0 < result.metrics["test"]["pop100/HR@10"] <= 1.0
    assert load_table(result.table_path).item.shape[0] == len(load_table(result.table_path).metadata["item_ids"])
