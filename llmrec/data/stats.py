"""Dataset statistics: counts before and after filtering, what each filter removed.

``stats.json`` (saved with every prepared dataset, printed by ``llmrec data``) holds

* ``raw``: users, items, interactions and interactions per behavior as loaded;
* ``removed``: duplicates, catalog misses, every filter pass and the totals per rule;
* ``filtered``: the same counts after filtering, plus sequence and history lengths;
* ``samples``: rows per split; ``catalog``: items, duplicate titles, missing modalities;
* ``loader``: the source's own counts, e.g. empty titles filled, ``null`` strings read as
  missing (``catalog_null_strings.<column>``) and items whose image is an http(s) URL, which
  preparation never downloads (``catalog_image_urls_not_fetched``, over the catalog as loaded).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

IMAGE_URLS_KEY = "catalog_image_urls_not_fetched"  # loader count: catalog items whose image is an http(s) URL


def interaction_counts(users: np.ndarray, items: np.ndarray, behaviors: np.ndarray,
                       names: Sequence[str]) -> dict[str, Any]:
    """Users, items, interactions and the count per behavior name."""
    per = np.bincount(np.asarray(behaviors, dtype=np.int64), minlength=len(names))
    return {
        "users": int(len(pd.unique(pd.Series(users)))),
        "items": int(len(pd.unique(pd.Series(items)))),
        "interactions": int(len(behaviors)),
        "per_behavior": {name: int(per[i]) for i, name in enumerate(names)},
    }


def length_summary(lengths: np.ndarray) -> dict[str, float]:
    if lengths.size == 0:
        return {"mean": 0.0, "median": 0.0, "min": 0, "max": 0}
    return {
        "mean": round(float(lengths.mean()), 3),
        "median": float(np.median(lengths)),
        "min": int(lengths.min()),
        "max": int(lengths.max()),
    }


def removal_totals(passes: list[dict[str, int]]) -> dict[str, int]:
    keys = ("users_below_k", "users_few_targets", "users_empty_valid_history", "items_below_k", "interactions_removed")
    return {key: int(sum(p[key] for p in passes)) for key in keys}


def format_stats(stats: dict[str, Any]) -> str:
    """A readable plain-text report of ``stats`` (what ``llmrec data`` prints)."""
    raw, fil = stats["raw"], stats["filtered"]
    rows = [("users", raw["users"], fil["users"]), ("items", raw["items"], fil["items"]),
            ("interactions", raw["interactions"], fil["interactions"])]
    rows += [(f"  {b}", raw["per_behavior"][b], fil["per_behavior"][b]) for b in raw["per_behavior"]]
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"dataset {stats['name']} ({stats['source']}), fingerprint {stats['fingerprint'][:16]}",
             f"behaviors {stats['behaviors']} (target: {stats['target_behavior']})", "",
             f"{'':<{width}}{'before':>12}{'after':>12}"]
    lines += [f"{name:<{width}}{before:>12,}{after:>12,}" for name, before, after in rows]
    removed = stats["removed"]
    lines += ["", "removed:"]
    lines += [f"  {key:<34}{value:>10,}" for key, value in removed.items() if key != "filter_passes"]
    for p in removed["filter_passes"]:
        lines.append(
            f"  pass {p['pass_number']}: users <k {p['users_below_k']}, few targets {p['users_few_targets']}, "
            f"empty valid history {p['users_empty_valid_history']}, items <k {p['items_below_k']}, "
            f"interactions {p['interactions_removed']}"
        )
    seq, hist = stats["sequence_length"], stats["history_length"]
    lines += ["", f"sequence length: mean {seq['mean']}, median {seq['median']}, min {seq['min']}, max {seq['max']}"]
    lines += ["samples: " + ", ".join(f"{split} {n:,}" for split, n in stats["samples"].items())]
    lines += ["history length (mean): " + ", ".join(f"{split} {h['mean']}" for split, h in hist.items())]
    cat = stats["catalog"]
    lines += [f"catalog: {cat['items']:,} items, {cat['duplicate_titles']} titles shared by several items, "
              f"{cat['items_without_text']} without text, {cat['items_without_image']} without image"]
    loader = stats.get("loader", {})
    for key, value in loader.items():
        if key != IMAGE_URLS_KEY:
            lines.append(f"loader: {key} = {value}")
    if loader.get(IMAGE_URLS_KEY):
        lines.append(f"images: {loader[IMAGE_URLS_KEY]:,} catalog items (before filtering) have an http(s) image URL; "
                     f"none was fetched (preparation never uses the network; `llmrec encode` skips URLs unless "
                     f"image.allow_network)")
    return "\n".join(lines)
