"""Frozen candidate sets: the target plus negatives, sampled once and saved.

For every sample row of a split the candidates are the target and ``size - 1``
*negatives*: items the user never interacted with (any behavior, anywhere in the
filtered sequence, so the target and every history item are excluded), drawn
without replacement

* ``uniform``: every allowed item equally likely (TMF Sec. 5.1, LLaRA);
* ``popularity``: proportional to the item's number of interactions (any behavior)
  in the filtered data (DreamRec Sec. 4.1.3 "based on item popularity", MBHT);
* ``top_popular``: the other reading of "100 popularity negatives", the one the MBHT
  reference code uses: one fixed list, the ``size - 1`` most interacted items (ties by
  item index), the same for every row; the entries a user interacted with are replaced by
  uniformly drawn allowed items not already in the row. The list is deterministic; the
  seed only decides the replacements.

Drawing is successive sampling: i.i.d. draws from the sampler's distribution,
rejecting interacted items and repeats, keeping the first ``size - 1`` accepted
(``top_popular`` starts every row from the fixed list and draws only its holes)
(vectorized over blocks of rows; the rare rows still short after many rounds are
completed exactly with ``Generator.choice``). The row is then shuffled. The
generator is ``numpy.random.default_rng(SeedSequence([seed, crc32(split),
crc32(sampler), size]))``, so a set depends only on its key and the data.

A set is saved as an uncompressed Arrow IPC file ``<root>/candidates/<split>-<sampler>-n<size>-seed<seed>.arrow``
with columns ``items`` (fixed-size list of int64) and ``target_index``; the same
inputs give the same bytes.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from llmrec.data.errors import DataError
from llmrec.data.types import DEFAULT_CANDIDATE_SET_SIZE, SPLITS, CandidateSet, SequenceDataset
from llmrec.io import atomic_write

log = logging.getLogger(__name__)

SAMPLERS = ("uniform", "popularity", "top_popular")
BLOCK_ROWS = 8192  # rows sampled together (fixed: part of what makes the bytes reproducible)
MAX_ROUNDS = 32  # vectorized rejection rounds before the exact per-row completion


def candidate_path(root: Path, split: str, sampler: str, size: int, seed: int) -> Path:
    return Path(root) / "candidates" / f"{split}-{sampler}-n{size}-seed{seed}.arrow"


def candidate_rng(split: str, sampler: str, size: int, seed: int) -> np.random.Generator:
    """The generator of one candidate set, seeded by its whole key."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(split.encode()),
                                                         zlib.crc32(sampler.encode()), size]))


def _column(dataset: SequenceDataset, split: str, name: str) -> np.ndarray:
    return np.asarray(dataset.samples[split].data.column(name).to_numpy(), dtype=np.int64)


def interacted_keys(dataset: SequenceDataset) -> np.ndarray:
    """Sorted unique ``user * n_items + item`` over every user's whole sequence."""
    parts = [seq.user * dataset.n_items + np.asarray(seq.items, dtype=np.int64) for seq in dataset.sequences]
    if not parts:
        return np.empty(0, dtype=np.int64)
    keys = np.sort(np.concatenate(parts))
    return keys[np.concatenate([[True], keys[1:] != keys[:-1]])]


def item_popularity(dataset: SequenceDataset) -> np.ndarray:
    """Interactions (any behavior) per item in the filtered sequences."""
    items = np.concatenate([np.asarray(s.items, dtype=np.int64) for s in dataset.sequences])
    return np.bincount(items, minlength=dataset.n_items).astype(np.float64)


def _is_interacted(users: np.ndarray, items: np.ndarray, keys: np.ndarray, n_items: int) -> np.ndarray:
    query = users[:, None] * n_items + items
    pos = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    return keys[pos] == query


