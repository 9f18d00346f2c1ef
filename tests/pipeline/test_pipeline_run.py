"""``llmrec pipeline`` end to end at toy scale: a tiny shop, a tiny SASRec baseline, the tiny random-init Llama.

Real data preparation, graph training, LoRA fine-tuning, ranking, generation and report; only the sizes are
toy. What is checked is the report's bookkeeping: every row on the same users, the training labels and chance.
"""

from __future__ import annotations

import json

import numpy as np
import tmf_testkit as kit  # registered by tests/conftest.py
import yaml

from llmrec.config import load_config, save_config
from llmrec.data import load_data_config, prepare
from llmrec.eval.report import evaluate_predictions, read_predictions
from llmrec.eval.rules import training_popularity
from llmrec.pipeline.run import TEXT_ONLY, PipelineConfig, run_pipeline
from llmrec.train.config import load_train_config


def write_configs(tmp_path, lm_dir):
    data = kit.write_shop_data_config(tmp_path / "data.yaml", "pipeline-test-shop", tmp_path / "cache")
    graph = tmp_path / "sasrec.yaml"
    graph.write_text(yaml.safe_dump({
        "data": str(data), "output_dir": str(tmp_path / "runs" / "{model}_{dataset}"),
        "model": {"name": "sasrec", "hidden_size": 16, "max_len": 8, "use_behaviors": True},  # exports behavior rows
        "train": {"epochs": 2, "num_threads": 1, "batch_size": 16, "monitor": "uni5/NDCG@3"},
        "eval": {"protocols": [{"name": "uni5", "sampler": "uniform", "size": 5, "ks": [1, 3]}], "full_ks": [1, 5]}}))
    recipe = tmp_path / "recipe.yaml"
    save_config(load_train_config(None, [
        f"data_config={data}", "encode_config=null", f"graph_config={graph}", f"model.lm.name_or_path={lm_dir}",
        "model.lora.dropout=0.0", "max_steps=2", "batch_size=2", "gradient_accumulation_steps=1",
        "eval.every=-1", "eval.candidates.size=5", "train_candidates.size=5", "save_every=1000",
        "curriculum.t1=0", "precision=fp32", "max_length=256"]), recipe)
    return graph, recipe


def test_report_rows_share_users_and_say_how_long_each_llm_trained(tmp_path, tiny_lm_dir, capsys):
    graph, recipe = write_configs(tmp_path, tiny_lm_dir)
    out = tmp_path / "quick"
    cfg = load_config(PipelineConfig, None, [
        f"recipe={recipe}", f"baselines=[{graph}]", "baseline_protocol=uni5", "rank_users=4", "generate_users=2",
        "rank_batch_size=10", "text_only=true", f"output_dir={out}"])
    report = run_pipeline(cfg)

    assert set(report["rows"]) == {"sasrec", "TMF", TEXT_ONLY, "chance", "rule: popular", "rule: seen in history",
                                   "rule: session category"}
    assert report["n_rows_ranked"] == {"sasrec": 4, "TMF": 4, TEXT_ONLY: 4}
    assert report["n_users_generated"] == 2 and report["n_candidates"] == 5
    assert report["rows"]["chance"]["HitRate@1 (rank)"] == 0.2 and report["rows"]["chance"]["HR@3 (rank)"] == 0.6
    for name, task in (("TMF", "hard"), (TEXT_ONLY, "easy")):
        trained = report["llm_training"][name]
        assert (trained["steps"], trained["samples"], trained["task"]) == (2, 4, task)
        state = json.loads((out / ("tmf" if name == "TMF" else "text_only") / "checkpoints" / "step-00000002" /
                            "trainer_state.json").read_text())
        assert trained["epochs"] == 2 / state["steps_per_epoch"]
    # the text-only row is the easy task only; its predictions are the same users as TMF's
    text_rows = [json.loads(line) for line in (out / "predictions-rank-text-only.jsonl").read_text().splitlines()]
    tmf_rows = [json.loads(line) for line in (out / "predictions-rank-TMF.jsonl").read_text().splitlines()]
    assert {r["task"] for r in text_rows} == {"easy"} and {r["task"] for r in tmf_rows} == {"hard"}
    assert [r["user"] for r in text_rows] == [r["user"] for r in tmf_rows]
    # rule rows on the same users: "popular" by hand from the training interactions
    dataset = prepare(load_data_config(tmp_path / "data.yaml"))
    popularity = training_popularity(dataset)
    by_id = {item_id: k for k, item_id in enumerate(dataset.item_ids)}
    hits = [int(np.argmax([popularity[by_id[c["item_id"]]] for c in r["candidates"]])) == r["target_index"]
            for r in tmf_rows]
    assert report["rows"]["rule: popular"]["HitRate@1 (rank)"] == np.mean(hits)
    # the table's numbers are the predictions files' own metrics
    hr1 = evaluate_predictions(read_predictions(out / "predictions-rank-TMF.jsonl"), ks=(1,))["HR@1"]
    assert report["rows"]["TMF"]["HitRate@1 (rank)"] == hr1
    notes = (out / "report.md").read_text()
    assert "smoke-scale" in notes and "TMF: fine-tuned 2 optimizer steps, 4 prompts" in notes
    assert "docs/RESULTS.md" in notes and "| chance |" in notes
    assert (out / "report.png").stat().st_size > 0
    assert "smoke-scale" in capsys.readouterr().out
