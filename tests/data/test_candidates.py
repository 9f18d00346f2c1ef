"""Frozen candidates: properties, determinism down to the file bytes, samplers, errors."""

from __future__ import annotations

import numpy as np
import pytest

from llmrec.data import DataError, prepare
from llmrec.data.candidates import candidate_path, load_candidates, sample_candidates

from .conftest import generic_config, random_log, write_log

SPEC = ("candidates=[{splits: [train, valid, test], sampler: uniform, size: 12, seed: 3}, "
        "{splits: [test], sampler: popularity, size: 12, seed: 3}]")


def test_candidate_properties(random_log_config):
    make, _ = random_log_config
    ds = prepare(make())
    for split in ("train", "valid", "test"):
        for sampler in ("uniform", "popularity", "top_popular"):
            cands = load_candidates(ds, split, sampler=sampler, size=12, seed=1)
            targets = np.array(ds.samples[split]["target"])
            users = np.array(ds.samples[split]["user"])
            assert cands.items.shape == (len(targets), 12)
            assert (cands.items[np.arange(len(targets)), cands.target_index] == targets).all()
            assert ((cands.items == targets[:, None]).sum(axis=1) == 1).all()  # target exactly once
            for row, user in zip(cands.items, users, strict=True):
                assert len(set(row.tolist())) == 12
                interacted = set(ds.sequences[user].items.tolist())
                assert len(set(row.tolist()) & interacted) == 1  # only the target was ever interacted with
            assert cands.items.min() >= 0 and cands.items.max() < ds.n_items


def test_two_fresh_prepares_write_identical_bytes(tmp_path):
    log = write_log(tmp_path / "log.csv", random_log(seed=11))
    paths = []
    for run in ("a", "b"):
        cfg = generic_config(tmp_path, log, "k_core=2", SPEC, f"cache_dir={tmp_path / run}")
        ds = prepare(cfg)
        paths.append(sorted((ds.root / "candidates").glob("*.arrow")))
    assert [p.name for p in paths[0]] == [p.name for p in paths[1]] and len(paths[0]) == 4
    for a, b in zip(*paths, strict=True):
        assert a.read_bytes() == b.read_bytes()


def test_key_changes_the_set_and_the_target_column_moves(random_log_config):
    make, _ = random_log_config
    ds = prepare(make())
    base = load_candidates(ds, "test", size=12, seed=0).items
    assert not np.array_equal(base, load_candidates(ds, "test", size=12, seed=1).items)
    assert not np.array_equal(base, load_candidates(ds, "valid", size=12, seed=0).items[: len(base)])
    assert not np.array_equal(base, load_candidates(ds, "test", sampler="popularity", size=12, seed=0).items)
    assert len(set(load_candidates(ds, "test", size=12, seed=0).target_index.tolist())) > 3  # shuffled


def test_saved_set_is_reloaded_not_resampled(random_log_config):
    make, _ = random_log_config
    ds = prepare(make())
    first = load_candidates(ds, "test", size=10, seed=4)
    path = candidate_path(ds.root, "test", "uniform", 10, 4)
    assert first.path == path and path.is_file()
    stamp = path.stat().st_mtime_ns
    again = load_candidates(prepare(make()), "test", size=10, seed=4)
    assert np.array_equal(first.items, again.items) and path.stat().st_mtime_ns == stamp


def test_popularity_sampler_prefers_popular_items(random_log_config):
    make, _ = random_log_config
    ds = prepare(make())
    counts = np.bincount(np.concatenate([s.items for s in ds.sequences]), minlength=ds.n_items)
    mean_pop = {}
    for sampler in ("uniform", "popularity"):
        cands = sample_candidates(ds, "train", sampler, 8, 0)
        negatives = cands.items[cands.items != np.array(ds.samples["train"]["target"])[:, None]]
        mean_pop[sampler] = counts[negatives].mean()
    assert mean_pop["popularity"] > 1.3 * mean_pop["uniform"]


@pytest.mark.parametrize("rounds", [None, 0])  # 0: every row through the exact completion path
def test_top_popular_is_one_fixed_list_with_only_seen_items_replaced(random_log_config, monkeypatch, rounds):
    import llmrec.data.candidates as candidates

    if rounds is not None:
        monkeypatch.setattr(candidates, "MAX_ROUNDS", rounds)
    make, _ = random_log_config
    ds = prepare(make())
    counts = np.bincount(np.concatenate([s.items for s in ds.sequences]), minlength=ds.n_items)
    top = np.argsort(-counts, kind="stable")[:7]
    a, b = (sample_candidates(ds, "test", "top_popular", 8, seed) for seed in (0, 1))
    n_replaced = 0
    for row_a, row_b, user in zip(a.items, b.items, ds.samples["test"]["user"], strict=True):
        seen = set(ds.sequences[user].items.tolist())
        kept = {int(i) for i in top if int(i) not in seen}
        assert kept <= set(row_a.tolist()) and kept <= set(row_b.tolist())  # every unseen list item is there
        fills_a = set(row_a.tolist()) - kept - seen
        assert len(fills_a) == 7 - len(kept)  # the holes were filled with unseen items
        n_replaced += 7 - len(kept)
    assert n_replaced > 0  # the fixture's users did interact with popular items
    assert not np.array_equal(a.items, b.items)  # the seed moves the fills and the order


def test_too_few_negatives_names_the_user(random_log_config):
    make, _ = random_log_config
    ds = prepare(make())
    with pytest.raises(DataError, match=r"user 'u\d+' \(index \d+\) has only \d+ items never interacted with"):
        load_candidates(ds, "test", size=ds.n_items, seed=0)


@pytest.mark.parametrize("sampler", ["uniform", "popularity", "top_popular"])
def test_exact_completion_path_and_a_full_candidate_row(random_log_config, monkeypatch, sampler):
    import llmrec.data.candidates as candidates

    make, _ = random_log_config
    ds = prepare(make())
    monkeypatch.setattr(candidates, "MAX_ROUNDS", 0)  # every row goes through Generator.choice
    interacted = [len(set(s.items.tolist())) for s in ds.sequences]
    size = ds.n_items - max(interacted) + 1  # the busiest user's row holds every item she never touched
    cands = sample_candidates(ds, "test", sampler, size, 0)
    targets = np.array(ds.samples["test"]["target"])
    for row, user, target in zip(cands.items, ds.samples["test"]["user"], targets, strict=True):
        assert len(set(row.tolist())) == size
        assert set(row.tolist()) & set(ds.sequences[user].items.tolist()) == {int(target)}
