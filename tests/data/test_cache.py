"""The prepared-dataset cache: hit, what invalidates it, what it holds."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from llmrec.data import prepare
from llmrec.data.cache import load_prepared
from llmrec.data.candidates import load_candidates

from .conftest import generic_config, random_log, write_log

REPO = Path(__file__).resolve().parents[2]


def test_second_prepare_loads_from_cache(random_log_config, caplog):
    make, _ = random_log_config
    first = prepare(make())
    with caplog.at_level(logging.INFO, logger="llmrec.data"):
        second = prepare(make())
    assert "loaded from cache" in caplog.text
    assert second.root == first.root and second.fingerprint == first.fingerprint
    assert second.samples["train"].to_list() == first.samples["train"].to_list()
    for a, b in zip(first.sequences, second.sequences, strict=True):
        assert np.array_equal(a.items, b.items) and (a.valid_pos, a.test_pos) == (b.valid_pos, b.test_pos)
    assert second.catalog.equals(first.catalog) and second.stats == first.stats


def test_what_changes_the_fingerprint(random_log_config, tmp_path):
    make, log = random_log_config
    base = prepare(make()).fingerprint
    assert prepare(make("max_history=5")).fingerprint != base
    assert prepare(make("k_core_behavior=target", "k_core=1")).fingerprint != base
    # name, cache location and candidate lists do not change the prepared data
    assert prepare(make("name=other", "candidates=[{splits: [test], size: 5}]")).fingerprint == base
    write_log(log, random_log()[:-1])  # one row less: new content, new folder
    assert prepare(make()).fingerprint != base


def test_cache_folder_contents(random_log_config):
    make, _ = random_log_config
    ds = prepare(make())
    names = {p.name for p in ds.root.iterdir()}
    assert {"samples", "sequences.npz", "catalog.parquet", "index.json", "stats.json", "config.yaml"} <= names
    assert not [p for p in ds.root.parent.iterdir() if ".tmp-" in p.name]  # no leftover temporary folder
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(ds.root.stat().st_mode) == 0o777 & ~umask  # not tempfile's 0700
    load_candidates(ds, "test", size=5)
    assert stat.S_IMODE(next((ds.root / "candidates").iterdir()).stat().st_mode) == 0o666 & ~umask
    reloaded = load_prepared(ds.root)
    assert reloaded.item_ids == ds.item_ids and reloaded.stats["fingerprint"] == ds.fingerprint


def test_an_empty_split_round_trips_with_its_columns(tmp_path):
    rows = [("u1", "a", "view", 1), ("u1", "b", "buy", 2), ("u1", "c", "buy", 3),
            ("u2", "d", "view", 1), ("u2", "e", "buy", 2), ("u2", "f", "buy", 3)]
    log = write_log(tmp_path / "log.csv", rows)
    cfg = generic_config(tmp_path, log, "k_core=1", "candidates=[{splits: [train, test], size: 3}]")
    ds = prepare(cfg)
    assert len(ds.samples["train"]) == 0 and len(ds.samples["test"]) == 2
    assert ds.samples["train"].column_names == ds.samples["test"].column_names
    assert load_candidates(prepare(cfg), "train", size=3).items.shape == (0, 3)


# The shop's fingerprint covers its generated items.csv, whose image paths are relative to the shop's folder, so it
# is the same in every checkout (it was not before image paths were made relative: docs/data.md "Cache").
@pytest.mark.parametrize(("config", "overrides", "pinned"), [
    ("configs/data/ml100k.yaml", ["max_history=10"], "9c7d7964604a"),  # the ML-100k tables of docs/results/ml100k
    ("configs/data/shop.yaml", ["max_history=20"], "5e31167af55b"),  # the shop split of the LLM recipes
])
def test_fingerprints_of_the_recorded_experiments_do_not_move(config, overrides, pinned, llmrec_data_dir, monkeypatch,
                                                              tmp_path):
    """A new DataConfig key must leave existing fingerprints alone (cache.ADDED_AT_DEFAULT): a moved fingerprint
    orphans every cached dataset, frozen candidate file and trained run, and the committed results naming it."""
    from llmrec.data import load_data_config
    from llmrec.data.cache import fingerprint
    from llmrec.data.loaders import input_files

    monkeypatch.setenv("LLMREC_DATA_DIR", str(llmrec_data_dir))
    cfg = load_data_config(REPO / config, [*overrides, f"cache_dir={tmp_path}"])  # the shop is generated here
    assert fingerprint(cfg, input_files(cfg))[:12] == pinned
