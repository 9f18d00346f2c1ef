"""protocol: rerank end to end: a trained SASRec retrieves from the whole catalog, a TMF checkpoint re-ranks.

Real data preparation, a real (tiny) SASRec run through fit-graph, the checkpoint files inference reads,
real prompts and PEFT ranking; only the sizes are toy.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from tmf_testkit import save_checkpoint  # registered by tests/conftest.py

from graph_encoders.retrieval import Retrieval
from llmrec.config import ConfigError
from llmrec.eval.infer import load_infer_config, run_inference
from llmrec.eval.rerank import prompt_order, rerank_metrics, retrieved_candidates, two_stage_ranks
from llmrec.pipeline.cli import main as cli_main
from llmrec.tmf.model import ModalityTables

K = 6


def hand_rank(scores: list[float], target: int) -> int:
    return 1 + sum(s >= scores[target] for j, s in enumerate(scores) if j != target)


def toy_retrieval() -> Retrieval:
    """Three rows, k=3: targets at retriever rank 1, 3 and 7 (missed)."""
    items = np.array([[5, 6, 7], [1, 2, 3], [9, 8, 4]])
    scores = np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [3.0, 2.0, 1.0]], dtype=np.float32)
    return Retrieval("test", 3, items, scores, np.array([5, 3, 0]), np.array([1, 3, 7]), "toy")


def test_two_stage_metrics_by_hand():
    retrieval = toy_retrieval()
    candidates, _ = retrieved_candidates(retrieval, "retriever", seed=0)
    assert candidates.target_index.tolist() == [0, 2, -1]
    rows = np.arange(3)
    llm = np.array([[0.0, 1.0, -1.0], [-5.0, -6.0, 2.0]])  # row 0: target second; row 1: target first
    retriever_ranks, rerank_ranks = two_stage_ranks(retrieval, rows, rows[:2], llm, candidates.target_index)
    assert retriever_ranks.tolist() == [1, 3, 4] and rerank_ranks.tolist() == [2, 1, 4]  # misses capped at k+1
    metrics = rerank_metrics(retriever_ranks, rerank_ranks, 3, [1, 3])
    assert metrics["recall@3"] == pytest.approx(2 / 3) and metrics["n_users"] == 3
    assert metrics["retriever"]["HR@1"] == pytest.approx(1 / 3) and metrics["rerank"]["HR@1"] == pytest.approx(1 / 3)
    assert metrics["rerank"]["NDCG@3"] == pytest.approx((1 / np.log2(3) + 1) / 3)
    assert metrics["retriever"]["NDCG@3"] == pytest.approx((1 + 1 / np.log2(4)) / 3)
    assert metrics["retriever"]["HR@3"] == metrics["rerank"]["HR@3"] == metrics["recall@3"]  # the ceiling


def test_shuffled_order_is_a_seeded_permutation_per_row():
    retrieval = toy_retrieval()
    first, again, other = (prompt_order(retrieval, "shuffled", s) for s in (0, 0, 1))
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert (np.sort(first, axis=1) == np.arange(3)).all()
    shuffled, scores = retrieved_candidates(retrieval, "shuffled", seed=0)
    for row in range(3):  # the same items and scores, permuted together
        pairs = dict(zip(retrieval.items[row].tolist(), retrieval.scores[row].tolist(), strict=True))
        assert dict(zip(shuffled.items[row].tolist(), scores[row].tolist(), strict=True)) == pairs
    with pytest.raises(ValueError, match="rerank.order"):
        prompt_order(retrieval, "alphabetical", 0)


def write_configs(tmp_path, shop_cache):
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({
        "name": "rerank-test-shop", "source": "synthetic", "synthetic": {"n_users": 24, "n_items": 40},
        "max_history": 6, "cache_dir": str(shop_cache), "candidates": [{"splits": ["valid", "test"], "size": 5}]}))
    graph = tmp_path / "sasrec.yaml"
    graph.write_text(yaml.safe_dump({
        "data": str(data), "output_dir": str(tmp_path / "runs" / "{model}_{dataset}"),
        "model": {"name": "sasrec", "hidden_size": 16, "max_len": 8},
        "train": {"epochs": 2, "num_threads": 1, "batch_size": 16, "monitor": "uni5/NDCG@3"},
        "eval": {"protocols": [{"name": "uni5", "sampler": "uniform", "size": 5, "ks": [1, 3]}], "full_ks": [1, K]}}))
    return data, graph


def test_llmrec_infer_rerank(tmp_path, peaked_lm_dir):
    data, graph = write_configs(tmp_path, tmp_path / "cache")
    checkpoint = save_checkpoint(tmp_path / "ckpt", peaked_lm_dir, ModalityTables(), f"data_config={data}",
                                 "curriculum.fixed_task=easy", "max_length=400")
    outputs = {}
    for order in ("shuffled", "retriever"):
        outputs[order] = tmp_path / f"rerank-{order}.jsonl"
        assert cli_main(["infer", f"checkpoint={checkpoint}", "protocol=rerank", "mode=rank", f"rerank.k={K}",
                         f"rerank.retriever={graph}", f"rerank.order={order}", "rerank.ks=[1,3,6]",
                         f"output={outputs[order]}", "precision=fp32"]) == 0
    records = [json.loads(line) for line in outputs["shuffled"].read_text().splitlines()]
    meta = json.loads(outputs["shuffled"].with_name(outputs["shuffled"].name + ".meta.json").read_text())
    assert len(records) == meta["n_users"] == meta["n_split_users"] == 24 and meta["retriever"] == "sasrec"
    hits = [r for r in records if r["target_index"] >= 0]
    assert meta["n_scored"] == len(hits) and 0 < len(hits) < len(records)  # both kinds of user present
    for r in records:
        assert len(r["candidates"]) == len(r["retriever_scores"]) == K
        assert r["retriever_rank"] == min(r["target_catalog_rank"], K + 1)
        if r["target_index"] >= 0:
            assert r["candidates"][r["target_index"]] == r["target"] and r["target_catalog_rank"] <= K
            assert r["rerank_rank"] == hand_rank(r["scores"], r["target_index"])
            assert r["retriever_rank"] == hand_rank(r["retriever_scores"], r["target_index"])
        else:
            assert r["scores"] is None and r["rerank_rank"] == K + 1 and r["target_catalog_rank"] > K
    m = meta["metrics"]
    ranks = np.array([r["rerank_rank"] for r in records])
    assert m["rerank"]["HR@1"] == pytest.approx((ranks == 1).mean())
    assert m["rerank"]["HR@6"] == m["retriever"]["HR@6"] == m["recall@6"] == pytest.approx(len(hits) / 24)
    # the retriever's own order is fit-graph's full ranking of the same run (its best weights)
    fit = json.loads((tmp_path / "runs" / "sasrec_rerank-test-shop" / "metrics.json").read_text())["test"]
    assert m["retriever"]["HR@1"] == pytest.approx(fit["full/HR@1"])
    assert m["retriever"]["HR@6"] == pytest.approx(fit["full/HR@6"])

    kept = [json.loads(line) for line in outputs["retriever"].read_text().splitlines()]
    for a, b in zip(records, kept, strict=True):  # the same retrieved lists; retriever order lists them best first
        assert sorted(c["item_id"] for c in a["candidates"]) == sorted(c["item_id"] for c in b["candidates"])
        assert b["retriever_scores"] == sorted(b["retriever_scores"], reverse=True)
        assert b["retriever_rank"] == a["retriever_rank"]


def test_rerank_settings_are_checked(tmp_path, peaked_lm_dir, shop, tables):
    with pytest.raises(ConfigError, match="mode: rank"):
        load_infer_config(None, ["checkpoint=x", "protocol=rerank", "mode=both"])
    assert load_infer_config(None, ["checkpoint=x", "protocol=rerank"]).mode == "auto"  # auto is rank under rerank
    with pytest.raises(ConfigError, match=r"rerank.ks"):
        load_infer_config(None, ["checkpoint=x", "protocol=rerank", "mode=rank", "rerank.k=5", "rerank.ks=[1,10]"])
    checkpoint = save_checkpoint(tmp_path / "ckpt", peaked_lm_dir, tables)
    cfg = load_infer_config(None, [f"checkpoint={checkpoint}", "protocol=rerank", "mode=rank"])
    with pytest.raises(ConfigError, match="run_rerank"):
        run_inference(cfg, shop, tables, progress=False)
