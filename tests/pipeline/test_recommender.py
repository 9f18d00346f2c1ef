"""llmrec.Recommender on a saved checkpoint: the scores of ``llmrec infer``, known / unknown / cold items, batches.

Real checkpoint files (the testkit's random-init TMF on the peaked tiny Llama, hard task, random tables), the
synthetic shop, real prompts, PEFT and ranking.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tmf_testkit import save_checkpoint  # registered by tests/conftest.py

from llmrec.eval.infer import load_infer_config, run_inference
from llmrec.pipeline.recommender import Recommender, UnknownItemError
from llmrec.tmf.model import ModalityTables

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, peaked_lm_dir, tables):
    return save_checkpoint(tmp_path_factory.mktemp("rec") / "ckpt", peaked_lm_dir, tables)


@pytest.fixture(scope="module")
def recommender(checkpoint, shop, tables):
    return Recommender.from_pretrained(checkpoint, dataset=shop, tables=tables, device="cpu")


def test_history(shop, row: int) -> list[tuple[str, str]]:
    sample = shop.samples["test"][row]
    return [(shop.item_ids[i], shop.behaviors[b])
            for i, b in zip(sample["history_items"], sample["history_behaviors"], strict=True)]


test_history.__test__ = False  # a helper, not a test


def test_rank_scores_equal_llmrec_infer(tmp_path, checkpoint, recommender, shop, tables):
    cfg = load_infer_config(None, [f"checkpoint={checkpoint}", "mode=rank", "paraphrase=fixed", "n_users=4",
                                   f"output={tmp_path / 'p.jsonl'}", "device=cpu"])
    records = [json.loads(line) for line in run_inference(cfg, shop, tables, progress=False).read_text().splitlines()]
    assert recommender.task == "hard" and len(records) == 4
    for record in records:
        candidates = [c["item_id"] for c in record["candidates"]]
        got = recommender.recommend(test_history(shop, record["row"]), candidates, k=5)
        by_item = {item.item_id: item.score for item in got.items}
        assert sorted(by_item) == sorted(candidates)
        np.testing.assert_allclose([by_item[c] for c in candidates], record["scores"], rtol=1e-5, atol=1e-5)
        assert got.items[0].item_id == candidates[record["ranked_index"]]
        assert [i.score for i in got.items] == sorted((i.score for i in got.items), reverse=True)


def test_whole_catalog_batch_equals_one_by_one(recommender, shop):
    histories = [test_history(shop, row) for row in (0, 3, 5)]
    batch = recommender.recommend_batch(histories, k=shop.n_items)
    for history, together in zip(histories, batch, strict=True):
        alone = recommender.recommend(history, k=shop.n_items)
        seen = {item_id for item_id, _ in history}
        # candidates=None: every catalog item but the history's, each once, on ceil(n / 5) prompts
        assert sorted(i.item_id for i in alone.items) == sorted(set(shop.item_ids) - seen)
        assert [i.item_id for i in together.items] == [i.item_id for i in alone.items]
        np.testing.assert_allclose([i.score for i in together.items], [i.score for i in alone.items], rtol=1e-5,
                                   atol=1e-5)
    assert len(recommender.recommend(histories[0], k=3).items) == 3


def test_constrained_knockout_batch_equals_one_by_one(recommender, shop):
    histories = [test_history(shop, row) for row in (1, 2)]
    batch = recommender.recommend_batch(histories, mode="constrained")
    for history, together in zip(histories, batch, strict=True):
        alone = recommender.recommend(history, mode="constrained")
        assert len(alone.items) == 1 and alone.items[0].score is None
        assert together.items == alone.items and together.generations == alone.generations
        # 40 items minus the history in prompts of 5, then the picks, until one prompt holds the rest
        assert len(alone.generations) >= 3
        assert alone.items[0].item_id not in {item_id for item_id, _ in history}


def test_unknown_items_raise_or_are_skipped_and_counted(recommender, shop):
    history = test_history(shop, 0)
    with pytest.raises(UnknownItemError, match=r"item 'no-such-item' \(history position 1\) is not in the catalog"):
        recommender.recommend([history[0], ("no-such-item", "view"), *history[1:]])
    with pytest.raises(UnknownItemError, match=r"'ghost' \(candidate 1\)"):
        recommender.recommend(history, [shop.item_ids[0], "ghost"])
    with pytest.raises(ValueError, match="behavior 'like'"):
        recommender.recommend([(shop.item_ids[0], "like")])
    candidates = list(shop.item_ids[:5])
    clean = recommender.recommend(history, candidates)
    skipped = recommender.recommend([history[0], ("no-such-item", "view"), *history[1:]],
                                    [candidates[0], "ghost", *candidates[1:]], unknown="skip")
    assert skipped.skipped == ["no-such-item", "ghost"] and clean.skipped == []
    assert recommender.recommend(history, candidates + candidates[:2]).items == clean.items  # repeats scored once
    assert [(i.item_id, i.score) for i in skipped.items] == [(i.item_id, i.score) for i in clean.items]


def scored(result) -> list[tuple[str, float]]:
    return [(i.item_id, i.score) for i in result.items]


def test_timestamps_order_the_history(recommender, shop):
    history = test_history(shop, 2)
    assert len(history) >= 3
    candidates = list(shop.item_ids[-5:])
    ordered = scored(recommender.recommend(history, candidates))
    timed = [(item, behavior, 10 * k) for k, (item, behavior) in enumerate(history)][::-1]  # newest first
    assert scored(recommender.recommend(timed, candidates)) == ordered
    as_dicts = [{"item_id": i, "behavior": b, "timestamp": t} for i, b, t in timed]
    assert scored(recommender.recommend(as_dicts, candidates)) == ordered
    # without timestamps the given order is the order
    assert scored(recommender.recommend(history[::-1], candidates)) != ordered
    with pytest.raises(ValueError, match="timestamp for every interaction"):
        recommender.recommend([(*history[0], 1), history[1]], candidates)


def test_cold_items_rank_on_text_and_image_alone(checkpoint, shop, tables):
    """A graph row masked False is never read: any values there give the same scores (and unmasked, others)."""
    cold = 7

    def with_graph(rows, mask):
        graph = dataclasses.replace(tables.graph, item=rows, item_mask=mask)
        return ModalityTables(text=tables.text, image=tables.image, graph=graph)

    mask = tables.graph.item_mask.clone()
    mask[cold] = False
    noisy = tables.graph.item.clone()
    noisy[cold] = torch.randn(noisy.shape[1], generator=torch.Generator().manual_seed(5)) * 10
    history, candidates = test_history(shop, 0), [shop.item_ids[k] for k in (cold, 1, 2, 3, 4)]
    candidates = [c for c in candidates if c not in {i for i, _ in history}]
    scores = {}
    for name, table in {"masked": with_graph(tables.graph.item, mask), "masked-noisy": with_graph(noisy, mask),
                        "present-noisy": with_graph(noisy, tables.graph.item_mask)}.items():
        rec = Recommender.from_pretrained(checkpoint, dataset=shop, tables=table, device="cpu")
        assert rec.cold_items == ([shop.item_ids[cold]] if name.startswith("masked") else [])
        scores[name] = {i.item_id: i.score for i in rec.recommend(history, candidates).items}
    assert scores["masked"] == pytest.approx(scores["masked-noisy"], abs=1e-6)
    assert scores["present-noisy"][shop.item_ids[cold]] != pytest.approx(scores["masked"][shop.item_ids[cold]],
                                                                          abs=1e-4)


def test_from_llmrec_import_recommender_is_the_only_heavy_import():
    """``import llmrec.config`` stays torch-free; ``from llmrec import Recommender`` works, graph_encoders first too."""
    code = ("import sys, llmrec.config; assert 'torch' not in sys.modules, 'llmrec.config loaded torch'; "
            "import graph_encoders.cli; from llmrec import Recommender; import llmrec; "
            "assert Recommender.__module__ == 'llmrec.pipeline.recommender'; assert dir(llmrec) == "
            "sorted(set(dir(llmrec))) and 'Recommender' in dir(llmrec); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=900,
                         check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
