"""The synthetic shop: determinism, counts, the cascade and the planted structure."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from llmrec.config import ConfigError, from_dict
from llmrec.data.synthetic import COLORS, SyntheticConfig, complement_map, draw_item_image, ensure_shop, generate_shop

SMALL = dict(n_users=40, n_items=32, image_size=32)
LEGACY = dict(purchase_cascade_probability=1.0)  # the shop as generated before the setting existed
# sha256 of interactions.csv of SyntheticConfig(**LEGACY), the same bytes the generator wrote before
# purchase_cascade_probability existed (commit 12f4d5e); items.csv is unchanged by the setting.
LEGACY_INTERACTIONS_SHA256 = "68830dab0ee1144a8d9ace6e152f4a11277353b425503f853ff7b0bdc5f84a09"


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """The default-sized shop (300 users, 200 items), generated once for the module."""
    out = tmp_path_factory.mktemp("shop")
    interactions, catalog = generate_shop(SyntheticConfig(), out)
    truth = json.loads((out / "ground_truth.json").read_text())
    return out, interactions, catalog, truth


@pytest.fixture(scope="module")
def legacy_shop(tmp_path_factory):
    """The legacy default shop (every purchase with its view/cart cascade), generated once for the module."""
    out = tmp_path_factory.mktemp("legacy_shop")
    interactions, catalog = generate_shop(SyntheticConfig(**LEGACY), out)
    truth = json.loads((out / "ground_truth.json").read_text())
    return out, interactions, catalog, truth


def test_two_runs_write_identical_bytes(tmp_path):
    cfg = SyntheticConfig(seed=3, **SMALL)
    first, second = tmp_path / "a", tmp_path / "b"
    generate_shop(cfg, first)
    generate_shop(cfg, second)
    assert (first / "interactions.csv").read_bytes() == (second / "interactions.csv").read_bytes()
    # image paths are stored relative to the shop's folder, so items.csv is the same wherever it is written
    assert (first / "items.csv").read_bytes() == (second / "items.csv").read_bytes()
    stored = pd.read_csv(first / "items.csv", dtype=str)["image"]
    assert stored.tolist() == [f"images/{item}.png" for item in pd.read_csv(first / "items.csv", dtype=str)["item_id"]]
    pngs = sorted(p.name for p in (first / "images").glob("*.png"))
    assert len(pngs) == cfg.n_items
    for name in pngs:
        assert (first / "images" / name).read_bytes() == (second / "images" / name).read_bytes(), name
    # regenerating in place gives the same bytes too
    before = (first / "items.csv").read_bytes()
    generate_shop(cfg, first)
    assert (first / "items.csv").read_bytes() == before


def test_another_seed_gives_another_shop(tmp_path):
    generate_shop(SyntheticConfig(seed=0, **SMALL), tmp_path / "a")
    generate_shop(SyntheticConfig(seed=1, **SMALL), tmp_path / "b")
    assert (tmp_path / "a" / "interactions.csv").read_bytes() != (tmp_path / "b" / "interactions.csv").read_bytes()


def test_catalog_does_not_depend_on_user_settings(tmp_path):
    _, few = generate_shop(SyntheticConfig(n_users=5, n_items=24, image_size=32), tmp_path / "a")
    _, many = generate_shop(SyntheticConfig(n_users=50, n_items=24, image_size=32), tmp_path / "b")
    columns = ["item_id", "title", "text", "color", "pattern", "brand", "material"]
    pd.testing.assert_frame_equal(few[columns], many[columns])


def test_schema_and_counts(shop):
    out, interactions, catalog, _ = shop
    cfg = SyntheticConfig()
    assert list(interactions.columns) == ["user_id", "item_id", "behavior", "timestamp"]
    assert interactions["timestamp"].dtype == np.int64
    assert set(interactions["behavior"]) == {"view", "cart", "purchase"}
    assert list(catalog.columns) == ["item_id", "title", "text", "image", "category", "brand", "color",
                                     "material", "size", "pattern"]
    assert len(catalog) == cfg.n_items and catalog["item_id"].is_unique and catalog["title"].is_unique
    assert interactions["user_id"].nunique() == cfg.n_users
    assert set(interactions["item_id"]) <= set(catalog["item_id"])
    counts = interactions["behavior"].value_counts()
    # most purchases are bought directly (purchase_cascade_probability=0.1): carts are mostly abandoned ones,
    # fewer than purchases; with the legacy cascade view > cart > purchase (test below)
    assert counts["view"] > counts["purchase"] > counts["cart"] > 0
    purchases = interactions[interactions["behavior"] == "purchase"].groupby("user_id").size()
    assert purchases.min() >= cfg.min_purchases and purchases.max() <= cfg.max_purchases
    # no item is bought twice by the same user
    bought = interactions[interactions["behavior"] == "purchase"]
    assert not bought.duplicated(["user_id", "item_id"]).any()
    # the CSV files hold what was returned
    on_disk = pd.read_csv(out / "interactions.csv", dtype={"user_id": str, "item_id": str})
    pd.testing.assert_frame_equal(on_disk, interactions)
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in catalog["image"])


def test_timestamps_strictly_increase_per_user(shop):
    _, interactions, _, _ = shop
    steps = interactions.groupby("user_id")["timestamp"].diff().dropna()
    assert (steps > 0).all()


def _preceded_rate(interactions) -> float:
    """Share of purchases whose item appears earlier in the user's log."""
    preceded = total = 0
    for _, rows in interactions.groupby("user_id"):
        earlier: set[str] = set()
        for item, behavior in zip(rows["item_id"], rows["behavior"], strict=True):
            if behavior == "purchase":
                total += 1
                preceded += item in earlier
            earlier.add(item)
    return preceded / total


