"""A TMF recipe trains on LLaRA's LastFM split as published (source: llara; issue 19): a few steps of the real
loop with the tiny random-init Llama, text-only prompts in the shipped "music" domain, LLaRA's 20 candidates."""

from __future__ import annotations

import json
from pathlib import Path

from llmrec.data import load_data_config, prepare
from llmrec.tmf.model import ModalityTables
from llmrec.train.config import load_train_config
from llmrec.train.loop import Trainer

ROOT = Path(__file__).resolve().parents[2]


def test_tmf_steps_on_llara_lastfm(tmp_path, tiny_lm_dir, llmrec_data_dir, monkeypatch):
    monkeypatch.setenv("LLMREC_DATA_DIR", str(llmrec_data_dir))
    dataset = prepare(load_data_config(ROOT / "configs/data/llara_lastfm.yaml", [f"cache_dir={tmp_path / 'cache'}"]))
    cfg = load_train_config(None, [
        f"output_dir={tmp_path / 'run'}", f"model.lm.name_or_path={tiny_lm_dir}", "max_steps=2", "batch_size=2",
        "gradient_accumulation_steps=1", "eval.every=2", "eval.n_samples=4", "eval.candidates.size=20",
        "train_candidates.size=20", "curriculum.fixed_task=easy", "precision=fp32", "trackers=[]",
        f"prompts.templates={ROOT / 'prompts/tmf.yaml'}", f"prompts.domains={ROOT / 'prompts/domains.yaml'}"])
    Trainer(cfg, dataset, ModalityTables()).run()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(r["tasks"] == {"easy": 2} for r in records)
    assert all(r["loss"] > 0 for r in records)
    assert set(records[-1]["eval"]) >= {"HR@1"}  # validation ranked LLaRA's frozen 20 candidates
