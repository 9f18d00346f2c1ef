"""``prepare(cfg)``: raw files -> filtered sequences, splits, candidates, cached on disk.

Steps (each logged; see docs/data.md):

1. load the source into canonical interactions + catalog (:mod:`llmrec.data.loaders`);
2. drop exact duplicate events and events on items missing from the catalog (counted);
3. order events chronologically, ties by file row (:mod:`llmrec.data.ordering`);
4. k-core + leave-one-out eligibility filter to a fixed point (:mod:`llmrec.data.filters`);
5. internal indices (ids sorted numerically when all are integers), leave-one-out
   splits and sample tables (:mod:`llmrec.data.splits`);
6. save to ``<cache_dir>/<name>-<fingerprint[:16]>/`` (:mod:`llmrec.data.cache`), then
   sample the candidate sets listed in ``cfg.candidates``.

A second call with the same inputs and config loads the folder instead ("loaded from cache").

Pre-split sources (``samples``, ``llara``) skip steps 2-5: their rows are the splits
(:mod:`llmrec.data.presplit`, :mod:`llmrec.data.llara`); frozen candidate lists they bring
are saved under the configured keys before any set is sampled.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmrec.config import ConfigError, to_dict
from llmrec.data.cache import dataset_root, fingerprint, is_complete, load_prepared, save_prepared
from llmrec.data.candidates import load_candidates
from llmrec.data.config import DataConfig, expand_env
from llmrec.data.errors import DataError
from llmrec.data.filters import eligibility_filter
from llmrec.data.llara import llara_input_files, load_llara
from llmrec.data.loaders import RawData, input_files, load_source
from llmrec.data.ordering import chronological_order, codes_of, sorted_ids
from llmrec.data.presplit import (
    PRESPLIT_SOURCES,
    build_presplit,
    load_samples_source,
    samples_input_files,
    save_given_candidates,
)
from llmrec.data.schema import drop_duplicates, restrict_to_catalog
from llmrec.data.splits import leave_one_out, sample_positions, sample_table
from llmrec.data.stats import interaction_counts, length_summary, removal_totals
from llmrec.data.types import SPLITS, SequenceDataset

log = logging.getLogger(__name__)


def prepare(cfg: DataConfig) -> SequenceDataset:
    """Prepare (or load from cache) the dataset described by ``cfg``."""
    try:
        cfg.validate()
    except ConfigError as err:
        raise ConfigError(f"data config {cfg.name!r}: {err}") from None
    start = time.perf_counter()
    files = _input_files(cfg)
    fp = fingerprint(cfg, files)
    root = dataset_root(Path(expand_env(cfg.cache_dir, "cache_dir")), cfg.name, fp)
    if is_complete(root):
        dataset = load_prepared(root)
        log.info("%s: loaded from cache %s (%.2f s)", cfg.name, root, time.perf_counter() - start)
    else:
        log.info("%s: preparing from %s into %s", cfg.name, [str(f) for f in files], root)
        if cfg.source in PRESPLIT_SOURCES:
            rows = load_llara(cfg) if cfg.source == "llara" else load_samples_source(cfg)
            build_presplit(cfg, rows, fp, root, start)
        else:
            build(cfg, fp, root, start)
        dataset = load_prepared(root)
        log.info("%s: prepared in %.2f s", cfg.name, time.perf_counter() - start)
    if cfg.source in PRESPLIT_SOURCES:
        save_given_candidates(dataset, cfg)
    for spec in cfg.candidates:
        for split in spec.splits:
            load_candidates(dataset, split, sampler=spec.sampler, size=spec.size, seed=spec.seed)
    return dataset


def _input_files(cfg: DataConfig) -> list[Path]:
    """The files whose bytes feed the fingerprint."""
    if cfg.source == "llara":
        return llara_input_files(cfg)
    if cfg.source == "samples":
        return samples_input_files(cfg)
    return input_files(cfg)


def _filtered_catalog(raw: RawData, interactions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """The catalog (built from ids when the source has none) and interactions restricted to it."""
    if raw.catalog is None:
        ids = pd.unique(interactions["item_id"])
        catalog = pd.DataFrame({"item_id": ids, "title": ["item " + i for i in ids], "text": "", "image": None,
                                "category": ""})
        return catalog, interactions, {"interactions_not_in_catalog": 0, "items_not_in_catalog": 0}
    interactions, counts = restrict_to_catalog(interactions, raw.catalog)
    return raw.catalog, interactions, counts


def build(cfg: DataConfig, fp: str, root: Path, start: float) -> None:
    """Run steps 1-6 of the module docstring and save the result under ``root``."""
    raw = load_source(cfg)
    events = raw.interactions
    names = cfg.behaviors
    stats: dict[str, Any] = {
        "name": cfg.name, "source": cfg.source, "fingerprint": fp, "behaviors": names,
        "target_behavior": cfg.target_behavior,
        "raw": interaction_counts(events["user_id"].to_numpy(), events["item_id"].to_numpy(),
                                  events["behavior"].to_numpy(), names),
    }
    events, n_dup = drop_duplicates(events)
    catalog, events, catalog_counts = _filtered_catalog(raw, events)
    if events.empty:
        raise DataError(f"{cfg.name}: no interactions left after dropping duplicates and items not in the catalog")

    user_index, item_index = sorted_ids(events["user_id"]), sorted_ids(events["item_id"])
    user, item = codes_of(events["user_id"], user_index), codes_of(events["item_id"], item_index)
    behavior, stamps = events["behavior"].to_numpy(np.int64), events["timestamp"].to_numpy(np.int64)
    order = chronological_order(user, stamps, events["row"].to_numpy(np.int64))
    user, item, behavior, stamps = user[order], item[order], behavior[order], stamps[order]

    keep, passes = eligibility_filter(user, item, behavior, cfg.target_index, cfg.k_core,
                                      cfg.k_core_behavior == "target", cfg.min_target_interactions)
    user, item, behavior, stamps = user[keep], item[keep], behavior[keep], stamps[keep]
    if user.size == 0:
        raise DataError(
            f"{cfg.name}: no user is left after filtering (k_core={cfg.k_core} on {cfg.k_core_behavior} behaviors, "
            f"min_target_interactions={cfg.min_target_interactions}); filter passes: {[p.as_dict() for p in passes]}"
        )
    kept_users, user = np.unique(user, return_inverse=True)  # codes follow id order, so order is kept
    kept_items, item = np.unique(item, return_inverse=True)
    user_ids, item_ids = [str(u) for u in user_index[kept_users]], [str(i) for i in item_index[kept_items]]

    seqs = leave_one_out(user, item, behavior, stamps, len(user_ids), cfg.target_index)
    positions = sample_positions(seqs, cfg.target_index)
    samples = {split: sample_table(seqs, positions[split], cfg.max_history) for split in SPLITS}
    item_catalog = catalog.set_index("item_id").loc[item_ids].reset_index()

    pass_dicts = [p.as_dict() for p in passes]
    stats["removed"] = {
        "duplicate_interactions": n_dup,
        **catalog_counts,
        **removal_totals(pass_dicts),
        "catalog_items_without_interactions": int((pd.Index(pd.unique(events["item_id"]))
                                                   .get_indexer(catalog["item_id"]) < 0).sum()),
        "filter_passes": pass_dicts,
    }
    stats["loader"] = raw.counts
    stats["filtered"] = interaction_counts(user, item, behavior, names)
    stats["sequence_length"] = length_summary(np.diff(seqs.offsets))
    stats["samples"] = {split: samples[split].num_rows for split in SPLITS}
    stats["history_length"] = {
        split: length_summary(np.diff(samples[split].column("history_items").combine_chunks().offsets.to_numpy()))
        for split in SPLITS
    }
    stats["catalog"] = _catalog_stats(item_catalog)
    stats["config"] = to_dict(cfg)
    stats["prepare_seconds"] = round(time.perf_counter() - start, 3)
    index = {"user_ids": user_ids, "item_ids": item_ids, "behaviors": names, "target_behavior": cfg.target_behavior}
    save_prepared(root, cfg, index, seqs, samples, item_catalog, stats)


def _catalog_stats(catalog: pd.DataFrame) -> dict[str, int]:
    duplicated = catalog["title"].duplicated(keep=False)
    if duplicated.any():
        log.warning("%d items share their title with another item (e.g. %r); generative answers naming them "
                    "are ambiguous", int(duplicated.sum()), catalog.loc[duplicated, "title"].iloc[0])
    return {
        "items": int(len(catalog)),
        "duplicate_titles": int(catalog.loc[duplicated, "title"].nunique()),
        "items_sharing_a_title": int(duplicated.sum()),
        "items_without_text": int((catalog["text"].fillna("").str.strip() == "").sum()),
        "items_without_image": int(catalog["image"].isna().sum()),
    }

