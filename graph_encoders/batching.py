"""From a prepared :class:`~llmrec.data.types.SequenceDataset` to :class:`SeqBatch` tensors.

Training uses *windows*, not prefixes: each user's training part ``items[:valid_pos]``
is cut, from the newest end backwards, into windows of at most ``max_len + 1``
interactions that overlap by one item. A window gives ``max_len`` inputs and the
``max_len`` next items as labels, so one forward pass trains every position and every
transition of the training part is trained exactly once per epoch (``windows="all"``).
``windows="newest"`` keeps only the newest window per user (SASRec's reference code).

``windows="rows"`` trains on the rows of ``dataset.samples["train"]`` instead, one example
per row: the row's history (newest ``max_len``) as input and its target as the only label,
at the last position. It is the mode for pre-split data (``source: samples`` / ``llara``,
:mod:`llmrec.data.presplit`), whose pseudo-sequences are single rows, not whole user
sequences; on leave-one-out data it trains each training target once, from its own history.

Evaluation rows are the rows of ``dataset.samples[split]`` (so they align with the
frozen candidate sets); the history is rebuilt from the full sequence as the newest
``max_len`` interactions before ``position``.

``sequence="target"`` views every user's sequence as its target-behavior interactions
only (e.g. ML-100k likes only): training windows, histories and full-ranking exclusions
are all built from that view; evaluation rows and their candidate sets are unchanged
(the targets are target-behavior interactions either way).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch

from graph_encoders.base import SeqBatch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingWindows:
    """``rows[k] = (sequence_index, start, end)``: window ``items[start:end]`` of that sequence."""

    rows: np.ndarray  # int64 [n_windows, 3]
    users_without_transitions: int  # users whose training part has < 2 interactions (nothing to train)
    windows_without_loss: int  # windows dropped because no position is a loss position (loss_on=target)
    from_rows: bool = False  # windows="rows": sequence_index is a row of samples["train"] (see training_rows)


class SequenceBatcher:
    """Builds training and evaluation batches for one dataset and one window length."""

    def __init__(self, dataset: Any, max_len: int, sequence: Literal["all", "target"] = "all") -> None:
        self.dataset = dataset
        self.max_len = max_len
        self.sequence = sequence
        self.training_rows: list[tuple[np.ndarray, np.ndarray]] = []  # windows="rows": (items, behaviors) per train row
        self.training_row_users = np.empty(0, dtype=np.int64)  # windows="rows": the user of each train row
        self.target_behavior = int(dataset.target_behavior_index)
        self.full_sequences = dataset.sequences
        self.index_of_user = {int(seq.user): k for k, seq in enumerate(self.full_sequences)}
        # position in the full sequence -> position in the view (identity for sequence="all")
        self.view_position: list[np.ndarray | None] = [None] * len(self.full_sequences)
        if sequence == "all":
            self.sequences = self.full_sequences
        elif sequence == "target":
            self.sequences = [self._target_view(k, seq) for k, seq in enumerate(self.full_sequences)]
            kept = sum(len(s.items) for s in self.sequences)
            total = sum(len(s.items) for s in self.full_sequences)
            log.info("sequence=target: %d of %d interactions are target-behavior; the other %d are not model inputs",
                     kept, total, total - kept)
        else:
            raise ValueError(f"sequence must be 'all' or 'target', got {sequence!r}")

    def _target_view(self, k: int, seq: Any) -> Any:
        keep = np.asarray(seq.behaviors) == self.target_behavior
        self.view_position[k] = np.cumsum(keep) - keep  # target interactions before each position
        where = self.view_position[k]
        return replace(
            seq, items=seq.items[keep], behaviors=seq.behaviors[keep], timestamps=seq.timestamps[keep],
            valid_pos=int(where[seq.valid_pos]), test_pos=int(where[seq.test_pos]),
        )

    def _view(self, user: int, position: int) -> tuple[Any, int]:
        """The (possibly filtered) sequence of ``user`` and ``position`` mapped into it."""
        k = self.index_of_user[int(user)]
        mapping = self.view_position[k]
        return self.sequences[k], int(position) if mapping is None else int(mapping[position])

    # ---- training -------------------------------------------------------------------
    def training_windows(
        self, windows: Literal["all", "newest", "rows"] = "all", loss_on: Literal["all", "target"] = "all"
    ) -> TrainingWindows:
        if windows == "rows":
            return self._training_row_windows(loss_on)
        if (getattr(self.dataset, "stats", None) or {}).get("presplit"):
            log.warning("dataset %r is pre-split: windows=%s trains the transitions inside train-row histories, "
                        "not the rows' targets; train.windows=rows trains on (history, target)",
                        self.dataset.name, windows)
        rows, no_transitions, no_loss = [], 0, 0
        span = self.max_len + 1
        for k, seq in enumerate(self.sequences):
            end = int(seq.valid_pos)
            if end < 2:
                no_transitions += 1
                continue
            while end > 1:
                start = max(0, end - span)
                if loss_on == "target" and not (seq.behaviors[start + 1 : end] == self.target_behavior).any():
                    no_loss += 1
                else:
                    rows.append((k, start, end))
                if windows == "newest":
                    break
                end = start + 1
        if not rows:
            raise ValueError(f"dataset {self.dataset.name!r}: no training window (every training part is too short)")
        if no_transitions or no_loss:
            log.info(
                "training windows: %d kept; %d users have < 2 training interactions; "
                "%d windows have no target-behavior label",
                len(rows), no_transitions, no_loss,
            )
        return TrainingWindows(np.asarray(rows, dtype=np.int64), no_transitions, no_loss)

    def _training_row_windows(self, loss_on: Literal["all", "target"]) -> TrainingWindows:
        """``windows="rows"``: one window ``history[-max_len:] + [target]`` per row of ``samples["train"]``."""
        table = self.dataset.samples.get("train")
        if table is None or len(table) == 0:
            raise ValueError(f"dataset {self.dataset.name!r}: samples['train'] has no rows to train on (windows=rows)")
        data = table.data
        history = data.column("history_items").to_pylist()
        history_behaviors = data.column("history_behaviors").to_pylist()
        targets = data.column("target").to_numpy()
        target_behaviors = data.column("target_behavior").to_numpy()
        self.training_row_users = data.column("user").to_numpy()
        self.training_rows, rows, empty, no_loss = [], [], 0, 0
        for r in range(len(targets)):
            items = np.append(np.asarray(history[r], dtype=np.int64), targets[r])
            behaviors = np.append(np.asarray(history_behaviors[r], dtype=np.int64), target_behaviors[r])
            if self.sequence == "target":  # history of target-behavior interactions only
                keep = behaviors == self.target_behavior
                keep[-1] = True
                items, behaviors = items[keep], behaviors[keep]
            self.training_rows.append((items, behaviors))
            if len(items) < 2:
                empty += 1
            elif loss_on == "target" and behaviors[-1] != self.target_behavior:
                no_loss += 1
            else:
                rows.append((r, max(0, len(items) - self.max_len - 1), len(items)))
        if not rows:
            raise ValueError(f"dataset {self.dataset.name!r}: no training row with a history and a label "
                             "(windows=rows)")
        if empty or no_loss:
            log.info("training rows: %d kept; %d have an empty history; %d have a target of another behavior",
                     len(rows), empty, no_loss)
        return TrainingWindows(np.asarray(rows, dtype=np.int64), empty, no_loss, from_rows=True)

    def training_batch(self, windows: np.ndarray, loss_on: Literal["all", "target"] = "all",
                       from_rows: bool = False) -> SeqBatch:
        """One row per window: inputs ``w[:-1]``, labels ``w[1:]``, right-aligned (left padding).

        ``from_rows`` (windows of :meth:`training_windows` with ``windows="rows"``): the windows index
        ``samples["train"]`` rows and only the last position (the row's target) carries loss.
        """
        b, length = len(windows), self.max_len
        items = np.zeros((b, length), dtype=np.int64)
        behaviors = np.zeros_like(items)
        labels = np.zeros_like(items)
        label_behaviors = np.zeros_like(items)
        lengths = np.zeros(b, dtype=np.int64)
        users = np.zeros(b, dtype=np.int64)
        for r, (k, start, end) in enumerate(windows):
            if from_rows:
                seq_items, seq_behaviors = self.training_rows[k]
                user = self.training_row_users[k]
            else:
                seq = self.sequences[k]
                seq_items, seq_behaviors, user = seq.items, seq.behaviors, seq.user
            n = end - start - 1
            items[r, length - n :] = seq_items[start : end - 1] + 1
            behaviors[r, length - n :] = seq_behaviors[start : end - 1] + 1
            labels[r, length - n :] = seq_items[start + 1 : end] + 1
            label_behaviors[r, length - n :] = seq_behaviors[start + 1 : end] + 1
            lengths[r], users[r] = n, user
        loss_mask = labels > 0
        if from_rows:  # the row's target only
            loss_mask[:, :-1] = False
        if loss_on == "target":
            loss_mask &= label_behaviors == self.target_behavior + 1
        return SeqBatch(
            items=torch.from_numpy(items), behaviors=torch.from_numpy(behaviors),
            lengths=torch.from_numpy(lengths), users=torch.from_numpy(users),
            labels=torch.from_numpy(labels), label_behaviors=torch.from_numpy(label_behaviors),
            loss_mask=torch.from_numpy(loss_mask),
        )

    # ---- evaluation -----------------------------------------------------------------
    def evaluation_rows(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``(users, positions)`` of ``dataset.samples[split]`` in row order."""
        if split not in self.dataset.samples:
            raise KeyError(f"dataset {self.dataset.name!r} has no split {split!r} (has {sorted(self.dataset.samples)})")
        table = self.dataset.samples[split]
        users = np.asarray(list(table["user"]), dtype=np.int64)
        positions = np.asarray(list(table["position"]), dtype=np.int64)
        targets = np.asarray(list(table["target"]), dtype=np.int64)
        for r, (u, p, t) in enumerate(zip(users, positions, targets, strict=True)):
            seq = self.full_sequences[self.index_of_user[int(u)]]
            if not 0 <= p < len(seq.items) or int(seq.items[p]) != t:
                raise ValueError(
                    f"dataset {self.dataset.name!r}, split {split!r}, row {r}: target {t} at position {p} "
                    f"does not match user {u}'s sequence"
                )
        return users, positions

    def history_batch(self, users: np.ndarray, positions: np.ndarray) -> SeqBatch:
        """Histories ``items[:position]`` (newest ``max_len``) with ``targets = items[position]``."""
        b, length = len(users), self.max_len
        items = np.zeros((b, length), dtype=np.int64)
        behaviors = np.zeros_like(items)
        lengths = np.zeros(b, dtype=np.int64)
        targets = np.zeros(b, dtype=np.int64)
        next_behaviors = np.zeros(b, dtype=np.int64)
        for r, (u, p) in enumerate(zip(users, positions, strict=True)):
            seq, p = self._view(u, p)
            start = max(0, p - length)
            n = p - start
            if n:
                items[r, length - n :] = seq.items[start:p] + 1
                behaviors[r, length - n :] = seq.behaviors[start:p] + 1
            lengths[r], targets[r], next_behaviors[r] = n, seq.items[p], seq.behaviors[p] + 1
        return SeqBatch(
            items=torch.from_numpy(items), behaviors=torch.from_numpy(behaviors),
            lengths=torch.from_numpy(lengths), users=torch.from_numpy(np.asarray(users, dtype=np.int64)),
            targets=torch.from_numpy(targets), next_behaviors=torch.from_numpy(next_behaviors),
        )

    def seen_items(self, users: np.ndarray, positions: np.ndarray) -> list[np.ndarray]:
        """Per row, the items interacted with before ``position`` other than the target (full-ranking exclusion)."""
        out = []
        for u, p in zip(users, positions, strict=True):
            seq, p = self._view(u, p)
            seen = np.unique(seq.items[:p])
            out.append(seen[seen != seq.items[p]])
        return out