def _first_occurrences(rows: np.ndarray) -> np.ndarray:
    """Bool mask: True where a value appears for the first time in its row."""
    order = np.argsort(rows, axis=1, kind="stable")
    ordered = np.take_along_axis(rows, order, axis=1)
    repeat = np.zeros_like(ordered, dtype=bool)
    repeat[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    first = np.empty_like(repeat)
    np.put_along_axis(first, order, ~repeat, axis=1)
    return first


def _top_popular_rows(users: np.ndarray, n_neg: int, n_items: int, keys: np.ndarray,
                      popularity: np.ndarray) -> np.ndarray:
    """The fixed top-``n_neg`` list in every row, -1 where the row's user interacted with the item."""
    top = np.argsort(-popularity, kind="stable")[:n_neg]
    rows = np.broadcast_to(top, (users.size, n_neg)).copy()
    rows[_is_interacted(users, rows, keys, n_items)] = -1
    return rows


def _sample_negatives(
    rng: np.random.Generator, users: np.ndarray, n_neg: int, n_items: int, keys: np.ndarray, weights: np.ndarray | None,
    start: np.ndarray | None = None,
) -> np.ndarray:
    """``[len(users), n_neg]`` distinct non-interacted items per row (successive sampling).

    ``start`` (optional, ``[len(users), n_neg]``): entries kept as they are; only its -1 holes are drawn.
    """
    cdf = None if weights is None else np.cumsum(weights)
    chosen = np.full((users.size, n_neg), -1, dtype=np.int64) if start is None else start.astype(np.int64, copy=True)
    pending = np.arange(users.size)
    width = 2 * n_neg + 8
    for _ in range(MAX_ROUNDS):
        if pending.size == 0:
            return chosen
        if cdf is None:
            draws = rng.integers(0, n_items, size=(pending.size, width))
        else:
            draws = np.minimum(np.searchsorted(cdf, rng.random((pending.size, width)) * cdf[-1], side="right"),
                               n_items - 1)
        rows = np.concatenate([chosen[pending], draws], axis=1)
        ok = (rows >= 0) & ~_is_interacted(users[pending], rows, keys, n_items) & _first_occurrences(rows)
        order = np.argsort(~ok, axis=1, kind="stable")[:, :n_neg]
        picked = np.take_along_axis(rows, order, axis=1)
        n_ok = ok.sum(axis=1)
        picked[np.arange(n_neg)[None, :] >= n_ok[:, None]] = -1
        chosen[pending] = picked
        pending = pending[n_ok < n_neg]
    all_items = np.arange(n_items)
    for row in pending:  # exact completion for the few rows left
        have = chosen[row][chosen[row] >= 0]
        chosen[row, :have.size] = have  # kept entries first (a top_popular row may have holes anywhere)
        allowed = all_items[~_is_interacted(users[row:row + 1], all_items[None, :], keys, n_items)[0]]
        allowed = np.setdiff1d(allowed, have)
        p = None if weights is None else weights[allowed] / weights[allowed].sum()
        chosen[row, have.size:] = rng.choice(allowed, size=n_neg - have.size, replace=False, p=p)
    return chosen


def sample_candidates(dataset: SequenceDataset, split: str, sampler: str, size: int, seed: int) -> CandidateSet:
    """Sample the candidate matrix of ``split`` (see the module docstring); nothing is saved."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    if sampler not in SAMPLERS:
        raise DataError(f"unknown candidate sampler {sampler!r}; expected one of {list(SAMPLERS)}")
    if size < 1 or seed < 0:
        raise DataError(f"candidate size must be >= 1 and seed >= 0, got size={size}, seed={seed}")
    users, targets = _column(dataset, split, "user"), _column(dataset, split, "target")
    keys = interacted_keys(dataset)
    n_neg = size - 1
    available = dataset.n_items - np.bincount(keys // dataset.n_items, minlength=dataset.n_users)
    short = np.flatnonzero(available[users] < n_neg)
    if short.size:
        u = int(users[short[0]])
        raise DataError(
            f"{dataset.name}: user {dataset.user_ids[u]!r} (index {u}) has only {int(available[u])} items "
            f"never interacted with, fewer than the {n_neg} negatives a candidate set of size {size} needs "
            f"({np.unique(users[short]).size} users are short); use a smaller size"
        )
    rng = candidate_rng(split, sampler, size, seed)
    popularity = item_popularity(dataset) if sampler in ("popularity", "top_popular") else None
    weights = popularity if sampler == "popularity" else None
    blocks = range(0, users.size, BLOCK_ROWS)

    def start(block_users: np.ndarray) -> np.ndarray | None:
        if sampler != "top_popular":
            return None
        return _top_popular_rows(block_users, n_neg, dataset.n_items, keys, popularity)

    negatives = [
        _sample_negatives(rng, users[s:s + BLOCK_ROWS], n_neg, dataset.n_items, keys, weights,
                          start(users[s:s + BLOCK_ROWS]))
        for s in tqdm(blocks, desc=f"candidates {split}/{sampler}/{size}", unit="block", disable=len(blocks) < 4)
    ]
    negatives = np.concatenate(negatives) if negatives else np.empty((0, n_neg), dtype=np.int64)
    items = rng.permuted(np.concatenate([targets[:, None], negatives], axis=1), axis=1)
    target_index = np.argmax(items == targets[:, None], axis=1).astype(np.int64)
    return CandidateSet(split, sampler, size, seed, items.astype(np.int64), target_index)


def save_candidates(candidates: CandidateSet, path: Path, fingerprint: str) -> None:
    """Write an uncompressed Arrow IPC file atomically (same data -> same bytes)."""
    flat = pa.array(candidates.items.reshape(-1), type=pa.int64())
    table = pa.table({
        "items": pa.FixedSizeListArray.from_arrays(flat, candidates.size),
        "target_index": pa.array(candidates.target_index, type=pa.int64()),
    })
    meta = {"split": candidates.split, "sampler": candidates.sampler, "size": str(candidates.size),
            "seed": str(candidates.seed), "dataset_fingerprint": fingerprint}
    table = table.replace_schema_metadata(meta)
    def write(tmp: str) -> None:
        with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)

    atomic_write(path, write)


def read_candidates(path: Path, split: str, sampler: str, size: int, seed: int, n_rows: int) -> CandidateSet:
    """Read a saved set and check it matches its key and the split's row count."""
    with pa.memory_map(str(path), "r") as source:
        table = pa.ipc.open_file(source).read_all()
    items = table.column("items").combine_chunks().flatten().to_numpy().reshape(-1, size) if size else np.empty((0, 0))
    if items.shape[0] != n_rows:
        raise DataError(f"{path}: holds {items.shape[0]} rows but split {split!r} has {n_rows} samples; "
                        "delete the file")
    target_index = table.column("target_index").to_numpy()
    return CandidateSet(split, sampler, size, seed, items.astype(np.int64), target_index.astype(np.int64), path)


def load_candidates(dataset: SequenceDataset, split: str, sampler: str = "uniform",
                    size: int = DEFAULT_CANDIDATE_SET_SIZE, seed: int = 0) -> CandidateSet:
    """The frozen set for (split, sampler, size, seed): read from disk, or sample and save it."""
    n_rows = len(dataset.samples[split]) if split in dataset.samples else 0
    path = candidate_path(dataset.root, split, sampler, size, seed) if dataset.root is not None else None
    if path is not None and path.is_file():
        return read_candidates(path, split, sampler, size, seed, n_rows)
    candidates = sample_candidates(dataset, split, sampler, size, seed)
    if path is not None:
        save_candidates(candidates, path, dataset.fingerprint)
        candidates.path = path
        log.info("sampled %s candidates: %d rows x %d -> %s", sampler, n_rows, size, path)
    return candidates
