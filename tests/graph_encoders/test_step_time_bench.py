"""bench/step_time.py end to end on ML-100k with SASRec (the fastest model): every round times every checkout in
its own process, the ratios are paired per round, and a checkout without the config is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "step_time.py"


def run(args: list[str], data_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LLMREC_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(BENCH), *args], check=False, capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)


def test_rounds_time_each_checkout_and_pair_the_ratios(llmrec_data_dir, tmp_path):
    out = tmp_path / "out"
    proc = run(["--checkouts", ".", ".", "--config", "configs/graph/sasrec_ml100k.yaml", "--threads", "1",
                "--rounds", "2", "--steps", "2", "--out", str(out)], llmrec_data_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "step_time.json").read_text())
    first, second = summary["records"]
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=7", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], check=True,
                                capture_output=True, text=True).stdout.strip())  # a dirty checkout is labelled so
    assert first["ratio_to_first"] == 1.0
    for record in (first, second):
        assert len(record["per_round"]) == 2 and all(s > 0 for s in record["per_round"])
        assert record["checkout"] == str(ROOT)
        assert record["commit"].startswith(head) and record["commit"].endswith("-dirty") == dirty
    ratios = sorted(b / a for a, b in zip(first["per_round"], second["per_round"], strict=True))
    assert second["ratio_to_first"] == sum(ratios) / 2  # the median of two paired rounds
    assert "| median s/step |" in (out / "step_time.md").read_text()


def test_a_checkout_without_the_config_is_refused(llmrec_data_dir, tmp_path):
    proc = run(["--checkouts", str(tmp_path), "--out", str(tmp_path / "out")], llmrec_data_dir)
    assert proc.returncode == 2 and "configs/graph/bivrec_ml100k.yaml does not exist" in proc.stderr
