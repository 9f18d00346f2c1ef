"""``llmrec encode`` end to end on a small synthetic shop (real data pipeline, real encoders)."""

from pathlib import Path

import pandas as pd
import pytest

from llmrec.pipeline.cli import main as llmrec_main
from llmrec.tables import load_table

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # configs name their data config relative to the repository root


def _shop_args(tmp_path):
    return ["--config", "configs/encode/shop.yaml", "data.synthetic.n_users=40", "data.synthetic.n_items=60",
            f"data.cache_dir={tmp_path / 'data'}", f"cache_dir={tmp_path / 'emb'}", f"output_dir={tmp_path / 'out'}",
            "progress=false"]


def test_encode_shop_twice_then_show_neighbors(tmp_path, capsys, in_repo):
    assert llmrec_main(["encode", *_shop_args(tmp_path)]) == 0
    first = capsys.readouterr().out
    assert "dataset shop: 60 items" in first and first.count(" miss ") == 2
    assert "60/60" in first and "corrupt=0" in first
    text, image = load_table(tmp_path / "out" / "text.safetensors"), load_table(tmp_path / "out" / "image.safetensors")
    assert text.item.shape == (60, 384) and image.n_items == 60 and image.item_mask.all()
    assert text.metadata["item_ids"][0] == "i0000" and text.metadata["dataset"] == "shop"
    items = pd.read_csv(next((tmp_path / "data").glob("synthetic-shop-*/items.csv")))  # a real title to look up
    assert llmrec_main(["encode", *_shop_args(tmp_path), "--show-neighbors", items["title"][0], "--k", "3"]) == 0
    second = capsys.readouterr().out
    assert second.count(" hit ") == 2 and " miss " not in second
    block = second[second.index("nearest neighbours"):]
    assert "text (sentence_transformer" in block and "image (handcrafted)" in block
    assert len([line for line in block.splitlines() if line.strip()[:2] in ("1.", "2.", "3.")]) == 6


def test_unknown_title_and_bad_override_are_clear_errors(tmp_path, capsys, in_repo):
    assert llmrec_main(["encode", *_shop_args(tmp_path), "image.kind=none", "--show-neighbors", "No Such Thing"]) == 1
    assert "no item titled 'No Such Thing'" in capsys.readouterr().err
    assert llmrec_main(["encode", "--config", "configs/encode/shop.yaml", "text.templat=[x]"]) == 2
    assert "unknown config key 'text.templat'" in capsys.readouterr().err


def test_clip_config_without_weights_fails_before_preparing_data(tmp_path, capsys, in_repo):
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        pytest.skip("needs HF_HUB_OFFLINE=1 (set by the Makefile): otherwise the openai tag would be downloaded")
    args = ["encode", "--config", "configs/encode/ml100k_clip.yaml", f"data.cache_dir={tmp_path}"]
    assert llmrec_main(args) == 1
    err = capsys.readouterr().err
    assert "Provide CLIP weights" in err and "clip.pretrained=" in err
    assert not any(tmp_path.iterdir())  # nothing was prepared
