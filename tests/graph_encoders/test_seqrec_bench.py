"""bench/seqrec.py: which overrides reach which model, and how the table names a model with its own overrides."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("seqrec_bench", ROOT / "bench" / "seqrec.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_prefixed_overrides_reach_only_their_model():
    overrides = ["train.seed=2", "mdsrec:model.center_positions=10", "mbht:model.dropout=0.3"]
    assert bench.overrides_for("mdsrec", overrides) == ["train.seed=2", "model.center_positions=10"]
    assert bench.overrides_for("mbht", overrides) == ["train.seed=2", "model.dropout=0.3"]
    assert bench.overrides_for("sasrec", overrides) == ["train.seed=2"]


def test_the_table_names_a_models_own_overrides():
    record = {"model": "mdsrec", "model_overrides": ["model.center_positions=10"], "seconds_per_epoch": 2.0,
              "epochs_to_quality": 5, "time_to_quality_seconds": 30.0, "eval_seconds": 0.5, "peak_rss_mib": 100,
              "valid_hr@10": 0.6, "test_hr@10": 0.58, "test_ndcg@10": 0.34}
    mbht = {**record, "model": "mbht", "model_overrides": [], "time_to_quality_seconds": 15.0}
    table = bench.markdown([mbht, record], 137.0, 20)
    assert "| mdsrec (model.center_positions=10) | 2.00 | 5 | 30.0 |" in table
    assert "| 2.00x |" in table and "| mbht | 2.00 |" in table


def test_an_override_for_a_model_not_run_is_refused(tmp_path):
    env = {**os.environ, "LLMREC_DATA_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "seqrec.py"), "--models", "mbht", "--out",
                           str(tmp_path / "out"), "mdsrec:model.center_positions=10"],
                          capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 2 and "not in --models: ['mdsrec']" in proc.stderr
