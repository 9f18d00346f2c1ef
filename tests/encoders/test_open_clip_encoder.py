"""open_clip CLIP towers: a tiny real architecture (local-dir config), random init only when allowed."""

import json
import os

import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from llmrec.config import from_dict, load_config
from llmrec.encoders import EncodeConfig, WeightsNotFoundError, build_encoders, run_encoding
from llmrec.encoders.open_clip_encoder import OpenClipEncoder

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _images():
    return [Image.new("RGB", (40, 30), (200, 30, 40)), Image.new("RGB", (30, 40), (30, 80, 200))]


def test_random_init_needs_explicit_permission(tiny_open_clip_dir):
    with pytest.raises(WeightsNotFoundError, match="Provide CLIP weights"):
        OpenClipEncoder(f"local-dir:{tiny_open_clip_dir}")
    with pytest.raises(WeightsNotFoundError, match="has no weights"):
        OpenClipEncoder("ViT-B-32", pretrained=None)


def test_random_init_warns_and_encodes_both_towers_into_one_space(tiny_open_clip_dir):
    with pytest.warns(RuntimeWarning, match="RANDOM weights"):
        enc = OpenClipEncoder(f"local-dir:{tiny_open_clip_dir}", allow_random_init=True, seed=3)
    assert enc.random_init and enc.weights_fingerprint().startswith("random-init:seed3:") and enc._model is None
    text = enc.encode_texts(["red shirt", "blue dotted socks", "a"])
    image = enc.encode_images(_images())
    assert text.shape == (3, 32) and image.shape == (2, 32)
    assert torch.allclose(text.norm(dim=1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(image[0], image[1])
    with pytest.warns(RuntimeWarning):
        same_seed = OpenClipEncoder(f"local-dir:{tiny_open_clip_dir}", allow_random_init=True, seed=3)
        other_seed = OpenClipEncoder(f"local-dir:{tiny_open_clip_dir}", allow_random_init=True, seed=4)
    assert torch.allclose(same_seed.encode_images(_images()), image, atol=1e-6)
    assert not torch.allclose(other_seed.encode_images(_images()), image, atol=1e-3)


def test_local_dir_with_weights_loads_them(tiny_open_clip_dir, tmp_path):
    with pytest.warns(RuntimeWarning):
        source = OpenClipEncoder(f"local-dir:{tiny_open_clip_dir}", allow_random_init=True, seed=7)
    expected = source.encode_images(_images())
    folder = tmp_path / "with_weights"
    folder.mkdir()
    (folder / "open_clip_config.json").write_bytes((tiny_open_clip_dir / "open_clip_config.json").read_bytes())
    state = {k: v.contiguous() for k, v in source._model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    loaded = OpenClipEncoder(f"local-dir:{folder}")  # no warning, no permission needed
    assert not loaded.random_init and len(loaded.weights_fingerprint()) == 64
    assert torch.allclose(loaded.encode_images(_images()), expected, atol=1e-5)


def test_builtin_architecture_with_a_checkpoint_file(tiny_open_clip_dir, tmp_path):
    import open_clip

    from llmrec.encoders.weights import file_sha256

    arch = tmp_path / "llmrec-test-tiny.json"  # registered like open_clip's own model_configs/*.json
    arch.write_text(json.dumps(json.loads((tiny_open_clip_dir / "open_clip_config.json").read_text())["model_cfg"]))
    open_clip.add_model_config(arch)
    with pytest.warns(RuntimeWarning):
        source = OpenClipEncoder("llmrec-test-tiny", allow_random_init=True, seed=5)
    expected = source.encode_texts(["red shirt", "blue socks"])
    checkpoint = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in source._model.state_dict().items()}, str(checkpoint))
    enc = OpenClipEncoder("llmrec-test-tiny", pretrained=str(checkpoint))
    assert not enc.random_init and enc.weights_fingerprint() == file_sha256(checkpoint)
    assert enc.name == "open_clip:llmrec-test-tiny/tiny.safetensors"
    assert torch.allclose(enc.encode_texts(["red shirt", "blue socks"]), expected, atol=1e-5)


def test_unknown_tag_and_architecture_are_clear_errors():
    with pytest.raises(WeightsNotFoundError, match="neither a file nor a known tag.*laion2b_s34b_b79k"):
        OpenClipEncoder("ViT-B-32", pretrained="no-such-tag")
    with pytest.raises(ValueError, match="not an open_clip architecture"):
        OpenClipEncoder("ViT-Nope-99")


def test_ml100k_clip_config_fails_clearly_without_weights():
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        pytest.skip("needs HF_HUB_OFFLINE=1 (set by the Makefile): otherwise the openai tag would be downloaded")
    cfg = load_config(EncodeConfig, os.path.join(REPO, "configs/encode/ml100k_clip.yaml"))
    with pytest.raises(WeightsNotFoundError, match="not cached here.*Provide CLIP weights"):
        build_encoders(cfg)


def test_pipeline_shares_one_clip_model_for_text_and_image(tiny_open_clip_dir, tmp_path, make_dataset):
    Image.new("RGB", (32, 32), (200, 30, 40)).save(tmp_path / "a.png")
    catalog = pd.DataFrame({"item_id": ["a", "b"], "title": ["Red Shirt", "Blue Socks"], "image": ["a.png", None]})
    cfg = from_dict(EncodeConfig, {
        "text": {"kind": "open_clip"}, "image": {"kind": "open_clip"}, "progress": False,
        "clip": {"model": f"local-dir:{tiny_open_clip_dir}", "allow_random_init": True},
    })
    with pytest.warns(RuntimeWarning):
        encoders = build_encoders(cfg)
    assert encoders["text"] is encoders["image"]
    run = run_encoding(cfg, make_dataset(catalog, root=tmp_path), encoders)
    text, image = run.results["text"].table, run.results["image"].table
    assert text.dim == image.dim == 32
    assert image.item_mask.tolist() == [True, False] and text.item_mask.all()
    assert text.metadata["random_init"] is True and text.metadata["model"].startswith("open_clip:")