def _test_targets_in_history(interactions) -> float:
    """Share of users whose leave-one-out test target (the last purchase) appears earlier in their log."""
    hits = []
    for _, rows in interactions.groupby("user_id"):
        bought = np.flatnonzero(rows["behavior"].to_numpy() == "purchase")
        items = rows["item_id"].to_numpy()
        hits.append(items[bought[-1]] in set(items[:bought[-1]]))
    return float(np.mean(hits))


def test_legacy_cascade_purchases_mostly_follow_view_or_cart_of_same_item(legacy_shop):
    _, interactions, _, truth = legacy_shop
    rate = _preceded_rate(interactions)
    assert rate >= 0.8
    assert rate == pytest.approx(truth["stats"]["purchases_preceded_by_view_or_cart_of_same_item"])
    assert truth["stats"]["purchases_with_cascade"] == 1.0
    counts = interactions["behavior"].value_counts()
    assert counts["view"] > counts["cart"] > counts["purchase"]


def test_legacy_setting_reproduces_the_old_shop_byte_for_byte(legacy_shop):
    out, interactions, _, _ = legacy_shop
    assert hashlib.sha256((out / "interactions.csv").read_bytes()).hexdigest() == LEGACY_INTERACTIONS_SHA256
    # the copy task of issue 11: 278 of the 300 test targets were already in the history
    assert _test_targets_in_history(interactions) == pytest.approx(278 / 300)


def test_default_shop_is_not_a_copy_task(shop, legacy_shop):
    _, interactions, _, truth = shop
    rate = _preceded_rate(interactions)
    assert rate == pytest.approx(truth["stats"]["purchases_preceded_by_view_or_cart_of_same_item"])
    assert rate < 0.3  # legacy: 0.914
    assert 0.05 < truth["stats"]["purchases_with_cascade"] < 0.15  # default probability 0.1
    assert _test_targets_in_history(interactions) < 0.3  # legacy: 0.927; default: 0.237
    # some purchases still follow their cascade: carts of the purchased item exist
    legacy_interactions = legacy_shop[1]
    assert 0 < (interactions["behavior"] == "cart").sum() < (legacy_interactions["behavior"] == "cart").sum()


