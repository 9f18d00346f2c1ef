"""llmrec infer end to end: a saved TMF checkpoint -> predictions.jsonl -> llmrec evaluate.

Real checkpoint files (TMFModel.save_pretrained + the resolved train config, as the trainer writes
them), the synthetic shop prepared on disk, real prompts, PEFT, generation and ranking.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from tmf_testkit import save_checkpoint  # registered by tests/conftest.py

from llmrec.config import ConfigError, save_config
from llmrec.eval.infer import (
    InferConfig,
    default_output,
    load_infer_config,
    resolve_checkpoint,
    run_inference,
    select_rows,
)
from llmrec.eval.report import evaluate_files
from llmrec.pipeline.cli import main as cli_main
from llmrec.pipeline.commands import inference_inputs
from llmrec.tmf.model import ModalityTables
from llmrec.train.config import load_train_config

REPO = Path(__file__).resolve().parents[2]


def hand_rank(scores: list[float], target: int) -> int:
    return 1 + sum(s >= scores[target] for k, s in enumerate(scores) if k != target)


def test_infer_then_evaluate_on_a_hard_checkpoint(tmp_path, peaked_lm_dir, shop, tables):
    checkpoint = save_checkpoint(tmp_path / "ckpt", peaked_lm_dir, tables)
    cfg = load_infer_config(None, [f"checkpoint={checkpoint}", "mode=both", "generation.max_new_tokens=40",
                                   "generation.constrained=true", "precision=fp32", "save_prompts=true"])
    path = run_inference(cfg, shop, tables, progress=False)
    # a checkpoint folder outside a run's checkpoints/: predictions in its own predictions/ subfolder
    assert path == checkpoint / "predictions" / "ckpt-test-hard.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    test = shop.samples["test"]
    assert len(records) == len(test) > 5
    for record in records:
        sample = test[record["row"]]
        assert record["user"] == shop.user_ids[sample["user"]]
        assert record["task"] == "hard" and "[MT_i:" in record["prompt"]
        assert len(record["candidates"]) == 5 and len(record["scores"]) == 5
        assert record["target"]["item_id"] == shop.item_ids[sample["target"]]
        assert record["candidates"][record["target_index"]] == record["target"]
        assert record["parsed_index"] is not None  # constrained: always a candidate
        assert record["generation"].strip() == record["candidates"][record["parsed_index"]]["title"]
        assert record["ranked_index"] == int(np.argmax(record["scores"]))
    meta = json.loads(path.with_name(path.name + ".meta.json").read_text())
    assert meta["n_users"] == len(records) and meta["task"] == "hard"

    metrics = evaluate_files([path], tmp_path / "eval", ks=(1, 3))["runs"]["ckpt-test-hard"]
    n = len(records)
    hits = sum(r["generation"].strip() == r["target"]["title"] for r in records)
    ranks = [hand_rank(r["scores"], r["target_index"]) for r in records]
    assert metrics["HitRate@1"] == pytest.approx(hits / n)
    assert metrics["ValidRatio"] == 1.0
    assert metrics["HR@1"] == pytest.approx(sum(k == 1 for k in ranks) / n)
    assert metrics["HR@3"] == pytest.approx(sum(k <= 3 for k in ranks) / n)
    assert metrics["MRR@3"] == pytest.approx(sum(1 / k for k in ranks if k <= 3) / n)
    assert 0.0 < metrics["HR@3"] < 1.0  # random model: neither degenerate


def test_llmrec_infer_and_evaluate_commands(tmp_path, peaked_lm_dir, shop, capsys):
    """The CLI path: the data come from the checkpoint's train config (llmrec.pipeline.stages.ensure_inputs)."""
    data_config = tmp_path / "data.yaml"
    data_config.write_text(yaml.safe_dump({
        "name": "tmf-test-shop", "source": "synthetic", "synthetic": {"n_users": 24, "n_items": 40},
        "max_history": 6, "cache_dir": str(shop.root.parent),
        "candidates": [{"splits": ["valid", "test"], "size": 5}]}))
    checkpoint = save_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000003", peaked_lm_dir, ModalityTables(),
                                 f"data_config={data_config}", "curriculum.fixed_task=easy")
    (checkpoint / "trainer_state.json").write_text("{}")
    (checkpoint.parent / "latest").write_text(checkpoint.name + "\n")
    tuned = tmp_path / "tuned.jsonl"
    assert cli_main(["infer", f"checkpoint={tmp_path / 'run'}", f"output={tuned}", "n_users=4",
                     "generation.max_new_tokens=6", "precision=fp32"]) == 0
    zero_shot = tmp_path / "zero.jsonl"
    assert cli_main(["infer", "checkpoint=null", f"recipe={checkpoint / 'train_config.yaml'}", "task=easy",
                     f"output={zero_shot}", "n_users=4", "mode=generate", "generation.max_new_tokens=6",
                     "precision=fp32"]) == 0
    by_full = tmp_path / "tuned-full.jsonl"  # rank_method reaches the ranking: the reference path, same scores
    assert cli_main(["infer", f"checkpoint={tmp_path / 'run'}", f"output={by_full}", "n_users=4", "mode=rank",
                     "rank_method=full", "precision=fp32"]) == 0
    first, second, full = ([json.loads(x) for x in p.read_text().splitlines()] for p in (tuned, zero_shot, by_full))
    np.testing.assert_allclose([r["scores"] for r in full], [r["scores"] for r in first], rtol=1e-5, atol=1e-4)
    assert json.loads(by_full.with_name(by_full.name + ".meta.json").read_text())["config"]["rank_method"] == "full"
    assert [r["user"] for r in first] == [r["user"] for r in second] and len(first) == 4
    assert {r["task"] for r in first} == {"easy"} and "scores" in first[0] and "scores" not in second[0]
    assert [r["candidates"] for r in first] == [r["candidates"] for r in second]  # the same frozen sets

    capsys.readouterr()
    assert cli_main(["evaluate", "--predictions", str(tuned), "--predictions", str(zero_shot), "--names", "tuned",
                     "zero-shot", "--out", str(tmp_path / "eval")]) == 0
    assert "| zero-shot | 4 |" in capsys.readouterr().out
    runs = json.loads((tmp_path / "eval" / "metrics.json").read_text())["runs"]
    assert set(runs) == {"tuned", "zero-shot"} and "HR@1" in runs["tuned"] and "HR@1" not in runs["zero-shot"]
    assert (tmp_path / "eval" / "metrics.png").stat().st_size > 1000


