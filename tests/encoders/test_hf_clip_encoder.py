"""transformers CLIPModel towers from a local folder (tiny seeded weights, CLIP's real BPE tokenizer)."""

import shutil

import pandas as pd
import pytest
import torch
from PIL import Image

from llmrec.config import from_dict
from llmrec.encoders import EncodeConfig, WeightsNotFoundError, build_encoders, run_encoding
from llmrec.encoders.hf_clip import HFClipEncoder


def test_folder_weights_encode_text_and_images_into_one_space(tiny_hf_clip_dir):
    enc = HFClipEncoder(str(tiny_hf_clip_dir))
    assert not enc.random_init and len(enc.weights_fingerprint()) == 64 and enc._model is None
    text = enc.encode_texts(["a red striped shirt", "blue socks", "a red striped shirt"])
    image = enc.encode_images([Image.new("RGB", (40, 30), (200, 30, 40)), Image.new("RGB", (30, 30), (0, 0, 255))])
    assert text.shape == (3, 16) and image.shape == (2, 16) and enc.dim == 16
    assert torch.allclose(text[0], text[2], atol=1e-6) and not torch.allclose(text[0], text[1], atol=1e-3)
    assert torch.allclose(image.norm(dim=1), torch.ones(2), atol=1e-5)


def test_weights_are_required_unless_random_init_is_allowed(tiny_hf_clip_dir, tmp_path):
    folder = tmp_path / "no_weights"
    shutil.copytree(tiny_hf_clip_dir, folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(WeightsNotFoundError, match="no weight files"):
        HFClipEncoder(str(folder))
    with pytest.warns(RuntimeWarning, match="RANDOM weights"):
        enc = HFClipEncoder(str(folder), allow_random_init=True, seed=1)
    assert enc.random_init and enc.encode_texts(["x"]).shape == (1, 16)


def test_uncached_hub_name_says_how_to_provide_weights():
    with pytest.raises(WeightsNotFoundError, match="huggingface-cli download"):
        HFClipEncoder("no-such-org/no-such-clip-xyz")


def test_pipeline_with_hf_clip_for_both_modalities(tiny_hf_clip_dir, tmp_path, make_dataset):
    Image.new("RGB", (32, 32), (200, 30, 40)).save(tmp_path / "a.png")
    catalog = pd.DataFrame({"item_id": ["a", "b"], "title": ["Red Shirt", "Blue Socks"], "image": ["a.png", "b.png"]})
    cfg = from_dict(EncodeConfig, {"text": {"kind": "hf_clip"}, "image": {"kind": "hf_clip"}, "progress": False,
                                   "clip": {"model": str(tiny_hf_clip_dir)}})
    encoders = build_encoders(cfg)
    assert encoders["text"] is encoders["image"]
    run = run_encoding(cfg, make_dataset(catalog, root=tmp_path), encoders)
    assert run.results["text"].table.dim == run.results["image"].table.dim == 16
    assert run.results["image"].counts["missing"] == 1
    assert run.results["image"].table.metadata["model"] == f"hf_clip:{tiny_hf_clip_dir.name}"
