"""A TMF recipe on each seed model's tables (issues #13-#15), through the real stages at toy scale.

The seed model is trained by the graph stage on a tiny synthetic shop with real text (MiniLM) and image
(handcrafted) features, its exported ``item`` table becomes TMF's graph modality, and behavior slots come
from its own table (DreamRec) or from an MBHT run named by ``behavior_config`` (MDSRec, M³BSR and BivRec
export none). Two optimizer steps of hard prompts (item and behavior slots) then train. Only sizes are toy.
"""

from __future__ import annotations

import json
import math

import pytest
import tmf_testkit as kit  # registered by tests/conftest.py
import torch
import yaml

from llmrec.pipeline.stages import ensure_inputs
from llmrec.train.config import load_train_config
from llmrec.train.loop import train

CLOZE = {"inner_size": 32, "low_rank": 3, "pool_sizes": [3, 7], "semantic_top_k": 2, "use_behaviors": True}
SEED_MODELS = {  # tiny shapes; the modality inputs are the shop's configs' own (text + image)
    "dreamrec": {**CLOZE, "modalities": ["text", "image"]},
    "mdsrec": {"n_centers": 4, "top_h": 3, "modalities": ["text", "image"]},
    "m3bsr": {"click_behaviors": [0], "favor_behaviors": [1, 2], "modality_steps": 2, "behavior_steps": 2,
              "modalities": ["text", "image"]},
    "bivrec": {"scales": [4], "interests": [2], "modalities": ["text", "image"]},
}


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    """The tiny shop's data and encode configs, and a graph config writer."""
    root = tmp_path_factory.mktemp("seed-tables")
    data = kit.write_shop_data_config(root / "data.yaml", "seed-tables-shop", root / "cache")
    encode = root / "encode.yaml"
    encode.write_text(yaml.safe_dump({
        "data": str(data), "progress": False,
        "text": {"kind": "sentence_transformer", "model": None, "template": ["{title}", "{text}"]},
        "image": {"kind": "handcrafted", "column": "image", "handcrafted": {"size": 16, "color_bins": 2}}}))

    def graph(name: str, params: dict) -> str:
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump({
            "data": str(data), "encode": str(encode), "output_dir": str(root / "runs" / "{model}_{dataset}"),
            "model": {"name": name, "hidden_size": 16, "max_len": 8, **params},
            "train": {"epochs": 1, "num_threads": 1, "batch_size": 16, "monitor": "uni5/NDCG@3"},
            "eval": {"protocols": [{"name": "uni5", "sampler": "uniform", "size": 5, "ks": [1, 3]}],
                     "full_ks": [1, 5]}}))
        return str(path)

    return data, encode, graph


@pytest.mark.parametrize("model", sorted(SEED_MODELS))
def test_a_tmf_recipe_trains_on_the_seed_models_tables(model, configs, tiny_lm_dir, tmp_path):
    data, encode, graph = configs
    behavior_config = None if model == "dreamrec" else graph("mbht", CLOZE)
    cfg = load_train_config(None, [
        f"data_config={data}", f"encode_config={encode}", f"graph_config={graph(model, SEED_MODELS[model])}",
        f"behavior_config={behavior_config or 'null'}", f"model.lm.name_or_path={tiny_lm_dir}",
        f"output_dir={tmp_path / 'tmf'}", "model.lora.dropout=0.0", "max_steps=2", "batch_size=2",
        "gradient_accumulation_steps=1", "eval.every=-1", "eval.candidates.size=5", "train_candidates.size=5",
        "save_every=1000", "curriculum.fixed_task=hard", "precision=fp32", "max_length=256", "log_every=1"])
    dataset, tables = ensure_inputs(cfg)

    assert tables.graph.metadata["model"] == model  # the seed model's run, not MBHT's
    assert tables.graph.item.shape == (dataset.n_items, 16) and torch.isfinite(tables.graph.item).all()
    assert tables.graph.behavior.shape == (dataset.n_behaviors, 16)
    if behavior_config:
        assert tables.graph.metadata["behavior_source"] == {"config": behavior_config, "model": "mbht"}
    assert tables.text is not None and tables.image is not None

    final = train(cfg, dataset, tables)
    assert final.name == "step-00000002"
    logged = [json.loads(line) for line in (tmp_path / "tmf" / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in logged if "loss" in row]
    assert [row["step"] for row in steps] == [1, 2]
    assert all(math.isfinite(row["loss"]) and row["loss"] > 0 for row in steps)
    assert all(set(row["tasks"]) == {"hard"} for row in steps)  # item and behavior slots in every prompt