def test_zero_shot_must_be_text_only(tmp_path, peaked_lm_dir):
    with pytest.raises(ConfigError, match="zero-shot runs use task: easy"):
        load_infer_config(None, ["recipe=x.yaml", "task=hard", "output=p.jsonl"])
    recipe = tmp_path / "recipe.yaml"
    save_config(load_train_config(None, [f"model.lm.name_or_path={peaked_lm_dir}"]), recipe)
    with pytest.raises(ConfigError, match="resolves the task to 'hard'"):
        # the task is checked before any input is used, so no dataset or tables are needed to fail
        run_inference(load_infer_config(None, [f"recipe={recipe}", "output=p.jsonl"]), dataset=None, tables=None)
    with pytest.raises(ConfigError, match="needs an explicit output"):
        load_infer_config(None, [f"recipe={recipe}"])


def test_default_predictions_live_beside_the_run_not_in_a_rotated_checkpoint(tmp_path):
    step = tmp_path / "run" / "checkpoints" / "step-00000004"
    assert default_output(step, "test", "hard") == tmp_path / "run" / "predictions" / "step-00000004-test-hard.jsonl"
    assert default_output(tmp_path / "copied", "valid", "easy") == tmp_path / "copied" / "predictions" / \
        "copied-valid-easy.jsonl"


