"""``train.windows=rows``: sequence models train on pre-split (history, target) rows and are scored on frozen sets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from graph_encoders.base import DatasetSpec, build_model
from graph_encoders.batching import SequenceBatcher
from graph_encoders.evaluation import CandidateProtocol, EvalConfig, evaluate
from graph_encoders.trainer import TrainConfig, Trainer, seed_everything
from llmrec.data import load_candidates, load_data_config, prepare

N_ITEMS = 20


def _rows(rng: np.random.Generator, split: str, n: int, candidates: bool = False) -> list[dict]:
    """Rows following a planted rule: the next item is (last + 1) mod N_ITEMS."""
    out = []
    for _ in range(n):
        start, length = int(rng.integers(N_ITEMS)), int(rng.integers(2, 6))
        items = [(start + k) % N_ITEMS for k in range(length + 1)]
        row = {"split": split, "history": items[:-1], "target": items[-1]}
        if candidates:
            others = [i for i in rng.permutation(N_ITEMS).tolist() if i not in items][:4]
            row["candidates"] = others[:2] + [items[-1]] + others[2:]
        out.append(row)
    return out


@pytest.fixture(scope="module")
def presplit_dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rows")
    rng = np.random.default_rng(0)
    rows = _rows(rng, "train", 300) + _rows(rng, "valid", 30) + _rows(rng, "test", 30, candidates=True)
    path = folder / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = load_data_config(None, ["name=rows", "source=samples", f"path={path}", f"cache_dir={folder / 'cache'}",
                                  "candidates=[{splits: [valid], sampler: uniform, size: 5, seed: 0}]"])
    return prepare(cfg)


def test_row_batch_is_history_then_target(presplit_dataset):
    ds = presplit_dataset
    batcher = SequenceBatcher(ds, max_len=4)
    windows = batcher.training_windows("rows")
    assert windows.from_rows and len(windows.rows) == len(ds.samples["train"]) == 300
    batch = batcher.training_batch(windows.rows[:3], from_rows=True)
    for r in range(3):
        row = ds.samples["train"][r]
        history = row["history_items"][-4:]
        assert batch.items[r, 4 - len(history):].tolist() == [i + 1 for i in history]
        assert batch.labels[r, -1].item() == row["target"] + 1
        assert batch.loss_mask[r].tolist() == [False, False, False, True]  # the target only


def test_sasrec_trains_on_rows_and_beats_chance_on_frozen_candidates(presplit_dataset):
    ds = presplit_dataset
    seed_everything(0)
    model = build_model("sasrec", {"hidden_size": 16, "max_len": 6, "num_layers": 1}, DatasetSpec.from_dataset(ds))
    eval_config = EvalConfig(protocols=[CandidateProtocol("uni5", "uniform", 5, 0, [1])], full_ks=[5])
    config = TrainConfig(epochs=4, batch_size=32, learning_rate=1e-2, windows="rows", monitor="uni5/HR@1",
                         patience=10, checkpoint=False, num_threads=1)
    batcher = SequenceBatcher(ds, 6)
    before = evaluate(model, batcher, "test", eval_config, progress=False)
    state = Trainer(model, batcher, config, eval_config, progress=False).fit()
    assert state.history[-1]["loss"] < state.history[0]["loss"]
    after = evaluate(model, batcher, "test", eval_config, progress=False)
    # the test rows' candidates are the file's (target in column 2); chance HR@1 is 0.2
    frozen = load_candidates(ds, "test", "uniform", 5, 0)
    assert (frozen.target_index == 2).all()
    assert after["uni5/HR@1"] > max(0.5, before["uni5/HR@1"])


def test_windows_mode_warns_on_presplit_data(presplit_dataset, caplog):
    batcher = SequenceBatcher(presplit_dataset, 4)
    with caplog.at_level("WARNING"):
        windows = batcher.training_windows("all")
    assert "pre-split" in caplog.text and not windows.from_rows
