"""Shared fixtures for the encoder tests: hand-built datasets, drawn images, tiny CLIP folders."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image, ImageDraw

from llmrec.data.types import SequenceDataset

COLORS = {"red": (200, 30, 40), "green": (40, 150, 60), "blue": (30, 80, 200), "yellow": (235, 200, 30)}
PATTERNS = ("solid", "striped", "dotted", "checked")


@pytest.fixture
def make_dataset():
    """A minimal SequenceDataset around a catalog (no sequences: the encoders read only the catalog)."""

    def make(catalog: pd.DataFrame, root: Path | None, name: str = "toy") -> SequenceDataset:
        ids = [str(v) for v in catalog["item_id"]]
        return SequenceDataset(name=name, item_ids=ids, user_ids=[], behaviors=["view", "purchase"],
                               target_behavior="purchase", catalog=catalog, sequences=[], samples={},
                               fingerprint=f"test-{name}", root=root)

    return make


def draw_pattern(color: str, pattern: str, size: int = 64, period: int = 8, phase: int = 0) -> Image.Image:
    """A full-frame swatch: ``color`` with a darker ``pattern`` (solid / striped / dotted / checked)."""
    rgb = COLORS[color]
    shade = tuple(int(c * 0.6) for c in rgb)
    img = Image.new("RGB", (size, size), rgb)
    draw = ImageDraw.Draw(img)
    if pattern == "striped":
        for y in range(phase, size, period):
            draw.rectangle((0, y, size - 1, y + period // 2 - 1), fill=shade)
    elif pattern == "dotted":
        r = max(1, period // 4)
        for y in range(phase + period // 2, size, period):
            for x in range(phase + period // 2, size, period):
                draw.ellipse((x - r, y - r, x + r, y + r), fill=shade)
    elif pattern == "checked":
        for y in range(0, size, period):
            for x in range(0, size, period):
                if ((x + y) // period) % 2 == 0:
                    draw.rectangle((x + phase, y, x + phase + period - 1, y + period - 1), fill=shade)
    return img


@pytest.fixture
def swatches():
    """Every (color, pattern) drawn three times with different periods/phases, and their labels."""
    images, labels = [], []
    for color in COLORS:
        for pattern in PATTERNS:
            for period, phase in ((8, 0), (10, 3), (12, 5)):
                images.append(draw_pattern(color, pattern, period=period, phase=phase))
                labels.append((color, pattern))
    return images, labels


@pytest.fixture(scope="session")
def tiny_open_clip_dir(tmp_path_factory) -> Path:
    """An open_clip ``local-dir:`` folder with a tiny architecture and no weights."""
    folder = tmp_path_factory.mktemp("open_clip_tiny")
    config = {
        "model_cfg": {
            "embed_dim": 32,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
            "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
        },
        "preprocess_cfg": {"mean": [0.481, 0.458, 0.408], "std": [0.269, 0.261, 0.276]},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return folder


def clip_bpe_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's real BPE vocabulary, rebuilt from the merges file that open_clip ships."""
    from open_clip.tokenizer import bytes_to_unicode

    folder = Path(importlib.util.find_spec("open_clip").submodule_search_locations[0])
    lines = gzip.open(folder / "bpe_simple_vocab_16e6.txt.gz").read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    base = list(bytes_to_unicode().values())
    tokens = base + [b + "</w>" for b in base] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


@pytest.fixture(scope="session")
def tiny_hf_clip_dir(tmp_path_factory) -> Path:
    """A transformers CLIPModel folder: tiny random (seeded) weights, real CLIP tokenizer, image processor."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    folder = tmp_path_factory.mktemp("hf_clip_tiny")
    vocab, merges = clip_bpe_vocab()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=32, bos_token_id=vocab["<|startoftext|>"],
                         eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    CLIPTokenizer(vocab=vocab, merges=merges).save_pretrained(folder)
    return folder
