"""bench/seed_models.py --report-only on hand-made run folders: test tables from the per-user ranks, paired
differences, and the validation table (the split a configuration is chosen on) from each run's metrics.json."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("seed_models_bench", ROOT / "bench" / "seed_models.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def write_run(run_dir: Path, seed: int, ranks: np.ndarray, valid: dict, history: list | None = None) -> None:
    run_dir.mkdir(parents=True)
    np.savez(run_dir / "target_ranks-test.npz", pop100=ranks)
    test = {f"pop100/{m}": float(bench.per_user(ranks, m).mean()) for m in ("HR@10", "NDCG@10")}
    (run_dir / "metrics.json").write_text(json.dumps({
        "seed": seed, "valid": valid, "test": test, "best_epoch": 3, "train_seconds": 1.0, "wall_seconds": 2.0,
        "peak_rss_mib": 10.0, "dataset_fingerprint": "same", **({"history": history} if history else {})}))


def test_report_shows_validation_seed_means_beside_the_test_tables(tmp_path):
    rng = np.random.default_rng(0)
    runs = tmp_path / "runs"
    valid_ndcg = {("base", 1): 0.30, ("base", 2): 0.32, ("new", 1): 0.35, ("new", 2): 0.36}
    for (label, seed), ndcg in valid_ndcg.items():
        ranks = rng.integers(1, 30 if label == "base" else 12, size=200)
        write_run(runs / f"{label}_s{seed}", seed, ranks, {"pop100/HR@10": ndcg + 0.2, "pop100/NDCG@10": ndcg})
    out = tmp_path / "out"
    assert bench.main(["--models", "base", "new", "--baselines", "base", "--seeds", "1", "2", "--runs", str(runs),
                       "--out", str(out), "--report-only"]) == 0

    table = json.loads((out / "seed_models.json").read_text())
    assert table["models"]["new"]["valid"]["pop100/NDCG@10"] == {"per_seed": [0.35, 0.36], "mean": 0.355}
    assert table["models"]["base"]["valid"]["pop100/HR@10"]["mean"] == np.mean([0.5, 0.52])
    assert "uni10/HR@1" not in table["models"]["base"]["valid"]  # not in the runs' metrics: not invented
    text = (out / "seed_models.md").read_text()
    assert "| model | seeds | pop100/HR@10 | pop100/NDCG@10 |" in text
    assert "| new | 1, 2 | 0.5550 (0.5500, 0.5600) | 0.3550 (0.3500, 0.3600) |" in text
    pair = next(p for p in table["pairs"] if p["metric"] == "HR@10")
    assert pair["model"] == "new" and pair["baseline"] == "base" and pair["difference"] > 0  # ranks 1-11 vs 1-29


def test_time_to_quality_comes_from_each_runs_history(tmp_path):
    """The first epoch reaching the best epoch's validation HR@10, and its elapsed seconds, per seed."""
    rng = np.random.default_rng(1)
    runs = tmp_path / "runs"
    curves = {1: [0.40, 0.55, 0.50, 0.55], 2: [0.30, 0.45, 0.60, 0.58]}  # seed 1 reaches 0.55 at epoch 2 (not 4)
    for seed, curve in curves.items():
        history = [{"epoch": e + 1, "elapsed_seconds": 10.0 * (e + 1), "valid": {"pop100/HR@10": v}}
                   for e, v in enumerate(curve)]
        write_run(runs / f"m_s{seed}", seed, rng.integers(1, 20, size=50),
                  {"pop100/HR@10": max(curve), "pop100/NDCG@10": 0.3}, history)
    out = tmp_path / "out"
    assert bench.main(["--models", "m", "--baselines", "m", "--seeds", "1", "2", "--runs", str(runs),
                       "--out", str(out), "--report-only"]) == 0
    quality = json.loads((out / "seed_models.json").read_text())["models"]["m"]["time_to_quality"]
    assert quality == {"epochs": [2, 3], "seconds": [20.0, 30.0], "mean_seconds": 25.0}
    assert "| 2, 3 | 25 (20, 30) |" in (out / "seed_models.md").read_text()
