"""Chronological sequences, leave-one-out on the target behavior, and the sample tables.

Per user (events in chronological order, see :mod:`llmrec.data.ordering`):

* **test** target = the user's last target-behavior interaction, **valid** target =
  the one before it (leave-one-out on the target behavior, as in DreamRec Sec. 4.1.3
  and M3BSR Sec. 5.1, which take the last target interactions);
* a sample's **history** = every interaction (any behavior) before its target, the
  newest ``max_history`` of them, oldest first;
* **train** samples = every target-behavior interaction *before the validation
  target* whose history is non-empty (a sliding window over the sequence).
  Events between the validation and the test target stay in the test history only.

Everything is vectorized over one flat event array (``offsets[u]:offsets[u+1]`` is
user ``u``); rows are ordered by (user, position).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from llmrec.data.types import SAMPLE_COLUMNS, UserSequence


@dataclass
class FlatSequences:
    """All users' events in one chronological array; ``offsets`` [n_users + 1]."""

    offsets: np.ndarray
    items: np.ndarray
    behaviors: np.ndarray
    timestamps: np.ndarray
    valid_pos: np.ndarray  # [n_users], position within the user's sequence
    test_pos: np.ndarray

    @property
    def n_users(self) -> int:
        return int(self.offsets.size - 1)

    def to_sequences(self) -> list[UserSequence]:
        o = self.offsets
        return [
            UserSequence(
                user=u,
                items=self.items[o[u]:o[u + 1]],
                behaviors=self.behaviors[o[u]:o[u + 1]],
                timestamps=self.timestamps[o[u]:o[u + 1]],
                valid_pos=int(self.valid_pos[u]),
                test_pos=int(self.test_pos[u]),
            )
            for u in range(self.n_users)
        ]


def leave_one_out(
    user: np.ndarray, item: np.ndarray, behavior: np.ndarray, timestamp: np.ndarray, n_users: int, target: int
) -> FlatSequences:
    """Locate each user's validation and test targets (every user needs >= 2 targets)."""
    counts = np.bincount(user, minlength=n_users)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    targets = np.flatnonzero(behavior == target)
    t_counts = np.bincount(user[targets], minlength=n_users)
    if (t_counts < 2).any():
        bad = int(np.flatnonzero(t_counts < 2)[0])
        raise ValueError(f"user index {bad} has {t_counts[bad]} target interactions; leave-one-out needs 2")
    t_end = np.cumsum(t_counts)
    test_g, valid_g = targets[t_end - 1], targets[t_end - 2]
    return FlatSequences(
        offsets=offsets,
        items=item.astype(np.int64),
        behaviors=behavior.astype(np.int64),
        timestamps=timestamp.astype(np.int64),
        valid_pos=(valid_g - offsets[:-1]).astype(np.int64),
        test_pos=(test_g - offsets[:-1]).astype(np.int64),
    )


def _list_column(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> pa.ListArray:
    """Arrow list column whose row ``r`` is ``values[starts[r]:ends[r]]``."""
    lengths = ends - starts
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32 if lengths.sum() < 2**31 else np.int64)
    flat = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(offsets[:-1].astype(np.int64), lengths)
    flat += np.repeat(starts, lengths)
    list_type = pa.ListArray if offsets.dtype == np.int32 else pa.LargeListArray
    return list_type.from_arrays(pa.array(offsets), pa.array(values[flat], type=pa.int64()))


def sample_table(seqs: FlatSequences, global_pos: np.ndarray, max_history: int) -> pa.Table:
    """Rows for targets at flat positions ``global_pos`` (sorted by user, position)."""
    user_of = np.repeat(np.arange(seqs.n_users, dtype=np.int64), np.diff(seqs.offsets))
    users = user_of[global_pos]
    starts = np.maximum(seqs.offsets[users], global_pos - max_history)
    columns = {
        "user": pa.array(users, type=pa.int64()),
        "history_items": _list_column(seqs.items, starts, global_pos),
        "history_behaviors": _list_column(seqs.behaviors, starts, global_pos),
        "target": pa.array(seqs.items[global_pos], type=pa.int64()),
        "target_behavior": pa.array(seqs.behaviors[global_pos], type=pa.int64()),
        "position": pa.array(global_pos - seqs.offsets[users], type=pa.int64()),
    }
    return pa.table({name: columns[name] for name in SAMPLE_COLUMNS})


def sample_positions(seqs: FlatSequences, target: int) -> dict[str, np.ndarray]:
    """Flat positions of the train / valid / test targets."""
    starts = seqs.offsets[:-1]
    valid_g, test_g = starts + seqs.valid_pos, starts + seqs.test_pos
    user_of = np.repeat(np.arange(seqs.n_users, dtype=np.int64), np.diff(seqs.offsets))
    targets = np.flatnonzero(seqs.behaviors == target)
    owner = user_of[targets]
    train = targets[(targets < valid_g[owner]) & (targets > starts[owner])]
    return {"train": train, "valid": valid_g, "test": test_g}
