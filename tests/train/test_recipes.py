"""Every TMF recipe, DeepSpeed and accelerate config loads and is consistent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llmrec.config import ConfigError
from llmrec.encoders.config import load_encode_config
from llmrec.pipeline.commands import train_main as main
from llmrec.train.config import load_train_config

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "configs").glob("tmf_*.yaml"))


def test_the_four_recipes_exist():
    assert {p.name for p in RECIPES} >= {"tmf_llama2_7b.yaml", "tmf_smollm2_ml100k.yaml",
                                         "tmf_smollm2_taobao.yaml", "tmf_smollm2_shop.yaml"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_loads_and_documents_its_launch(recipe):
    cfg = load_train_config(recipe)
    text = recipe.read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert any(f"--config configs/{recipe.name}" in line for line in header)  # the launch command
    assert (REPO / cfg.data_config).is_file(), f"{recipe.name}: {cfg.data_config} does not exist"
    assert cfg.encode_config.startswith("configs/encode/")  # written by the encoder stage's owners
    assert cfg.graph_config.startswith("configs/graph/mbht_")  # TMF's graph encoder (§3.3)
    assert cfg.eval.candidates.size == cfg.train_candidates.size
    data = yaml.safe_load((REPO / cfg.data_config).read_text())
    frozen = {(spec["sampler"], spec["size"]) for spec in data.get("candidates", [])
              if "valid" in spec["splits"]}
    assert (cfg.eval.candidates.sampler, cfg.eval.candidates.size) in frozen  # evaluate on the frozen set


def test_paper_recipe_matches_section_5_1():
    cfg = load_train_config(REPO / "configs/tmf_llama2_7b.yaml")
    assert cfg.model.lm.name_or_path == "meta-llama/Llama-2-7b-hf" and cfg.model.lm.dtype == "bfloat16"
    assert cfg.batch_size * cfg.gradient_accumulation_steps == 64 and cfg.epochs <= 3


@pytest.mark.parametrize("recipe, modalities", [("tmf_smollm2_ml100k.yaml", ["text"]),  # ML-100k has no images
                                                ("tmf_smollm2_shop.yaml", ["text", "image"])])
def test_recipe_encodes_the_modalities_its_dataset_has(recipe, modalities):
    """The recipe's encode config, loaded and validated as ``llmrec encode`` loads it, encodes exactly these
    modalities (a missing one reaches TMF as an absent, masked table): catches a recipe pointed at another
    dataset's encode config or a misspelt encoder kind."""
    encode = load_encode_config(REPO / load_train_config(REPO / "configs" / recipe).encode_config)
    assert encode.modalities == modalities


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs(stage):
    ds = json.loads((REPO / f"configs/deepspeed/zero{stage}.json").read_text())
    assert ds["zero_optimization"]["stage"] == stage
    accelerate = yaml.safe_load((REPO / f"configs/accelerate/zero{stage}.yaml").read_text())
    assert accelerate["distributed_type"] == "DEEPSPEED"
    assert (REPO / accelerate["deepspeed_config"]["deepspeed_config_file"]).is_file()


@pytest.mark.parametrize("name", ["cpu", "single_gpu", "multi_gpu", "zero2", "zero3"])
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(REPO / f"configs/accelerate/{name}.yaml"))
    assert cfg.num_processes >= 1


def test_unknown_or_ill_typed_keys_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="optimizer.lrr"):
        load_train_config(REPO / "configs/tmf_smollm2_shop.yaml", ["optimizer.lrr=1"])
    with pytest.raises(ConfigError, match="batch_size"):
        load_train_config(REPO / "configs/tmf_smollm2_shop.yaml", ["batch_size=0"])


def test_main_prints_the_resolved_config(capsys):
    assert main(["--config", str(REPO / "configs/tmf_smollm2_shop.yaml"), "--print-config", "max_steps=7"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["max_steps"] == 7 and printed["model"]["lora"]["r"] == 8


def test_train_prefix_overrides_reach_the_recipe_top_level():
    from llmrec.config import ConfigError

    recipe = Path(__file__).resolve().parents[2] / "configs" / "tmf_smollm2_ml100k.yaml"
    assert load_train_config(recipe, ["train.max_steps=20"]).max_steps == 20
    with pytest.raises(ConfigError, match="nope"):
        load_train_config(recipe, ["train.nope=1"])
