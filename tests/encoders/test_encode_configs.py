"""Every configs/encode/*.yaml loads, documents its command, and points at a loadable data config."""

from pathlib import Path

import pytest

from llmrec.config import ConfigError, from_dict, load_config
from llmrec.encoders import EncodeConfig
from llmrec.encoders.cli import load_encode_cli_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs" / "encode").glob("*.yaml"))


def test_the_expected_configs_exist():
    assert {p.name for p in CONFIGS} >= {"ml100k_text.yaml", "shop.yaml", "ml100k_clip.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_names_its_command(path):
    cfg = load_config(EncodeConfig, path)
    header = path.read_text().splitlines()[:6]
    assert any(f"llmrec encode --config configs/encode/{path.name}" in line for line in header)
    assert isinstance(cfg.data, str)
    from llmrec.data import load_data_config

    data_cfg = load_data_config(REPO / cfg.data)  # loads without LLMREC_DATA_DIR (expanded only when read)
    assert data_cfg.name


def test_ml100k_text_has_no_image_modality_and_shop_has_both():
    assert load_config(EncodeConfig, REPO / "configs/encode/ml100k_text.yaml").modalities == ["text"]
    shop = load_config(EncodeConfig, REPO / "configs/encode/shop.yaml")
    assert shop.modalities == ["text", "image"] and shop.image.kind == "handcrafted"


@pytest.mark.parametrize("data, message", [
    ({"text": {"kind": "none"}, "image": {"kind": "none"}}, "nothing to encode"),
    ({"text": {"kind": "open_clip"}, "image": {"kind": "hf_clip"}}, "different CLIP implementations"),
    ({"text": {"template": []}}, "text: template"),
    ({"text": {"kind": "open_clip", "model": "x"}}, "reads clip.model"),
    ({"batch_size": 0}, "batch_size"),
    ({"device": "gpu"}, "device"),
    ({"image": {"kind": "handcrafted", "handcrafted": {"color_bins": 1}}}, "image.handcrafted: color_bins"),
    ({"image": {"kind": "clip"}}, "image.kind"),
])
def test_invalid_configs_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(EncodeConfig, data)


def test_cli_sends_data_overrides_to_the_data_config(tmp_path):
    path = tmp_path / "enc.yaml"
    path.write_text("data: configs/data/ml100k.yaml\nimage: {kind: none}\n")
    cfg, data_overrides = load_encode_cli_config(path, ["data.max_history=20", "batch_size=8"])
    assert cfg.batch_size == 8 and data_overrides == ["max_history=20"]
    inline = tmp_path / "inline.yaml"
    inline.write_text("data: {name: x, source: synthetic}\n")
    cfg, data_overrides = load_encode_cli_config(inline, ["data.max_history=20"])
    assert cfg.data == {"name": "x", "source": "synthetic", "max_history": 20} and data_overrides == []
