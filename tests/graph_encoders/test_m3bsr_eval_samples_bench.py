"""bench/m3bsr_eval_samples.py on a real (tiny, random-init) M³BSR and the tiny dataset's frozen candidates: each K
scores as a model built with ``eval_samples: K`` does, and the model's own setting is left as it was."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from graph_encoders.base import DatasetSpec, build_model
from graph_encoders.batching import SequenceBatcher
from graph_encoders.evaluation import CandidateProtocol, EvalConfig, evaluate_split

BENCH = Path(__file__).resolve().parents[2] / "bench" / "m3bsr_eval_samples.py"
TINY = {"hidden_size": 16, "max_len": 8, "num_heads": 2, "dropout": 0.0}


def load_bench():
    spec = importlib.util.spec_from_file_location("m3bsr_eval_samples", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(dataset, **overrides):
    generator = torch.Generator().manual_seed(3)
    spec = DatasetSpec.from_dataset(dataset, text_table=torch.randn(dataset.n_items, 12, generator=generator))
    torch.manual_seed(0)
    return build_model("m3bsr", {**TINY, **overrides}, spec).eval()


def test_each_k_scores_as_a_model_built_with_it(tiny_dataset):
    bench = load_bench()
    config = EvalConfig(protocols=[CandidateProtocol(name="uni10", sampler="uniform", size=10, ks=[1, 5])],
                        full_ks=[1, 5, 10, 20])
    batcher = SequenceBatcher(tiny_dataset, TINY["max_len"])
    model = build(tiny_dataset, eval_samples=2)
    rows, seconds = bench.score_model(model, batcher, config, [1, 3])
    assert model.config.eval_samples == 2 and set(seconds) == {1, 3}
    for k in (1, 3):
        for split in ("valid", "test"):
            expected = evaluate_split(build(tiny_dataset, eval_samples=k), batcher, split, config, progress=False)
            assert rows[k][split] == expected.metrics
    assert rows[3]["valid"] != rows[1]["valid"]
    report = {"run": "runs/x/m3bsr_s1", "best_epoch": 7, "validated_with_eval_samples": 1, "rows": rows,
              "seconds": seconds}
    assert bench.mean_rows([report, report], [1, 3])[3]["test"] == rows[3]["test"]
    text = bench.markdown([report], [1, 3], threads=1)
    assert text.count("m3bsr_s1 (best epoch 7, chosen with 1)") == 2
