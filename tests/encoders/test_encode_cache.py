"""encode_items / run_encoding: table contract, masked rows, counts, cache hits and invalidation."""

import logging

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from llmrec.config import from_dict
from llmrec.devices import KERNEL_VARIABLES
from llmrec.encoders import EncodeConfig, build_encoders, encode_items, run_encoding
from llmrec.tables import load_table


def _config(**sections):
    base = {"text": {"kind": "none"}, "image": {"kind": "handcrafted"}, "progress": False, "batch_size": 2}
    base.update(sections)
    return from_dict(EncodeConfig, base)


@pytest.fixture
def shop(tmp_path, make_dataset):
    """Five items: two good images, a corrupt PNG, a missing file, no image, and a URL (network off)."""
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    Image.new("RGB", (32, 32), (200, 30, 40)).save(img_dir / "a.png")
    Image.new("RGB", (32, 32), (30, 80, 200)).save(img_dir / "b.png")
    (img_dir / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    catalog = pd.DataFrame({
        "item_id": ["a", "b", "c", "d", "e", "f"],
        "title": ["Red Shirt", "Blue Shirt", "Broken", "Gone", "Imageless", "Remote"],
        "brand": ["Acme", "Acme", None, None, "Brio", None],
        "image": ["images/a.png", str(img_dir / "b.png"), "images/c.png", "images/d.png", np.nan,
                  "https://example.invalid/f.png"],
    })
    return make_dataset(catalog, root=tmp_path)


def test_image_table_masks_and_counts_bad_images(shop):
    run = run_encoding(_config(), shop)
    result = run.results["image"]
    table = result.table
    assert not result.cache_hit and result.path.is_file()
    assert table.item.shape == (6, table.dim) and table.item.dtype == torch.float32
    assert table.item_mask.tolist() == [True, True, False, False, False, False]
    assert torch.count_nonzero(table.item[2:]) == 0
    assert torch.allclose(table.item[:2].norm(dim=1), torch.ones(2))
    counts = result.counts
    assert counts == {"items": 6, "encoded": 2, "no_image": 1, "missing": 1, "corrupt": 1, "url_skipped": 1,
                      "download_failed": 0}
    meta = load_table(result.path).metadata
    assert meta["item_ids"] == ["a", "b", "c", "d", "e", "f"] and meta["dataset"] == "toy"
    assert meta["model"] == "handcrafted" and meta["counts"] == counts and meta["dim"] == table.dim
    assert meta["dataset_fingerprint"] == "test-toy" and meta["behaviors"] == ["view", "purchase"]


def test_second_run_loads_the_cache_without_running_the_encoder(shop, caplog):
    cfg = _config()
    first = run_encoding(cfg, shop).results["image"]
    encoders = build_encoders(cfg)
    with caplog.at_level(logging.INFO, logger="llmrec.encoders.pipeline"):
        second = run_encoding(cfg, shop, encoders).results["image"]
    assert second.cache_hit and second.path == first.path
    assert encoders["image"].batches_encoded == 0
    assert "cache hit" in caplog.text
    assert torch.equal(second.table.item, first.table.item)
    assert torch.equal(second.table.item_mask, first.table.item_mask)


def test_a_changed_image_or_setting_makes_a_new_table(shop, tmp_path):
    first = run_encoding(_config(), shop).results["image"]
    Image.new("RGB", (32, 32), (40, 150, 60)).save(tmp_path / "images" / "a.png")
    changed = run_encoding(_config(), shop).results["image"]
    assert not changed.cache_hit and changed.path != first.path
    assert not torch.equal(changed.table.item[0], first.table.item[0])
    other_bins = run_encoding(_config(image={"kind": "handcrafted", "handcrafted": {"color_bins": 3}}), shop)
    assert not other_bins.results["image"].cache_hit and other_bins.results["image"].table.dim == 27 + 12


def test_text_template_change_invalidates_the_cache(shop):
    cfg = _config(text={"template": ["{title}"]}, image={"kind": "none"})
    first = run_encoding(cfg, shop).results["text"]
    encoders = build_encoders(cfg)
    again = run_encoding(cfg, shop, encoders).results["text"]
    assert again.cache_hit and encoders["text"].batches_encoded == 0 and encoders["text"]._model is None
    richer = _config(text={"template": ["{title}", "Brand: {brand}"]}, image={"kind": "none"})
    changed = run_encoding(richer, shop).results["text"]
    assert not changed.cache_hit and changed.path != first.path and first.path.is_file()
    assert changed.table.metadata["text_template"]["segments"] == ["{title}", "Brand: {brand}"]
    # Items with a brand got a different text, so a different embedding; the others did not.
    same = [torch.allclose(a, b, atol=1e-5) for a, b in zip(first.table.item, changed.table.item, strict=True)]
    assert same == [False, False, True, True, False, True]


def test_encode_items_returns_both_modalities_and_writes_output_dir(shop, tmp_path):
    out = tmp_path / "tables"
    tables = encode_items(_config(text={"template": ["{title}"]}, output_dir=str(out)), shop)
    assert set(tables) == {"text", "image"}
    assert tables["text"].dim == 384 and tables["text"].item_mask.all()
    assert torch.equal(load_table(out / "image.safetensors").item, tables["image"].item)
    assert (out / "text.json").is_file()


def test_items_without_text_are_masked(shop):
    shop.catalog.loc[2, "title"] = None
    table = encode_items(_config(text={"template": ["{title}"]}, image={"kind": "none"}), shop)["text"]
    assert table.item_mask.tolist() == [True, True, False, True, True, True]
    assert torch.count_nonzero(table.item[2]) == 0
    assert table.metadata["counts"]["empty_text"] == 1


def test_missing_image_column_leaves_the_modality_absent(shop):
    shop.catalog = shop.catalog.drop(columns=["image"])
    run = run_encoding(_config(), shop)
    assert run.results == {} and "no 'image' column" in run.absent["image"]


def test_catalog_must_be_in_internal_order(shop):
    shop.catalog = shop.catalog.iloc[::-1].reset_index(drop=True)
    with pytest.raises(ValueError, match="catalog row 0 has item_id 'f'"):
        run_encoding(_config(), shop)


def test_a_cache_folder_is_required(shop):
    shop.root = None
    with pytest.raises(ValueError, match="set cache_dir"):
        run_encoding(_config(), shop)


def test_a_table_encoded_under_other_cpu_kernels_is_not_reused(shop, monkeypatch):
    for name in KERNEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    cfg = _config()
    native = run_encoding(cfg, shop).results["image"]
    assert native.table.metadata["kernels"] == {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
                                                "kernel_variables": {}}
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")  # the key follows the variables (the kernels are MKL's)
    limited = run_encoding(cfg, shop).results["image"]
    assert not limited.cache_hit and limited.path != native.path and native.path.is_file()
    assert limited.table.metadata["kernels"]["kernel_variables"] == {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    monkeypatch.delenv("MKL_ENABLE_INSTRUCTIONS")
    assert run_encoding(cfg, shop).results["image"].cache_hit  # back to the native table