def test_cascade_setting_only_removes_the_cascade_events(shop, legacy_shop):
    """Same users, purchases and browsing: the default shop is the legacy one minus the dropped cascades."""
    _, interactions, catalog, truth = shop
    _, legacy, legacy_catalog, legacy_truth = legacy_shop
    assert truth["users"] == legacy_truth["users"]
    pd.testing.assert_frame_equal(catalog.drop(columns="image"), legacy_catalog.drop(columns="image"))
    key = ["user_id", "item_id", "behavior"]
    purchases = lambda frame: frame.loc[frame["behavior"] == "purchase", key].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(purchases(interactions), purchases(legacy))
    # every event of the new shop is an event of the legacy one (timestamps included)
    merged = interactions.merge(legacy, on=[*key, "timestamp"], how="left", indicator=True)
    assert (merged["_merge"] == "both").all()
    # what was removed: only views and carts of items the user purchases in that session
    removed = legacy.merge(interactions, on=[*key, "timestamp"], how="left", indicator=True)
    removed = removed[removed["_merge"] == "left_only"]
    assert len(removed) > 0 and set(removed["behavior"]) <= {"view", "cart"}
    bought = set(zip(legacy.loc[legacy["behavior"] == "purchase", "user_id"],
                     legacy.loc[legacy["behavior"] == "purchase", "item_id"], strict=True))
    assert all((u, i) in bought for u, i in zip(removed["user_id"], removed["item_id"], strict=True))


def _purchases_with_attributes(interactions, catalog):
    bought = interactions[interactions["behavior"] == "purchase"]
    return bought.merge(catalog, on="item_id", how="left", validate="many_to_one")


@pytest.mark.parametrize("kind, attribute", [("visual", "color"), ("visual", "pattern"),
                                             ("textual", "brand"), ("textual", "material")])
def test_planted_preferences_show_far_above_chance(shop, kind, attribute):
    _, interactions, catalog, truth = shop
    bought = _purchases_with_attributes(interactions, catalog)
    users = truth["users"]
    of_kind = bought[bought["user_id"].map(lambda u: users[u]["type"] == kind)]
    assert len(of_kind) > 100
    preferred = of_kind["user_id"].map(lambda u: users[u]["preferred"][attribute])
    match_rate = float((of_kind[attribute] == preferred).mean())
    # chance: how often a random catalog item has the preferred value
    chance = float(np.mean([(catalog[attribute] == value).mean() for value in preferred]))
    assert match_rate > 2.5 * chance, (match_rate, chance)
    # users of the other kinds do not share that preference
    others = bought[bought["user_id"].map(lambda u: users[u]["type"] == "popularity")]
    assert others[attribute].value_counts(normalize=True).max() < match_rate


def test_user_types_follow_the_fractions(shop):
    _, _, _, truth = shop
    kinds = pd.Series([u["type"] for u in truth["users"].values()]).value_counts()
    cfg = SyntheticConfig()
    assert kinds["visual"] == round(cfg.visual_user_fraction * cfg.n_users)
    assert kinds["textual"] == round(cfg.textual_user_fraction * cfg.n_users)


def test_purchases_follow_complements(shop):
    _, interactions, catalog, truth = shop
    complements = truth["complements"]
    assert complements == complement_map(SyntheticConfig())
    bought = _purchases_with_attributes(interactions, catalog)
    hits = pairs = 0
    for _, rows in bought.groupby("user_id", sort=False):
        categories = rows["category"].tolist()
        for previous, following in zip(categories, categories[1:], strict=False):
            pairs += 1
            hits += complements[previous] == following
    assert hits / pairs > 3 / len(complements)  # chance is 1 / n_categories


def test_color_and_pattern_are_only_in_the_image(shop):
    _, _, catalog, truth = shop
    for column in ("title", "text"):
        for _, row in catalog.iterrows():
            words = row[column].lower().replace(",", " ").replace(".", " ").split()
            assert row["color"] not in words and row["pattern"] not in words, row[column]
    assert all(row["material"] in row["text"] and row["material"] not in row["title"].lower()
               for _, row in catalog.iterrows())
    assert truth["attribute_modalities"]["color"] == ["image"]


def test_control_puts_visual_attributes_in_text(tmp_path):
    _, catalog = generate_shop(SyntheticConfig(visual_attributes_in_text=True, **SMALL), tmp_path)
    for _, row in catalog.iterrows():
        assert row["color"] in row["title"] and row["pattern"] in row["text"]


