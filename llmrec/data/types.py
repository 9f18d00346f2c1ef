"""The prepared-dataset contract every other stage reads.

A :class:`SequenceDataset` is what ``llmrec.data.prepare(config)`` returns (and
caches on disk). Indices are *internal*: items are ``0..n_items-1`` (row ``i`` of
every embedding table is item ``i``), behaviors are ``0..n_behaviors-1`` ordered
weakest first, users ``0..n_users-1``. Padding is a concern of the model that
needs it (most shift item indices by one and use 0 as padding).

Per user, ``UserSequence`` holds the whole chronological (filtered) sequence;
``valid_pos`` / ``test_pos`` index the validation and test targets in it
(leave-one-out on the target behavior). A sequential recommender trains on
``items[:valid_pos]``, validates on predicting ``items[valid_pos]`` from
``items[:valid_pos]`` and tests on ``items[test_pos]`` from ``items[:test_pos]``.

``samples[split]`` are the prompt-ready rows (HF ``datasets.Dataset``) with the
columns of :data:`SAMPLE_COLUMNS`; history is truncated to the newest
``max_history`` interactions. ``llmrec.data.candidates.load_candidates(dataset, split, ...)``
returns the frozen candidate matrix aligned row-by-row with ``samples[split]``.
This module is pure data: it imports nothing of the project and touches no disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Columns of ``SequenceDataset.samples[split]`` (one row per prediction):
#   user             int        internal user index
#   history_items    list[int]  internal item indices, oldest first
#   history_behaviors list[int] behavior indices aligned with history_items
#   target           int        internal item index to predict
#   target_behavior  int        behavior index of the target (the target behavior)
#   position         int        index of the target in the user's full sequence
SAMPLE_COLUMNS = ("user", "history_items", "history_behaviors", "target", "target_behavior", "position")
SPLITS = ("train", "valid", "test")
# Candidates per prediction: the target + 9 negatives. Every recorded result in this repository uses 10;
# TMF §5.1 reads as 11 ("target + 10 randomly selected"), available as ``size: 11`` (docs/data.md).
DEFAULT_CANDIDATE_SET_SIZE = 10


@dataclass
class UserSequence:
    """One user's chronological interactions after filtering."""

    user: int
    items: np.ndarray  # int64 [L]
    behaviors: np.ndarray  # int64 [L]
    timestamps: np.ndarray  # int64 [L]
    valid_pos: int  # index of the validation target in items
    test_pos: int  # index of the test target in items


@dataclass
class CandidateSet:
    """A frozen candidate matrix for one (split, sampler, size, seed).

    ``items[r]`` are the candidates of sample row ``r`` (target included, shuffled);
    ``target_index[r]`` is the column holding the target.
    """

    split: str
    sampler: str  # "uniform" | "popularity" | "top_popular"
    size: int
    seed: int
    items: np.ndarray  # int64 [n_samples, size]
    target_index: np.ndarray  # int64 [n_samples]
    path: Path | None = None


@dataclass
class SequenceDataset:
    """A prepared multi-behavior dataset (see the module docstring)."""

    name: str
    item_ids: list[str]  # internal item index -> raw item id
    user_ids: list[str]  # internal user index -> raw user id
    behaviors: list[str]  # ordered weakest first
    target_behavior: str
    # pandas.DataFrame, one row per internal item, column item_id first, then title, text, image, category ...
    catalog: Any
    sequences: list[UserSequence]
    samples: dict[str, Any]  # split -> datasets.Dataset with SAMPLE_COLUMNS
    stats: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    root: Path | None = None  # cache folder holding this prepared dataset

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_behaviors(self) -> int:
        return len(self.behaviors)

    @property
    def target_behavior_index(self) -> int:
        return self.behaviors.index(self.target_behavior)

    def item_titles(self) -> list[str]:
        return [str(t) for t in self.catalog["title"].tolist()]
