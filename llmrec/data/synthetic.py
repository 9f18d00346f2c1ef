"""The synthetic shop: a deterministic multi-behavior dataset with planted structure.

The offline default dataset and a testbed in which the value of each modality is
known, built along the principles of TMF's synthetic case study (Sec. 5.5:
modal-specific preference, consistent user profile, shopping-intent awareness).

* **Items** have a category, brand, color, material, size and visual pattern. The
  *image* (a procedurally drawn PNG) shows category (silhouette), size (scale),
  color and pattern. The *title* names brand, model, category and size; the
  *text* (description) names category, size, brand and material. Color and
  pattern are therefore **visible only in the image** and material **only in the
  text**, unless ``visual_attributes_in_text`` puts color and pattern into title
  and text as a control.
* **Users** are ``visual`` (prefer one color and one pattern), ``textual`` (prefer
  one brand and one material) or ``popularity`` (no attribute preference).
* **Sequences** are shopping sessions. Each session ends in one purchase; the
  purchase category is the complement of the previous purchase's category with
  probability ``complement_probability`` (else uniform), the item is drawn from
  that category by popularity x exp(strength x number of preferred attributes
  matched). Before the purchase the user views other items of the category (and
  a few random ones), sometimes carts an item she then abandons and, with
  probability ``purchase_cascade_probability``, views/carts the purchased item
  itself (the cascade). Without the cascade the purchase is a "buy now": the
  item shows up in the log for the first time at its purchase unless it was
  browsed in an earlier session, so the leave-one-out target is usually *not*
  in the user's history and a copy rule cannot solve the task;
  ``purchase_cascade_probability=1`` reproduces the legacy shop (before this
  setting existed) byte for byte.

Everything is drawn from numpy generators seeded by ``(seed, stream)``: the
catalog stream does not depend on the user settings, so changing ``n_users``
keeps the catalog and images. See ``docs/synthetic_shop.md``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from llmrec.config import ConfigError, to_dict

logger = logging.getLogger(__name__)

BEHAVIORS = ("view", "cart", "purchase")  # weakest first; the target behavior is "purchase"
# Ordered so that each category's complement is the next one (cyclically).
CATEGORIES = ("t-shirt", "shorts", "sneakers", "socks", "backpack", "water bottle", "cap", "jacket")
BRANDS = ("Acme", "Northwind", "Zephyr", "Lumen", "Orbit", "Kestrel", "Tundra", "Vela", "Solace", "Brio")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 40), "orange": (245, 120, 10), "yellow": (240, 210, 40), "green": (40, 150, 60),
    "blue": (30, 80, 200), "purple": (120, 50, 160), "pink": (240, 120, 180), "black": (25, 25, 25),
    "gray": (128, 128, 128), "brown": (120, 70, 30),
}
MATERIALS = ("cotton", "polyester", "wool", "nylon", "linen", "leather", "denim", "canvas")
PATTERNS = ("solid", "striped", "dotted", "checked")
SIZES = ("XS", "S", "M", "L", "XL")
MODEL_NAME_PARTS = (
    ("Al", "Bri", "Cor", "Dav", "El", "Fen", "Gal", "Har", "Ion", "Jun", "Kor", "Lio", "Mar", "Nor", "Oru", "Pim"),
    ("a", "en", "ix", "o", "um", "ra", "is", "et"),
)
BACKGROUND = (245, 245, 245)
# Silhouettes in unit coordinates (x right, y down): ("polygon", points) | ("ellipse"|"rectangle", box)
# | ("pieslice", box, start_deg, end_deg).
SILHOUETTES: dict[str, list[tuple[Any, ...]]] = {
    "t-shirt": [("polygon", [(.30, .14), (.42, .14), (.50, .22), (.58, .14), (.70, .14), (.92, .34), (.80, .46),
                             (.72, .38), (.72, .88), (.28, .88), (.28, .38), (.20, .46), (.08, .34)])],
    "shorts": [("polygon", [(.20, .22), (.80, .22), (.86, .78), (.56, .78), (.50, .46), (.44, .78), (.14, .78)])],
    "sneakers": [("polygon", [(.08, .42), (.38, .42), (.50, .54), (.84, .58), (.94, .70), (.94, .80), (.08, .80)])],
    "socks": [("polygon", [(.34, .08), (.60, .08), (.60, .60), (.82, .70), (.84, .88), (.40, .90), (.34, .80)])],
    "backpack": [("ellipse", (.24, .12, .76, .42)), ("polygon", [(.24, .26), (.76, .26), (.80, .90), (.20, .90)])],
    "water bottle": [("rectangle", (.42, .06, .58, .18)),
                     ("polygon", [(.42, .16), (.58, .16), (.66, .26), (.68, .92), (.32, .92), (.34, .26)])],
    "cap": [("pieslice", (.16, .24, .80, .80), 180, 360),
            ("polygon", [(.48, .50), (.95, .50), (.95, .60), (.48, .60)])],
    "jacket": [("polygon", [(.30, .10), (.42, .10), (.50, .20), (.58, .10), (.70, .10), (.90, .30), (.94, .86),
                            (.82, .86), (.76, .42), (.74, .92), (.26, .92), (.24, .42), (.18, .86), (.06, .86),
                            (.10, .30)])],
}
TITLE_ORDERS = ("brand_first", "category_first")  # SyntheticConfig.title_order
ATTRIBUTE_MODALITIES = {  # where each attribute can be read (with visual_attributes_in_text=False)
    "category": ["title", "text", "image"], "size": ["title", "text", "image"], "brand": ["title", "text"],
    "material": ["text"], "color": ["image"], "pattern": ["image"],
}


@dataclass
class SyntheticConfig:
    """Sizes and knobs of the synthetic shop; every default keeps the CPU quickstart in minutes."""

    seed: int = 0
    n_users: int = 300
    n_items: int = 200
    n_categories: int = 8  # first n of CATEGORIES; complements cycle through them
    n_brands: int = 8
    n_colors: int = 8
    n_materials: int = 6
    n_patterns: int = 4
    image_size: int = 64  # square PNG side in pixels
    visual_user_fraction: float = 0.4  # users choosing by color + pattern (image only)
    textual_user_fraction: float = 0.4  # users choosing by brand + material (title / text)
    preference_strength: float = 2.5  # purchase weight multiplier exp(strength * matched attributes)
    browse_preference_strength: float = 1.0  # the same for the items viewed while browsing
    complement_probability: float = 0.7  # next purchase category = complement of the previous one
    popularity_exponent: float = 0.8  # item popularity ~ rank^-exponent (random ranks)
    min_purchases: int = 3
    max_purchases: int = 8
    min_views_per_purchase: int = 2  # other items of the category viewed in a session
    max_views_per_purchase: int = 6
    noise_views_per_purchase: float = 1.0  # Poisson mean of views of random items (any category)
    purchase_cascade_probability: float = 0.1  # the purchased item has its view/cart cascade in its session
    # (else bought without a view or cart of it in that session); 1.0 = the legacy shop, byte for byte
    purchase_view_probability: float = 0.8  # with the cascade: the purchased item is viewed in its session
    purchase_cart_probability: float = 0.5  # with the cascade: the purchased item is carted in its session
    abandoned_cart_probability: float = 0.15  # another viewed item of the category is carted
    visual_attributes_in_text: bool = False  # control: also name color and pattern in title and text
    title_order: str = "brand_first"  # "Acme Coro shorts (M)"; "category_first": "shorts: Acme Coro (M)"
    start_timestamp: int = 1_700_000_000

    def validate(self) -> None:
        limits = {"n_categories": len(CATEGORIES), "n_brands": len(BRANDS), "n_colors": len(COLORS),
                  "n_materials": len(MATERIALS), "n_patterns": len(PATTERNS)}
        for key, most in limits.items():
            if not 1 <= getattr(self, key) <= most:
                raise ConfigError(f"{key}: expected 1..{most} (the built-in vocabulary), got {getattr(self, key)}")
        if self.n_categories < 2:
            raise ConfigError(f"n_categories: expected at least 2 (complements need two), got {self.n_categories}")
        if self.n_users < 1:
            raise ConfigError(f"n_users: expected at least 1, got {self.n_users}")
        if self.n_items < self.n_categories:
            raise ConfigError(f"n_items: expected at least n_categories={self.n_categories}, got {self.n_items}")
        if not 16 <= self.image_size <= 512:
            raise ConfigError(f"image_size: expected 16..512 pixels, got {self.image_size}")
        if self.min_purchases < 3:
            raise ConfigError(f"min_purchases: expected >= 3 (leave-one-out needs train, valid and test targets), "
                              f"got {self.min_purchases}")
        if not self.min_purchases <= self.max_purchases <= self.n_items:
            raise ConfigError(f"max_purchases: expected min_purchases={self.min_purchases} <= max_purchases <= "
                              f"n_items={self.n_items}, got {self.max_purchases}")
        if not 0 <= self.min_views_per_purchase <= self.max_views_per_purchase:
            raise ConfigError(f"views per purchase: expected 0 <= min ({self.min_views_per_purchase}) <= "
                              f"max ({self.max_views_per_purchase})")
        for key in ("visual_user_fraction", "textual_user_fraction", "complement_probability",
                    "purchase_cascade_probability", "purchase_view_probability", "purchase_cart_probability",
                    "abandoned_cart_probability"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"{key}: expected a probability in [0, 1], got {getattr(self, key)}")
        if self.title_order not in TITLE_ORDERS:
            raise ConfigError(f"title_order: expected one of {list(TITLE_ORDERS)}, got {self.title_order!r}")
        if self.visual_user_fraction + self.textual_user_fraction > 1.0:
            raise ConfigError(f"visual_user_fraction + textual_user_fraction must be <= 1, got "
                              f"{self.visual_user_fraction} + {self.textual_user_fraction}")
        for key in ("preference_strength", "browse_preference_strength", "popularity_exponent",
                    "noise_views_per_purchase"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: expected >= 0, got {getattr(self, key)}")


def _vocabulary(cfg: SyntheticConfig) -> dict[str, list[str]]:
    return {"category": list(CATEGORIES[:cfg.n_categories]), "brand": list(BRANDS[:cfg.n_brands]),
            "color": list(COLORS)[:cfg.n_colors], "material": list(MATERIALS[:cfg.n_materials]),
            "pattern": list(PATTERNS[:cfg.n_patterns]), "size": list(SIZES)}


def complement_map(cfg: SyntheticConfig) -> dict[str, str]:
    """Category -> its complement: the next used category in ``CATEGORIES`` order, cyclically."""
    used = CATEGORIES[:cfg.n_categories]
    return {cat: used[(i + 1) % len(used)] for i, cat in enumerate(used)}


def _pattern_shade(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """The pattern's second color: the item color darkened (light colors) or lightened (dark ones)."""
    luminance = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) / 255
    toward, mix = ((0, 0, 0), 0.35) if luminance > 0.3 else ((255, 255, 255), 0.35)
    return tuple(int(round(c * (1 - mix) + t * mix)) for c, t in zip(rgb, toward, strict=True))