def test_category_first_titles_change_only_the_titles(tmp_path):
    """Same draws, same items and interactions; each title starts with its category and keeps every word."""
    interactions, catalog = generate_shop(SyntheticConfig(**SMALL), tmp_path / "brand")
    again, reordered = generate_shop(SyntheticConfig(title_order="category_first", **SMALL), tmp_path / "category")
    pd.testing.assert_frame_equal(again, interactions)
    other = [c for c in catalog.columns if c not in ("title", "image")]
    pd.testing.assert_frame_equal(reordered[other], catalog[other])
    for (_, row), old in zip(reordered.iterrows(), catalog["title"], strict=True):
        assert row["title"].startswith(f"{row['category']}: {row['brand']} "), row["title"]
        assert sorted(row["title"].replace(":", "").split()) == sorted(old.split()), (row["title"], old)
    assert reordered["title"].is_unique


def test_images_show_the_item_color_and_pattern(shop):
    _, _, catalog, _ = shop
    palette = np.array(list(COLORS.values()), dtype=float)
    names = list(COLORS)
    background = np.array(Image.open(catalog["image"][0]).convert("RGB"))[0, 0]
    for _, row in catalog.iterrows():
        pixels = np.array(Image.open(row["image"]).convert("RGB")).reshape(-1, 3)
        product = pixels[(pixels != background).any(axis=1)].astype(float)
        assert len(product) > 0.05 * len(pixels), row["item_id"]
        nearest = names[int(np.argmin(((palette - product.mean(axis=0)) ** 2).sum(axis=1)))]
        assert nearest == row["color"], (row["item_id"], row["color"], product.mean(axis=0))
        colors, counts = np.unique(product, axis=0, return_counts=True)
        assert tuple(colors[np.argmax(counts)]) == COLORS[row["color"]], row["item_id"]  # the item color dominates
        distinct = len(colors)
        assert (distinct == 1) == (row["pattern"] == "solid"), (row["item_id"], row["pattern"], distinct)


def test_images_differ_by_category_and_size():
    shirt = np.array(draw_item_image("t-shirt", "red", "solid", "M", 48))
    socks = np.array(draw_item_image("socks", "red", "solid", "M", 48))
    big = np.array(draw_item_image("t-shirt", "red", "solid", "XL", 48))
    assert (shirt != socks).any()
    filled = lambda img: int((img != img[0, 0]).any(axis=2).sum())  # noqa: E731
    assert filled(big) > filled(shirt)


def test_ensure_shop_reuses_or_regenerates(tmp_path):
    cfg = SyntheticConfig(**SMALL)
    interactions, catalog = ensure_shop(cfg, tmp_path)
    stamp = (tmp_path / "ground_truth.json").stat().st_mtime_ns
    again, again_catalog = ensure_shop(cfg, tmp_path)
    assert (tmp_path / "ground_truth.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    pd.testing.assert_frame_equal(again, interactions)
    pd.testing.assert_frame_equal(again_catalog, catalog.astype(str))
    other, _ = ensure_shop(SyntheticConfig(seed=5, **SMALL), tmp_path)
    assert not other.equals(interactions)


@pytest.mark.parametrize("overrides, key", [
    ({"n_colors": 0}, "n_colors"), ({"n_categories": 99}, "n_categories"),
    ({"min_purchases": 2}, "min_purchases"), ({"max_purchases": 2}, "max_purchases"),
    ({"visual_user_fraction": 0.7, "textual_user_fraction": 0.5}, "visual_user_fraction"),
    ({"purchase_cart_probability": 1.5}, "purchase_cart_probability"), ({"image_size": 4}, "image_size"),
    ({"purchase_cascade_probability": -0.1}, "purchase_cascade_probability"),
    ({"n_items": 3}, "n_items"), ({"preference_strength": -1.0}, "preference_strength"),
    ({"title_order": "size_first"}, "title_order"),
])
def test_nonsense_configs_are_rejected_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        from_dict(SyntheticConfig, overrides)