def test_checkpoint_resolution_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a checkpoint folder"):
        resolve_checkpoint(tmp_path)
    (tmp_path / "tmf_model.yaml").write_text("{}")
    assert resolve_checkpoint(tmp_path) == tmp_path
    with pytest.raises(FileNotFoundError, match="no train_config.yaml; set recipe"):
        inference_inputs(InferConfig(checkpoint=str(tmp_path)))


def test_user_subset_is_seeded_and_sorted():
    rows = select_rows(100, 10, seed=3, split="test")
    assert len(set(rows.tolist())) == 10 and list(rows) == sorted(rows)
    assert np.array_equal(rows, select_rows(100, 10, seed=3, split="test"))
    assert not np.array_equal(rows, select_rows(100, 10, seed=4, split="test"))
    assert np.array_equal(select_rows(7, None, 0, "test"), np.arange(7))


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "infer").glob("*.yaml")), ids=lambda p: p.name)
def test_every_infer_config_loads(path):
    cfg = load_infer_config(path)
    if cfg.recipe is not None:
        assert (REPO / cfg.recipe).is_file(), f"{path.name}: recipe {cfg.recipe} does not exist"
    header = path.read_text().splitlines()[0]
    assert header.startswith("#")


def test_dropped_modalities_change_hard_prompts_only(tmp_path, peaked_lm_dir, shop, tables):
    """drop_modalities masks a modality out of the fusion: hard-prompt scores move, easy ones cannot."""
    checkpoint = save_checkpoint(tmp_path / "ckpt", peaked_lm_dir, tables)
    scores = {}
    for task in ("hard", "easy"):
        for dropped in ([], ["image"], ["image", "graph"]):
            cfg = load_infer_config(None, [f"checkpoint={checkpoint}", "mode=rank", "n_users=4", f"task={task}",
                                           f"drop_modalities=[{','.join(dropped)}]", "precision=fp32",
                                           f"output={tmp_path / f'{task}-{len(dropped)}.jsonl'}"])
            path = run_inference(cfg, shop, tables, progress=False)
            scores[task, len(dropped)] = np.array([json.loads(x)["scores"] for x in path.read_text().splitlines()])
    assert not np.allclose(scores["hard", 0], scores["hard", 1])
    assert not np.allclose(scores["hard", 1], scores["hard", 2])
    np.testing.assert_array_equal(scores["easy", 0], scores["easy", 2])  # no item slots: nothing to fuse
    for bad in ("[image,text,graph]", "[image,image]", "[audio]"):
        with pytest.raises(ConfigError):
            load_infer_config(None, [f"checkpoint={checkpoint}", f"drop_modalities={bad}"])


def test_a_vllm_engine_is_closed_when_generation_fails(tmp_path, peaked_lm_dir, shop, tables, monkeypatch):
    """The engine (a subprocess, or accelerator memory) is released when ``generate`` raises, not only on
    success. vLLM cannot start in the test environment, so the generator is a ``VLLMGenerator`` subclass
    without an engine whose ``generate`` fails; everything else (checkpoint, prompts, collators) is real."""
    import llmrec.eval.infer as infer_module
    from llmrec.generation.vllm import VLLMGenerator

    closed = []

    class FailingEngine(VLLMGenerator):
        def __init__(self) -> None:  # no engine: nothing to start
            pass

        def where(self) -> str:
            return "a failing engine"

        def generate(self, prompts, batch_size=8, progress=True):
            raise RuntimeError("engine died")

        def close(self) -> None:
            closed.append(True)

    monkeypatch.setattr(infer_module, "make_generator", lambda *args: FailingEngine())
    checkpoint = save_checkpoint(tmp_path / "ckpt", peaked_lm_dir, tables)
    cfg = load_infer_config(None, [f"checkpoint={checkpoint}", "mode=generate", "precision=fp32", "n_users=2"])
    with pytest.raises(RuntimeError, match="engine died"):
        run_inference(cfg, shop, tables, progress=False)
    assert closed == [True]
