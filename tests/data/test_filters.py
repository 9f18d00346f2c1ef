"""The k-core + leave-one-out eligibility filter: exact passes and the fixed point."""

from __future__ import annotations

import numpy as np
import pytest

from llmrec.data import DataError, prepare
from llmrec.data.filters import eligibility_filter

from .conftest import generic_config, random_log, write_log

V, B = 0, 1  # view, buy (target)


def _arrays(events):
    user, item, behavior = (np.array(col, dtype=np.int64) for col in zip(*events, strict=True))
    return user, item, behavior


def test_passes_are_counted_until_the_fixed_point():
    events = [  # (user, item, behavior), each user's events in time order
        (0, 0, V), (0, 1, B), (0, 2, B),
        (1, 0, V), (1, 1, B), (1, 2, B),
        (2, 0, V), (2, 3, B), (2, 1, B),
    ]
    keep, passes = eligibility_filter(*_arrays(events), target=B, k=2, count_target_only=False, min_target=2)
    # pass 1: item 3 has one interaction; pass 2: user 2 is left with a single buy
    assert [p.as_dict() for p in passes] == [
        {"pass_number": 1, "users_below_k": 0, "users_few_targets": 0, "users_empty_valid_history": 0,
         "items_below_k": 1, "interactions_removed": 1},
        {"pass_number": 2, "users_below_k": 0, "users_few_targets": 1, "users_empty_valid_history": 0,
         "items_below_k": 0, "interactions_removed": 2},
    ]
    assert keep.tolist() == [True] * 6 + [False] * 3


def test_counting_only_the_target_behavior():
    events = [(0, 0, V), (0, 1, B), (0, 2, B), (1, 0, V), (1, 1, B), (1, 2, B)]
    keep_all, _ = eligibility_filter(*_arrays(events), target=B, k=2, count_target_only=False, min_target=2)
    assert keep_all.all()
    # item 0 is only viewed: it has no counted interaction, so it goes; then each user's
    # validation buy is the first event left (empty history) and the users go too
    keep_t, passes = eligibility_filter(*_arrays(events), target=B, k=2, count_target_only=True, min_target=2)
    assert passes[0].items_below_k == 1 and passes[1].users_empty_valid_history == 2
    assert not keep_t.any()


def _naive_filter(events, k, min_target, target):
    """Slow reference: remove offending users/items one rule at a time until stable."""
    alive = list(range(len(events)))
    while True:
        users, items = {}, {}
        for e in alive:
            users.setdefault(events[e][0], []).append(e)
            items.setdefault(events[e][1], []).append(e)
        bad_users = set()
        for u, rows in users.items():
            targets = [r for r in rows if events[r][2] == target]
            if len(rows) < k or len(targets) < min_target or targets[-2] == rows[0]:
                bad_users.add(u)
        bad_items = {i for i, rows in items.items() if len(rows) < k}
        nxt = [e for e in alive if events[e][0] not in bad_users and events[e][1] not in bad_items]
        if nxt == alive:
            return alive
        alive = nxt


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_a_naive_reference_on_random_logs(seed):
    rng = np.random.default_rng(seed)
    n = 600
    user = np.sort(rng.integers(0, 60, n))
    events = [(int(u), int(rng.zipf(1.6) % 80), int(rng.random() < 0.3)) for u in user]
    keep, passes = eligibility_filter(*_arrays(events), target=B, k=3, count_target_only=False, min_target=2)
    assert np.flatnonzero(keep).tolist() == _naive_filter(events, 3, 2, B)
    assert sum(p.interactions_removed for p in passes) == n - keep.sum()
    kept = [events[i] for i in np.flatnonzero(keep)]
    for column in (0, 1):  # every survivor has >= k interactions
        _, counts = np.unique([e[column] for e in kept], return_counts=True)
        assert (counts >= 3).all()


def test_prepare_reports_the_passes_and_totals(tmp_path):
    log = write_log(tmp_path / "log.csv", random_log(seed=3))
    ds = prepare(generic_config(tmp_path, log, "k_core=5"))
    removed = ds.stats["removed"]
    passes = removed["filter_passes"]
    assert removed["interactions_removed"] == sum(p["interactions_removed"] for p in passes) > 0
    assert ds.stats["raw"]["interactions"] - removed["interactions_removed"] == ds.stats["filtered"]["interactions"]
    lengths = [len(s.items) for s in ds.sequences]
    item_counts = np.bincount(np.concatenate([s.items for s in ds.sequences]))
    assert min(lengths) >= 5 and item_counts.min() >= 5


def test_everything_filtered_is_a_clear_error(tmp_path):
    log = write_log(tmp_path / "log.csv", random_log(n_users=5, per_user=20))
    with pytest.raises(DataError, match=r"no user is left after filtering \(k_core=50"):
        prepare(generic_config(tmp_path, log, "k_core=50"))
