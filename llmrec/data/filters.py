"""The k-core and leave-one-out eligibility filters, iterated to a fixed point.

One pass removes, at the same time,

1. users with fewer than ``k`` *counted* interactions, where counted means any
   behavior (``k_core_behavior: all``) or only the target behavior (``target``);
2. items with fewer than ``k`` counted interactions;
3. users with fewer than ``min_target`` target-behavior interactions (they cannot
   give a validation and a test target);
4. users whose validation target (second-to-last target interaction) is their very
   first interaction, i.e. whose validation sample would have an empty history.

Removing a user or an item removes all of its interactions, which may push others
below a threshold, so passes repeat until nothing changes. Each pass is recorded
(users removed per reason, items, interactions), and after the last pass every
remaining user and item satisfies all four rules. A user failing several rules in
one pass is counted under the first one in the order above.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class FilterPass:
    """What one pass removed."""

    pass_number: int
    users_below_k: int
    users_few_targets: int
    users_empty_valid_history: int
    items_below_k: int
    interactions_removed: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _valid_target_first(user: np.ndarray, alive: np.ndarray, is_target: np.ndarray, n_users: int) -> np.ndarray:
    """Users (bool [n_users]) whose second-to-last alive target is their first alive event."""
    alive_rows = np.flatnonzero(alive)
    first_row = np.full(n_users, -1, dtype=np.int64)
    users_alive, first_pos = np.unique(user[alive_rows], return_index=True)
    first_row[users_alive] = alive_rows[first_pos]
    targets = np.flatnonzero(alive & is_target)
    t_user = user[targets]
    t_count = np.bincount(t_user, minlength=n_users)
    t_start = np.cumsum(t_count) - t_count
    rank_from_end = t_count[t_user] - 1 - (np.arange(targets.size) - t_start[t_user])
    valid_rows = targets[rank_from_end == 1]
    bad = np.zeros(n_users, dtype=bool)
    bad[user[valid_rows]] = valid_rows == first_row[user[valid_rows]]
    return bad


def eligibility_filter(
    user: np.ndarray,
    item: np.ndarray,
    behavior: np.ndarray,
    target: int,
    k: int,
    count_target_only: bool,
    min_target: int,
) -> tuple[np.ndarray, list[FilterPass]]:
    """Keep-mask over events (sorted by user, then time) and the per-pass removal counts.

    ``user`` and ``item`` are dense codes; events of one user must be contiguous and
    in chronological order (rule 4 looks at positions).
    """
    n_users = int(user.max()) + 1 if user.size else 0
    n_items = int(item.max()) + 1 if item.size else 0
    is_target = behavior == target
    keep = np.ones(user.size, dtype=bool)
    passes: list[FilterPass] = []
    while True:
        counted = keep & is_target if count_target_only else keep
        present_users = np.bincount(user[keep], minlength=n_users) > 0
        present_items = np.bincount(item[keep], minlength=n_items) > 0
        below_k = present_users & (np.bincount(user[counted], minlength=n_users) < k)
        few_targets = present_users & ~below_k & (np.bincount(user[keep & is_target], minlength=n_users) < min_target)
        empty_valid = present_users & ~below_k & ~few_targets & _valid_target_first(user, keep, is_target, n_users)
        items_below_k = present_items & (np.bincount(item[counted], minlength=n_items) < k)
        drop_user = below_k | few_targets | empty_valid
        new_keep = keep & ~drop_user[user] & ~items_below_k[item]
        removed = int(keep.sum() - new_keep.sum())
        if removed == 0:
            break
        step = FilterPass(
            pass_number=len(passes) + 1,
            users_below_k=int(below_k.sum()),
            users_few_targets=int(few_targets.sum()),
            users_empty_valid_history=int(empty_valid.sum()),
            items_below_k=int(items_below_k.sum()),
            interactions_removed=removed,
        )
        log.info("filter pass %d: %s", step.pass_number, step.as_dict())
        passes.append(step)
        keep = new_keep
    return keep, passes