def draw_item_image(category: str, color: str, pattern: str, size: str, image_size: int = 64) -> Image.Image:
    """Draw the product: the category's silhouette, scaled by size, filled with color and pattern."""
    rgb, shade = COLORS[color], _pattern_shade(COLORS[color])
    fill = Image.new("RGB", (image_size, image_size), rgb)
    draw = ImageDraw.Draw(fill)
    period = max(4, image_size // 8)
    if pattern == "striped":
        for y in range(0, image_size, period):
            draw.rectangle((0, y, image_size - 1, y + max(1, period // 3) - 1), fill=shade)
    elif pattern == "dotted":
        radius = max(1, period // 4)
        for y in range(period // 2, image_size, period):
            for x in range(period // 2 + (y // period % 2) * (period // 2), image_size, period):
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=shade)
    elif pattern == "checked":  # gingham: a grid of bands in both directions
        band = max(1, period // 4)
        for start in range(0, image_size, period):
            draw.rectangle((0, start, image_size - 1, start + band - 1), fill=shade)
            draw.rectangle((start, 0, start + band - 1, image_size - 1), fill=shade)
    elif pattern != "solid":
        raise ValueError(f"unknown pattern {pattern!r}; expected one of {PATTERNS}")
    scale = 0.70 + 0.075 * SIZES.index(size)
    mask = Image.new("L", (image_size, image_size), 0)
    shape = ImageDraw.Draw(mask)

    def to_px(x: float, y: float) -> tuple[float, float]:
        return ((0.5 + (x - 0.5) * scale) * (image_size - 1), (0.5 + (y - 0.5) * scale) * (image_size - 1))

    for kind, geometry, *angles in SILHOUETTES[category]:
        if kind == "polygon":
            shape.polygon([to_px(x, y) for x, y in geometry], fill=255)
        else:
            box = [*to_px(*geometry[:2]), *to_px(*geometry[2:])]
            if kind == "pieslice":
                shape.pieslice(box, angles[0], angles[1], fill=255)
            else:
                getattr(shape, kind)(box, fill=255)
    return Image.composite(fill, Image.new("RGB", (image_size, image_size), BACKGROUND), mask)


def _title(order: str, attrs: dict[str, str], model: str, visual: str) -> str:
    """The item's title: brand, model, category and size, in ``order`` (``SyntheticConfig.title_order``).

    ``brand_first`` ("Acme Coro shorts (M)") reads like a product listing; ``category_first`` ("shorts: Acme
    Coro (M)") puts the attribute the session rule needs first, so an LLM answering with the title names the
    category in its first token (docs/synthetic_shop.md "Title order"). Same draws, same items either way.
    """
    if order == "category_first":
        return f"{visual}{attrs['category']}: {attrs['brand']} {model} ({attrs['size']})"
    return f"{attrs['brand']} {model} {visual}{attrs['category']} ({attrs['size']})"


def _build_catalog(cfg: SyntheticConfig, image_dir: Path) -> pd.DataFrame:
    """Items with attributes, unique titles, descriptions and drawn images (catalog stream)."""
    rng = np.random.default_rng([cfg.seed, 1])
    vocab = _vocabulary(cfg)
    width = max(4, len(str(cfg.n_items - 1)))
    image_dir.mkdir(parents=True, exist_ok=True)
    titles: set[str] = set()
    rows = []
    for index in tqdm(range(cfg.n_items), desc="synthetic shop: drawing items", unit="item"):
        attrs = {"category": vocab["category"][index % cfg.n_categories]}  # round robin keeps categories balanced
        for key in ("brand", "color", "material", "size", "pattern"):
            attrs[key] = vocab[key][int(rng.integers(len(vocab[key])))]
        visual = f"{attrs['color']} {attrs['pattern']} " if cfg.visual_attributes_in_text else ""
        for attempt in range(1000):
            model = "".join(parts[int(rng.integers(len(parts)))] for parts in MODEL_NAME_PARTS)
            if attempt >= 100:
                model = f"{model} {attempt}"
            title = _title(cfg.title_order, attrs, model, visual)
            if title not in titles:
                break
        titles.add(title)
        text = (f"A size {attrs['size']} {visual}{attrs['category']} by {attrs['brand']}, "
                f"made of {attrs['material']}.")
        item_id = f"i{index:0{width}d}"
        draw_item_image(attrs["category"], attrs["color"], attrs["pattern"], attrs["size"],
                        cfg.image_size).save(image_dir / f"{item_id}.png", format="PNG")
        # relative to items.csv's folder, so the file's bytes (and the data fingerprint) do not depend on where
        # the cache lives; readers resolve it (``with_absolute_images``, loaders' ``image_root``)
        rows.append({"item_id": item_id, "title": title, "text": text, "image": f"{image_dir.name}/{item_id}.png",
                     **attrs})
    columns = ["item_id", "title", "text", "image", "category", "brand", "color", "material", "size", "pattern"]
    return pd.DataFrame(rows, columns=columns)


def _assign_users(cfg: SyntheticConfig, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Exactly round(fraction * n_users) users of each preference type, in shuffled order."""
    vocab = _vocabulary(cfg)
    n_visual = int(round(cfg.visual_user_fraction * cfg.n_users))
    n_textual = min(int(round(cfg.textual_user_fraction * cfg.n_users)), cfg.n_users - n_visual)
    kinds = ["visual"] * n_visual + ["textual"] * n_textual + ["popularity"] * (cfg.n_users - n_visual - n_textual)
    kinds = [kinds[i] for i in rng.permutation(cfg.n_users)]
    users = []
    for kind in kinds:
        keys = {"visual": ("color", "pattern"), "textual": ("brand", "material"), "popularity": ()}[kind]
        users.append({"type": kind, "preferred": {k: vocab[k][int(rng.integers(len(vocab[k])))] for k in keys}})
    return users


def _session_events(cfg: SyntheticConfig, rng: np.random.Generator, target: int, others: np.ndarray,
                    browse_weight: np.ndarray, popularity: np.ndarray) -> list[tuple[int, str, bool]]:
    """The views and carts of one session before its purchase of ``target``.

    Other items of the category are browsed (weighted by ``browse_weight``), the
    target is viewed and carted with the configured probabilities (the cascade),
    random popular items are viewed in between (never carted), and other browsed
    items are carted and abandoned now and then. Each event is ``(item, behavior,
    cascade)``: ``cascade`` marks the target's own view and cart, which the caller
    leaves out of the log when the session has no cascade.
    """
    n_views = min(int(rng.integers(cfg.min_views_per_purchase, cfg.max_views_per_purchase + 1)), others.size)
    browsed = [(int(i), True) for i in rng.choice(others, size=n_views, replace=False,
                                                  p=browse_weight[others] / browse_weight[others].sum())]
    if rng.random() < cfg.purchase_view_probability:
        browsed.insert(int(rng.integers(len(browsed) + 1)), (target, True))
    for _ in range(int(rng.poisson(cfg.noise_views_per_purchase))):
        noise = int(rng.choice(len(popularity), p=popularity / popularity.sum()))
        browsed.insert(int(rng.integers(len(browsed) + 1)), (noise, False))
    cart_target = rng.random() < cfg.purchase_cart_probability
    events: list[tuple[int, str, bool]] = []
    for item, may_cart in browsed:
        cascade = may_cart and item == target
        events.append((item, "view", cascade))
        if may_cart and (cart_target if item == target else rng.random() < cfg.abandoned_cart_probability):
            events.append((item, "cart", cascade))
    if cart_target and (target, True) not in browsed:
        events.append((target, "cart", True))
    return events


def _simulate_users(cfg: SyntheticConfig, catalog: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Shopping sessions for every user (user stream); returns interactions and ground truth."""
    rng = np.random.default_rng([cfg.seed, 2])
    # The cascade draws come from their own stream, and a session without the cascade still makes every draw
    # of the user stream (its cascade events are drawn, then left out): the same seed gives the same users,
    # purchases and browsing for every purchase_cascade_probability, and 1.0 gives the legacy shop exactly.
    cascade_rng = np.random.default_rng([cfg.seed, 3])
    users = _assign_users(cfg, rng)
    n_items = len(catalog)
    category_of = catalog["category"].to_numpy()
    used_categories = list(CATEGORIES[:cfg.n_categories])
    items_of = {cat: np.flatnonzero(category_of == cat) for cat in used_categories}
    complements = complement_map(cfg)
    popularity = (rng.permutation(n_items) + 1.0) ** -cfg.popularity_exponent
    width = max(4, len(str(cfg.n_users - 1)))
    rows: list[tuple[str, str, str, int]] = []
    item_ids = catalog["item_id"].tolist()
    counts = {"purchases": 0, "preceded_by_same_item": 0, "purchase_transitions": 0, "complement_transitions": 0,
              "with_cascade": 0}
    ground_users = {}
    for index, user in enumerate(tqdm(users, desc="synthetic shop: simulating users", unit="user")):
        user_id = f"u{index:0{width}d}"
        ground_users[user_id] = user
        matches = np.zeros(n_items)
        for key, value in user["preferred"].items():
            matches += catalog[key].to_numpy() == value
        purchase_weight = popularity * np.exp(cfg.preference_strength * matches)
        browse_weight = popularity * np.exp(cfg.browse_preference_strength * matches)
        purchased: set[int] = set()
        seen: set[int] = set()
        clock = cfg.start_timestamp + int(rng.integers(0, 30 * 86_400))
        category = used_categories[int(rng.integers(cfg.n_categories))]
        for k in range(int(rng.integers(cfg.min_purchases, cfg.max_purchases + 1))):
            if k > 0:
                wanted = complements[category] if rng.random() < cfg.complement_probability else \
                    used_categories[int(rng.integers(cfg.n_categories))]
                counts["purchase_transitions"] += 1
                counts["complement_transitions"] += int(wanted == complements[category])
                category = wanted
            pool = np.array([i for i in items_of[category] if i not in purchased], dtype=np.int64)
            if pool.size == 0:  # only in tiny configs: the category is sold out for this user
                pool = np.array([i for i in range(n_items) if i not in purchased], dtype=np.int64)
            target = int(rng.choice(pool, p=purchase_weight[pool] / purchase_weight[pool].sum()))
            category = str(category_of[target])
            others = items_of[category][items_of[category] != target]
            events = _session_events(cfg, rng, target, others, browse_weight, popularity)
            with_cascade = cascade_rng.random() < cfg.purchase_cascade_probability  # always true for 1.0
            events = [(i, b if with_cascade or not cascade else None) for i, b, cascade in events]
            counts["purchases"] += 1
            counts["with_cascade"] += int(with_cascade)
            counts["preceded_by_same_item"] += int(target in seen or any(i == target and b for i, b in events))
            events.append((target, "purchase"))
            clock += int(rng.integers(3_600, 5 * 86_400))  # gap between sessions
            for item, behavior in events:
                clock += int(rng.integers(5, 600))  # gap between clicks within a session
                if behavior is None:  # a cascade event of a session without the cascade: drawn, not logged
                    continue
                rows.append((user_id, item_ids[item], behavior, clock))
                seen.add(item)
            purchased.add(target)
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "behavior", "timestamp"])
    interactions["timestamp"] = interactions["timestamp"].astype("int64")
    return interactions, {"users": ground_users, "counts": counts}


def _shop_statistics(interactions: pd.DataFrame, catalog: pd.DataFrame, counts: dict[str, int],
                     users: dict[str, Any]) -> dict[str, Any]:
    """Counts and planted-structure rates (how strongly each signal shows in the data)."""
    behavior_counts = interactions["behavior"].value_counts()
    purchases = interactions[interactions["behavior"] == "purchase"].merge(catalog, on="item_id")
    match_rates = {}
    for kind in ("visual", "textual"):
        rows = purchases[purchases["user_id"].map(lambda u, kind=kind: users[u]["type"] == kind)]
        for key in {"visual": ("color", "pattern"), "textual": ("brand", "material")}[kind]:
            hits = rows.apply(lambda r, key=key: r[key] == users[r["user_id"]]["preferred"][key], axis=1)
            match_rates[f"{kind}_users_purchase_{key}_match"] = float(hits.mean()) if len(rows) else 0.0
    return {
        "n_users": int(interactions["user_id"].nunique()), "n_items": int(len(catalog)),
        "n_interactions": int(len(interactions)),
        "behaviors": {b: int(behavior_counts.get(b, 0)) for b in BEHAVIORS},
        "items_never_interacted": int((~catalog["item_id"].isin(interactions["item_id"])).sum()),
        "purchases_with_cascade": counts["with_cascade"] / max(1, counts["purchases"]),
        "purchases_preceded_by_view_or_cart_of_same_item":
            counts["preceded_by_same_item"] / max(1, counts["purchases"]),
        "purchase_transitions_to_complement":
            counts["complement_transitions"] / max(1, counts["purchase_transitions"]),
        **match_rates,
    }


def with_absolute_images(catalog: pd.DataFrame, out_dir: Path) -> pd.DataFrame:
    """``catalog`` with its ``image`` paths (stored relative to ``out_dir`` in items.csv) made absolute."""
    root = Path(out_dir).resolve()
    return catalog.assign(image=[str(root / path) for path in catalog["image"]])


def generate_shop(cfg: SyntheticConfig, out_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Generate the shop into ``out_dir``; return ``(interactions, catalog)``.

    Writes ``items.csv`` (image paths relative to ``out_dir``), ``interactions.csv``,
    ``images/<item_id>.png`` and, last, ``ground_truth.json`` (config, user preference types and
    attributes, the complement map, where each attribute is visible, statistics). The returned
    catalog holds absolute image paths.
    """
    cfg.validate()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    logger.info("generating the synthetic shop (seed %d: %d users, %d items) into %s",
                cfg.seed, cfg.n_users, cfg.n_items, out_dir)
    catalog = _build_catalog(cfg, out_dir / "images")
    interactions, truth = _simulate_users(cfg, catalog)
    stats = _shop_statistics(interactions, catalog, truth["counts"], truth["users"])
    catalog.to_csv(out_dir / "items.csv", index=False)
    interactions.to_csv(out_dir / "interactions.csv", index=False)
    catalog = with_absolute_images(catalog, out_dir)
    modalities = {k: list(v) for k, v in ATTRIBUTE_MODALITIES.items()}
    if cfg.visual_attributes_in_text:
        modalities["color"] = modalities["pattern"] = ["title", "text", "image"]
    ground_truth = {"config": to_dict(cfg), "behaviors": list(BEHAVIORS), "target_behavior": "purchase",
                    "complements": complement_map(cfg), "attribute_modalities": modalities,
                    "users": truth["users"], "stats": stats}
    (out_dir / "ground_truth.json").write_text(json.dumps(ground_truth, indent=1), encoding="utf-8")
    logger.info("synthetic shop: %d interactions %s; %.0f%% of purchases preceded by the same item; "
                "%.0f%% of purchase transitions go to the complement", stats["n_interactions"], stats["behaviors"],
                100 * stats["purchases_preceded_by_view_or_cart_of_same_item"],
                100 * stats["purchase_transitions_to_complement"])
    return interactions, catalog


def ensure_shop(cfg: SyntheticConfig, out_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the shop from ``out_dir`` if it was generated with ``cfg``; generate it otherwise."""
    out_dir = Path(out_dir)
    truth_path = out_dir / "ground_truth.json"
    if truth_path.is_file() and (out_dir / "items.csv").is_file() and (out_dir / "interactions.csv").is_file():
        stored = json.loads(truth_path.read_text(encoding="utf-8")).get("config")
        if stored == to_dict(cfg):
            catalog = with_absolute_images(pd.read_csv(out_dir / "items.csv", dtype=str, keep_default_na=False),
                                           out_dir)
            missing = [p for p in catalog["image"] if not Path(p).is_file()]
            if not missing:
                interactions = pd.read_csv(out_dir / "interactions.csv", dtype={"user_id": str, "item_id": str,
                                                                                 "behavior": str, "timestamp": "int64"})
                logger.info("synthetic shop: reusing %s", out_dir)
                return interactions, catalog
            logger.info("synthetic shop in %s lacks %d images (first: %s); regenerating", out_dir, len(missing),
                        missing[0])
        else:
            logger.info("synthetic shop in %s was generated with another config; regenerating", out_dir)
    return generate_shop(cfg, out_dir)
